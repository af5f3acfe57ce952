#include "core/key_pattern.hpp"

#include <re2/re2.h>

#include "moeckpt/error.hpp"

namespace moeckpt {

KeyPattern::KeyPattern(const std::string& pattern, Anchor anchor)
    : pattern_(pattern), anchor_(anchor) {
  RE2::Options options;
  options.set_log_errors(false);
  options.set_max_mem(64 << 20);  // bounds the compiled program: a huge pattern is an error
  re_ = std::make_unique<RE2>(pattern, options);
  if (!re_->ok()) {
    const std::string why = re_->error();
    const bool unsupported = re_->error_code() == RE2::ErrorBadPerlOp ||
                             re_->error_code() == RE2::ErrorBadEscape ||
                             why.find("invalid perl operator") != std::string::npos;
    fail(
        ErrorKind::kInvalidArgument, "", "",
        "regular expression \"" + pattern + "\" " +
            (unsupported ? "uses a construct the linear-time matcher does not support (" + why + ")"
                         : "is invalid (" + why + ")"),
        "RE2 syntax: Python re syntax without lookaround or backreferences");
  }
}

KeyPattern::~KeyPattern() = default;
KeyPattern::KeyPattern(KeyPattern&&) noexcept = default;
KeyPattern& KeyPattern::operator=(KeyPattern&&) noexcept = default;

bool KeyPattern::matches(std::string_view key) const {
  return re_->Match(re2::StringPiece(key.data(), key.size()), 0, key.size(),
                    anchor_ == Anchor::kStart ? RE2::ANCHOR_START : RE2::UNANCHORED, nullptr, 0);
}

}  // namespace moeckpt
