#include "cli/option_values.hpp"

#include <fmt/format.h>

#include <charconv>
#include <cmath>

namespace moeckpt::cli {

std::string check_integer(std::string_view text, uint64_t lo, uint64_t hi) {
  uint64_t v = 0;
  const char* b = text.data();
  const char* e = b + text.size();
  auto [p, ec] = std::from_chars(b, e, v);
  if (text.empty() || ec != std::errc() || p != e || v < lo || v > hi)
    return fmt::format("must be a whole number from {} to {}, not '{}'", lo, hi, text);
  return {};
}

std::string check_number(std::string_view text, double lo, double hi) {
  double v = 0;
  // from_chars takes "nan"/"inf" (refused below as not finite) but never "0x" or a leading '+'.
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || p != text.data() + text.size() || !std::isfinite(v) ||
      v < lo || v > hi) {
    if (std::isinf(hi)) return fmt::format("must be a finite number >= {:g}, not '{}'", lo, text);
    return fmt::format("must be a number from {:g} to {:g}, not '{}'", lo, hi, text);
  }
  return {};
}

std::string check_tolerance(std::string_view text) {
  return check_number(text, 0, HUGE_VAL);
}

}  // namespace moeckpt::cli
