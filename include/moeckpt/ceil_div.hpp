#pragma once
// ceil(a / b) for non-negative a and positive b: block and grid counts everywhere.
#include <cstdint>

namespace moeckpt {

inline int64_t ceil_div(int64_t a, int64_t b) noexcept {
  return (a + b - 1) / b;
}

}  // namespace moeckpt
