#include "moeckpt/error.hpp"

#include "core/printable.hpp"

namespace moeckpt {
namespace {

// An option reference: kRefStart, the option's tag byte, its value, kRefEnd. Control characters,
// so that text from a file shows them escaped (a file name holding one is at worst spelled as an
// option: printable words, one line still).
constexpr char kRefStart = '\x1e';
constexpr char kRefEnd = '\x1f';
constexpr char kFirstTag = 'a';
constexpr auto kLastOption = CallerOption::kWait;

// `text` made printable, its option references in `spell`'s words.
std::string spelled(std::string_view text, OptionSpelling spell) {
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    const size_t ref = text.find(kRefStart, i);
    out += printable(text.substr(i, ref == std::string_view::npos ? ref : ref - i));
    if (ref == std::string_view::npos) break;
    const size_t end = text.find(kRefEnd, ref);
    const auto tag = ref + 1 < text.size() ? text[ref + 1] - kFirstTag : -1;
    if (end == std::string_view::npos || end < ref + 2 || tag < 0 ||
        tag > static_cast<int>(kLastOption)) {
      out += printable(text.substr(ref, 1));
      i = ref + 1;
      continue;
    }
    out += printable(spell(static_cast<CallerOption>(tag), text.substr(ref + 2, end - ref - 2)));
    i = end + 1;
  }
  return out;
}

std::string with_value(const char* words, std::string_view value, const char* joiner = " ") {
  return value.empty() ? words : std::string(words) + joiner + std::string(value);
}

}  // namespace

std::string option_ref(CallerOption option, std::string_view value) {
  std::string ref{kRefStart, static_cast<char>(kFirstTag + static_cast<int>(option))};
  return ref.append(value) + kRefEnd;
}

std::string neutral_spelling(CallerOption option, std::string_view value) {
  switch (option) {
    case CallerOption::kOverwrite:
      return "the overwrite option";
    case CallerOption::kResume:
      return "the resume option";
    case CallerOption::kMaxMemory:
      return with_value("the memory budget option", value, " at ");
    case CallerOption::kDistributed:
      return "the distributed option";
    case CallerOption::kWorkers:
      return "an explicit worker count and index";
    case CallerOption::kWait:
      return with_value("a wait of", value);
  }
  return "an option";
}

std::string format_error(const ErrorInfo& info, OptionSpelling spell) {
  // Every part may carry text from a file: one line, always.
  std::string msg;
  if (!info.file.empty()) msg += printable(info.file) + ": ";
  if (!info.tensor.empty()) msg += "tensor '" + printable(info.tensor) + "': ";
  msg += spelled(info.what, spell);
  if (!info.expected.empty()) msg += " (expected " + spelled(info.expected, spell) + ")";
  return msg;
}

Error::Error(ErrorInfo info) : std::runtime_error(format_error(info)), info_(std::move(info)) {}

const char* error_kind_name(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::kMalformedFile:
      return "malformed_file";
    case ErrorKind::kConfigMismatch:
      return "config_mismatch";
    case ErrorKind::kUnsupportedLayout:
      return "unsupported_layout";
    case ErrorKind::kNumeric:
      return "numeric";
    case ErrorKind::kDestination:
      return "destination";
    case ErrorKind::kInterrupted:
      return "interrupted";
    case ErrorKind::kInvalidArgument:
      return "invalid_argument";
    case ErrorKind::kIo:
      return "io";
  }
  return "unknown";
}

void fail(ErrorKind kind, std::string file, std::string tensor, std::string what,
          std::string expected) {
  throw Error(
      ErrorInfo{kind, std::move(file), std::move(tensor), std::move(what), std::move(expected)});
}

}  // namespace moeckpt
