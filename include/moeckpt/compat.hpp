#pragma once
// The behaviours a checkpoint family's spec varies with: which NeMo Automodel version to
// reproduce byte for byte, and the training model's attention backend (which names some tensors).
#include <optional>
#include <string_view>

namespace moeckpt {

// kNone: moeckpt's own, lossless behaviour. 0.6 (before 0.7) ignores to_hf's `quantization` and
// always emits FP8 with ones scales; 0.7 honours it (default False) and never quantizes visual./
// audio. keys.
enum class Compat { kNone, kAutomodel06, kAutomodel07 };
inline constexpr Compat kNewestAutomodel = Compat::kAutomodel07;
inline bool is_automodel(Compat c) noexcept {
  return c != Compat::kNone;
}

// Automodel's attention backend: "sdpa" names tensors as HF does, "te" (Transformer Engine) as
// its own attention module does.
enum class AttnBackend { kSdpa, kTe };

}  // namespace moeckpt
