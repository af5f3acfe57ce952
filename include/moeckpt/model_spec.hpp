#pragma once
// What moeckpt knows about one checkpoint family, in one place: the tensor-name grammar (both
// ways), the shapes its config implies, which tensors a whole checkpoint holds, which weights are
// FP8 (as published and per Automodel version), where block scales live, how routed experts are
// grouped natively, and what the compat modes change. Planners, validation, inspect, verify,
// synth, the CLI and Python ask the spec and name no tensor themselves.
//
// A family is one implementation (src/model/<family>/), chosen by model_spec_for() from the
// config's model_type and layout fields (docs/ARCHITECTURE.md, "How to add a model family").
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "moeckpt/compat.hpp"
#include "moeckpt/model_config.hpp"
#include "moeckpt/scale_layout.hpp"
#include "moeckpt/tensor_key.hpp"
#include "moeckpt/tp_interleaved_qkv.hpp"

namespace moeckpt {

// A tensor a whole checkpoint must hold, with what needs it (for the "missing" message) and the
// other name it may have under an attention backend.
struct RequiredTensor {
  std::string name;
  std::string needed_by;
  std::optional<std::string> backend_name;
};

// A native grouped-expert tensor: [n_experts, in, sum of the parts' out] holding the listed HF
// expert projections ([out, in] each) transposed, one after the other along the last axis.
struct ExpertGrouping {
  Projection grouped;
  std::vector<Projection> parts;
};

// The native name of an HF tensor under an attention backend (and whether it is stored as F32).
struct BackendName {
  std::string name;
  bool f32 = false;
};

class ModelSpec {
 public:
  explicit ModelSpec(ModelConfig config) : config_(std::move(config)) {}
  virtual ~ModelSpec() = default;
  ModelSpec(const ModelSpec&) = delete;
  ModelSpec& operator=(const ModelSpec&) = delete;

  const ModelConfig& config() const noexcept { return config_; }
  // The family and layout, for messages and inspect.
  virtual std::string_view layout_name() const noexcept = 0;

