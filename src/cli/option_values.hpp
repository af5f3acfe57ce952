#pragma once
// The checks of the CLI's numeric options, as pure functions (the CLI wraps them into CLI11
// validators; the options fuzzer calls them directly). Each returns an empty string when the text
// is acceptable, else what is wrong with it.
#include <cstdint>
#include <string>
#include <string_view>

namespace moeckpt::cli {

// Decimal digits only, within [lo, hi]: no sign, exponent, hex or value that would wrap.
std::string check_integer(std::string_view text, uint64_t lo, uint64_t hi);
// A decimal number within [lo, hi] (fraction and exponent allowed): no hex ("0x10"), NaN, inf,
// sign other than a leading '-', or trailing text. Every non-integer option goes through it.
std::string check_number(std::string_view text, double lo, double hi);
// A finite number >= 0 (NaN would make every comparison pass).
std::string check_tolerance(std::string_view text);

}  // namespace moeckpt::cli
