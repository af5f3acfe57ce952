#pragma once
#include <cstdint>
#include <span>

namespace moeckpt {

// Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
bool is_valid_utf8(std::span<const uint8_t> bytes) noexcept;

}  // namespace moeckpt