  // --- Tensor names, both ways. The defaults are the Hugging Face conventions the families share
  // (src/model/hf_tensor_names.hpp): "<weight>_scale_inv", "layers.L.mlp.experts.E.<proj>.weight",
  // "...mlp.experts.{gate_and_up,down}_projs", "...self_attn.<proj>.weight", Automodel's prefixes.
  virtual TensorKey classify(std::string_view name) const = 0;
  // The block-scale companion of an FP8 weight (nullopt: the name cannot have one); whether a
  // name is such a companion; the E8M0 scale companion of an MXFP4 weight.
  virtual std::optional<std::string> block_scale_name(std::string_view weight) const;
  virtual bool is_block_scale(std::string_view name) const;
  virtual std::string mx_scale_name(std::string_view weight) const = 0;
  // The HF weight of a routed expert's projection, and a layer's native grouped tensor.
  virtual std::string expert_weight_name(std::string_view prefix, int64_t layer, int64_t expert,
                                         Projection p) const;
  virtual std::string grouped_experts_name(std::string_view prefix, int64_t layer,
                                           Projection grouped) const;
  // The weight of attention projection `p` (q, k, v, o or the fused qkv) of the layer `weight`
  // (an attention weight's name) belongs to; the text all of that layer's attention names share.
  virtual std::string attention_weight_name(std::string_view weight, Projection p) const;
  virtual std::string attention_prefix(std::string_view weight) const;
  // Stacked experts: an HF layout that stores all of a layer's experts in one tensor per
  // projection ([n_experts, out, ...]; MXFP4 blocks and scales). The name of expert `e`'s member
  // of stacked tensor `stacked` (its slice [e] as a 2-D [out, bytes of the rest] matrix, a
  // name classify() gives the expert's kExpertProj key, or its E8M0 scale), nullopt when
  // `stacked` is not one; and back, a member's stacked tensor and expert. The stacked shape of
  // `experts` members of 2-D shape `member`.
  virtual bool hf_experts_stacked() const noexcept { return false; }
  virtual std::optional<std::string> stacked_expert_member(std::string_view stacked,
                                                           int64_t e) const {
    (void)stacked;
    (void)e;
    return std::nullopt;
  }
  virtual std::optional<std::pair<std::string, int64_t>> stack_of_member(
      std::string_view member) const {
    (void)member;
    return std::nullopt;
  }
  virtual std::vector<uint64_t> stacked_shape(std::string_view stacked,
                                              const std::vector<uint64_t>& member,
                                              int64_t experts) const {
    (void)stacked;
    std::vector<uint64_t> s{static_cast<uint64_t>(experts)};
    s.insert(s.end(), member.begin(), member.end());
    return s;
  }
  // Prefixes under which per-expert keys are grouped (others pass through unchanged), and the
  // one Automodel writes split experts under.
  virtual bool is_groupable_prefix(std::string_view prefix) const;
  virtual std::string compat_expert_prefix() const;
  // True when `key` is a routed expert's projection that the native layout groups.
  bool is_grouped_expert(const TensorKey& key) const {
    return key.kind == TensorKind::kExpertProj && (!key.mtp || mtp_layers_have_routed_experts()) &&
           is_groupable_prefix(key.prefix);
  }
  // True when the config gives `key`'s layer routed experts (a MoE decoder layer, or an MTP
  // layer of a family whose MTP layers are MoE layers).
  bool layer_has_routed_experts(const TensorKey& key) const;
  // The native name of an HF tensor under `backend` (nullopt: the same); and the HF name of a
  // native one named for another backend (nullopt: not such a name).
  virtual std::optional<BackendName> native_backend_name(std::string_view hf,
                                                         AttnBackend backend) const = 0;
  virtual std::optional<std::string> hf_name_of_backend_name(std::string_view native) const = 0;
  // The native name of an HF tensor the family's native layout renames whatever the backend
  // (e.g. a router under another module; an expert weight, where not grouped), and back (nullopt:
  // the same name).
  virtual std::optional<std::string> native_name_of(std::string_view hf) const {
    (void)hf;
    return std::nullopt;
  }
  virtual std::optional<std::string> hf_name_of(std::string_view native) const {
    (void)native;
    return std::nullopt;
  }
  // Every tensor a whole checkpoint holds besides routed experts: for decoder layers under
  // `prefix`, the listed MTP layers, and the model's own tensors (native: grouped experts too).
  virtual std::vector<RequiredTensor> required_tensors(std::string_view prefix,
                                                       const std::set<int64_t>& mtp_layers,
                                                       bool native) const = 0;
  // Why a tensor the grammar knows cannot be in a checkpoint of this config (e.g. q_a_proj where
  // q_lora_rank is null, a dense MLP in a MoE layer); nullopt: it may be.
  virtual std::optional<std::string> contradicts_config(const TensorKey& key) const {
    (void)key;
    return std::nullopt;
  }
  // Tensors the family passes through unchanged though the grammar does not know them (e.g.
  // multimodal towers).
  virtual bool is_passthrough(std::string_view name) const = 0;
  // A few such tensors (name, shape) for synthetic checkpoints of the layout.
  virtual std::vector<std::pair<std::string, std::vector<uint64_t>>> synthetic_passthrough_tensors()
      const = 0;
  // MTP layers: the layer id of the i-th (mtp.layers.i, or layers.<L + i> after the L decoder
  // layers), how many the config declares (nullopt: it does not say), and whether they hold
  // routed experts.
  virtual int64_t mtp_layer_id(int64_t i) const { return i; }
  virtual std::optional<int64_t> configured_mtp_layers() const { return std::nullopt; }
  virtual bool mtp_layers_have_routed_experts() const { return false; }
  // Words for a layer in messages, e.g. "layer 3 (full attention, MoE)".
  virtual std::string describe_layer(int64_t layer) const = 0;

  // --- Shapes.
  // The shape an HF checkpoint holds for a (non-scale) tensor, or nullopt when the config does
  // not determine it. MXFP4 packing is the caller's (two codes per byte along the input axis).
  virtual std::optional<std::vector<uint64_t>> expected_hf_shape(const TensorKey& key) const = 0;
  virtual const AttentionDims& attention_dims(const TensorKey& key) const = 0;
  // The HF [out, in] shape of a routed expert's projection (every MoE layer alike).
  virtual std::vector<uint64_t> expert_hf_shape(Projection p) const;
  // Default: gated experts, [moe_intermediate, hidden] gate/up and [hidden, moe_intermediate]
  // down, grouped as Automodel groups them (gate_and_up_projs: gate then up; down_projs).
  virtual std::vector<ExpertGrouping> expert_groupings() const;
  // The grouping of native grouped tensor `grouped` (kGateAndUp, kDown; no parts when unknown),
  // and the [in, width] of one expert's slot in it: its parts' HF [out, in] side by side.
  ExpertGrouping expert_grouping(Projection grouped) const;
  std::pair<uint64_t, uint64_t> grouped_slot_shape(const ExpertGrouping& grouping) const;

