// The user-text paths that need no file: option values (the CLI's integer and tolerance checks),
// key patterns (RE2, both anchorings, against a key from the same input), and message escaping.
// Input: "PATTERN\nKEY" (no newline: the whole input is both).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "cli/option_values.hpp"
#include "core/key_pattern.hpp"
#include "core/printable.hpp"
#include "moeckpt/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view all(reinterpret_cast<const char*>(data), size);
  const size_t nl = all.find('\n');
  const std::string_view pattern = nl == std::string_view::npos ? all : all.substr(0, nl);
  const std::string_view key = nl == std::string_view::npos ? all : all.substr(nl + 1);

  // An accepted integer parses back into its range.
  for (auto [lo, hi] :
       {std::pair<uint64_t, uint64_t>{0, 4096}, {1, uint64_t{1} << 56}, {1, UINT64_MAX}}) {
    if (moeckpt::cli::check_integer(all, lo, hi).empty()) {
      const std::string s(all);
      char* end = nullptr;
      const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
      if (end != s.c_str() + s.size() || v < lo || v > hi || s.find('-') != std::string::npos)
        std::abort();
    }
  }
  (void)moeckpt::cli::check_tolerance(all);
  // An accepted number is finite and within its range.
  if (moeckpt::cli::check_number(all, 0, 1e8).empty()) {
    const std::string s(all);
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (end != s.c_str() + s.size() || !(v >= 0 && v <= 1e8) || s.find('x') != std::string::npos ||
        s.find('X') != std::string::npos)
      std::abort();
  }

  try {
    for (auto anchor :
         {moeckpt::KeyPattern::Anchor::kSearch, moeckpt::KeyPattern::Anchor::kStart}) {
      moeckpt::KeyPattern p{std::string(pattern), anchor};
      (void)p.matches(key);
    }
  } catch (const moeckpt::Error& e) {
    // Refusals are one line.
    if (std::string_view(e.what()).find('\n') != std::string_view::npos) std::abort();
  }

  const std::string shown = moeckpt::printable(all);
  for (char c : shown)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) std::abort();
  return 0;
}
