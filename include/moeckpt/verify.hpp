#pragma once
// `moeckpt verify A B`: compare two checkpoints (HF or native, either side) tensor by tensor in
// the HF key space, dequantizing FP8 with its scales and layout and splitting grouped experts.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace moeckpt {

struct VerifyOptions {
  double rtol = 0.0;
  double atol = 0.0;
  std::optional<std::filesystem::path> config;  // for both sides; default: each folder's own
};

struct VerifyFamily {
  uint64_t tensors = 0;
  uint64_t elements = 0;
  uint64_t bitwise_equal = 0;  // float32 values with identical bits (NaN equals NaN)
  uint64_t beyond_tolerance = 0;
  double max_abs = 0.0;
  double max_rel = 0.0;
  // When both sides hold the key as FP8: codes compared directly.
  uint64_t fp8_elements = 0;
  uint64_t fp8_equal = 0;
  uint64_t fp8_one_step = 0;  // differ by one representable step
  uint64_t signed_zeros_lost = 0;
};

struct VerifyReport {
  std::map<std::string, VerifyFamily> families;
  std::vector<std::string> only_in_a, only_in_b;
  std::vector<std::string> shape_mismatch;
  bool ok() const;
};

VerifyReport verify_checkpoints(const std::filesystem::path& a, const std::filesystem::path& b,
                                const VerifyOptions& options);
std::string to_text(const VerifyReport& report, const VerifyOptions& options);

}  // namespace moeckpt