  // --- FP8 sets.
  // Block-quantized in the published checkpoint (what the default to-hf quantizes).
  virtual bool is_published_fp8(std::string_view name) const = 0;
  // Unquantized tensors the published checkpoint stores in F32 (the rest: BF16).
  virtual bool is_published_f32(const TensorKey& key) const = 0;
  // Whether the compat mode reproduces that Automodel version for this family (default: every
  // version; a family reproduces only the versions its goldens come from).
  virtual bool reproduces(Compat version) const {
    (void)version;
    return true;
  }
  // What an Automodel version's cast quantizes (its _should_quantize_key).
  virtual bool compat_quantizes(std::string_view name, Compat version) const = 0;
  // Whether the checkpoint this config describes is an FP8 release (a BF16 release of a family
  // is exported in BF16), and whether an Automodel version's to_hf(quantization=True) casts at
  // all (some adapters ignore the flag).
  virtual bool publishes_fp8() const { return true; }
  virtual bool compat_casts() const { return true; }
  // Why the compat mode refuses an FP8 input (an Automodel adapter with no FP8 path, which would
  // keep the codes and drop their scales); nullopt: it converts one.
  virtual std::optional<std::string> compat_fp8_input_refusal() const { return std::nullopt; }
  // Whether Automodel decodes MXFP4 with torch.ldexp (E8M0 255 as 2^128, not NaN).
  virtual bool compat_mxfp4_ldexp() const { return false; }
  // Scale rows Automodel's cast writes for a weight of `rows` rows (it pads some).
  virtual int64_t compat_cast_scale_rows(const TensorKey& key, int64_t rows,
                                         int64_t block_rows) const = 0;

  // --- Layouts.
  // HF attention as one fused qkv projection interleaved over a checkpoint TP degree; natively
  // fused too (canonical [Q, K, V] rows) or split; routed experts in MXFP4 in the HF layout.
  virtual bool hf_qkv_fused() const noexcept = 0;
  virtual bool native_qkv_fused() const noexcept = 0;
  virtual bool hf_experts_mxfp4() const noexcept = 0;
  // The TP degree a fused qkv is interleaved over when the family fixes it (nullopt: recorded in
  // the index's metadata.tp_size, 1 when absent).
  virtual std::optional<int64_t> fixed_checkpoint_tp() const = 0;
  int64_t checkpoint_tp(const std::map<std::string, std::string>& index_metadata,
                        const std::string& index_file) const;
  // The interleave of a fused qkv over `tp` shards (`exact`: refuse what Automodel rounds).
  virtual TpInterleavedQkv qkv_interleave(const AttentionDims& dims, int64_t tp, bool exact,
                                          const std::string& file,
                                          const std::string& tensor) const = 0;
  // Split q/k/v quantized as one tensor-parallel fused projection (scales shared across them):
  // the layout a layer's k scale rows reveal (nullopt: plain grids), and the one to write.
  virtual std::optional<FusedQkvLayout> detect_shared_qkv_scales(
      const TensorKey& key, int64_t k_scale_rows, int64_t block_rows,
      const std::array<int64_t, 3>& weight_rows) const = 0;
  virtual std::optional<FusedQkvLayout> shared_qkv_scales_to_write(const TensorKey& key,
                                                                   int64_t block_rows) const = 0;

  // --- Compat differences and exports.
  // Why the compat mode refuses a quantized export of this layout (nullopt: it does not).
  virtual std::optional<std::string> compat_quantized_export_refusal() const = 0;
  // config.json of an export: `published_layout` false when the attention is written split.
  virtual void rewrite_export_config(nlohmann::json& config, bool published_layout) const = 0;

 protected:
  ModelConfig config_;
};

// The spec of the family `config` belongs to (by model_type and layout fields).
std::unique_ptr<const ModelSpec> model_spec_for(const ModelConfig& config);
// The reference family's spec without a config: its name grammar and FP8 rules, for functions
// that take a tensor name alone (Automodel's module-level _should_quantize_key).
const ModelSpec& reference_model_spec();

// Synth presets: the config.json of a registered family's named preset (e.g. "tiny", "full",
// "v26-tiny"), resized; an unknown name is refused, listing the known ones.
struct PresetSize {
  std::optional<int64_t> layers;
  std::optional<int64_t> experts;
  std::optional<int64_t> vocab;
};
nlohmann::json model_preset(std::string_view name, const PresetSize& size = {});
std::vector<std::string> model_preset_names();

}  // namespace moeckpt
