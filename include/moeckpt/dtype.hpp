#pragma once
// Every element type of the safetensors format, with its size in bits (sub-byte types exist).
#include <cstdint>
#include <optional>
#include <string_view>

namespace moeckpt {

enum class Dtype : uint8_t {
  BOOL,
  F4,
  F6_E2M3,
  F6_E3M2,
  U8,
  I8,
  F8_E5M2,
  F8_E4M3,
  F8_E8M0,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  C64,
  F64,
  I64,
  U64,
};

std::optional<Dtype> parse_dtype(std::string_view name) noexcept;
std::string_view dtype_name(Dtype dtype) noexcept;
unsigned dtype_bits(Dtype dtype) noexcept;
// Bytes per element for byte-sized types; 0 for sub-byte types.
inline unsigned dtype_size(Dtype dtype) noexcept {
  return dtype_bits(dtype) % 8 ? 0 : dtype_bits(dtype) / 8;
}

}  // namespace moeckpt
