#pragma once
// Checks that a tensor source is a convertible checkpoint of its spec's family. One set of rules
// shared by from-hf / to-hf planning, verify and inspect: each refusal is a moeckpt::Error naming
// the file, the tensor, what is wrong and what was expected.
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "moeckpt/model_spec.hpp"
#include "moeckpt/tensor_source.hpp"

namespace moeckpt {

// True when the source holds the native (grouped-expert) layout: a grouped expert tensor, or
// moeckpt metadata saying so.
bool is_native_layout(const TensorSource& src, const ModelSpec& spec);

// from-hf's input must be HF: refuses grouped expert tensors and native metadata.
void refuse_native_layout(const TensorSource& src, const ModelSpec& spec);
// to-hf's input must be native: refuses `_scale_inv` companions and per-expert HF keys.
void refuse_hf_layout(const TensorSource& src, const ModelSpec& spec);

// A layer index is a decoder layer's (below num_hidden_layers), or an MTP layer's that the config
// declares; otherwise `t` is refused, naming both counts.
void check_layer_index(const SourceTensor& t, const TensorKey& key, const ModelSpec& spec);

// Every (non-scale, non-grouped) tensor the config determines has the config's shape, every layer
// index is one the config declares (check_layer_index), no tensor is one its layer's role rules
// out (ModelSpec::contradicts_config), and the scale grids agree with weight_block_size.
void check_shapes_against_config(const TensorSource& src, const ModelSpec& spec);

// Every decoder layer, and every MTP layer that holds any tensor or comes before one that does
// (MTP layers may be left out, the last first), holds all of its non-expert tensors (norms,
// q/k/v/o, the sink when configured, the dense MLP or the router), and the model's embedding,
// final norm and (untied) lm_head exist. `native`: MoE layers need both grouped expert tensors.
// An HF source (`native` false) must also hold routed experts in every layer that has them:
// expert `expert` (an EP rank's first; nullopt: none to check) stands for the layer.
void check_layers_complete(const TensorSource& src, const ModelSpec& spec, bool native,
                           std::optional<int64_t> expert = 0);

// The moeckpt.* metadata of each part agrees with itself, with config.json, with the grouped
// tensors' expert dimension and with the other parts (one EP world size, distinct ranks).
// Returns each part's first expert id (0 without metadata).
std::vector<int64_t> check_native_metadata(const TensorSource& src, const ModelSpec& spec);

// Reads a scale tensor and refuses zero, negative, NaN or infinite entries among the
// [used_rows, used_cols] that blocks use (extra trailing rows/columns are ignored). Returns the
// entries above `large` (row, column, value): those whose products with large FP8 codes may not
// be finite in the output dtype, for the caller to check against their blocks.
struct LargeScale {
  int64_t row, col;
  float value;
};
std::vector<LargeScale> check_scale_values(const TensorSource& src, const SourceTensor& scale,
                                           int64_t used_rows, int64_t used_cols,
                                           float large = std::numeric_limits<float>::infinity());

// Data scans, streaming in bounded chunks on `threads` threads (0: all cores):
// FP8 NaN codes (0x7F / 0xFF) in every F8_E4M3 tensor ...
void scan_fp8_nan_codes(const TensorSource& src, unsigned threads = 0);
// ... and NaN / infinity in the native tensors block quantization would quantize.
void scan_native_non_finite(const TensorSource& src, const ModelSpec& spec, unsigned threads = 0);

}  // namespace moeckpt
