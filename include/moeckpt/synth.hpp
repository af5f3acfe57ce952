#pragma once
// Synthetic checkpoints of a family's presets (tiny and real dimensions) with every structural
// feature of the real one, deterministic for a seed.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace moeckpt {

struct SynthOptions {
  // "tiny", "micro" (~120 KB, for test corpora), "full" (real dimensions), and the same in other
  // layouts of the family ("v26-tiny", "v26-full", "v25-tiny", "v25-full"): model_preset_names().
  std::string preset = "tiny";
  std::optional<int64_t> layers;
  std::optional<int64_t> experts;
  std::optional<int64_t> vocab;
  std::optional<int64_t> mtp_layers;
  uint64_t seed = 0;
  std::optional<uint64_t> max_shard_bytes;  // default: at least two shards
  // A fused-QKV layout whose TP degree the index records: the degree (default 4).
  std::optional<int64_t> tp_size;
  // Sparse files of the real size and layout (split-QKV layouts): FP8 codes and large weights are
  // holes (zeros, no disk blocks), block scales and small tensors real values. For planning and
  // I/O measurements of full-size checkpoints on a small disk.
  bool sparse = false;
};

struct SynthReport {
  size_t tensors = 0;
  uint64_t total_bytes = 0;
  size_t shards = 0;
};

// The config.json document the preset and options describe.
nlohmann::json synth_config(const SynthOptions& options);
// Refuses (moeckpt::Error, kInvalidArgument) options that no destination could make valid: an
// unknown preset, sizes out of range, a TP degree or sparse files for a preset that takes none.
// synthesize_checkpoint makes the same checks first; a caller can make them before anything else.
void check_synth_options(const SynthOptions& options);
// Writes config.json and the safetensors shards into `dst` (created; must not hold a checkpoint).
SynthReport synthesize_checkpoint(const std::filesystem::path& dst, const SynthOptions& options);

}  // namespace moeckpt
