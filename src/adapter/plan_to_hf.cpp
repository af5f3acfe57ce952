// native -> HF: split grouped experts back into per-expert [out, in] weights, optionally drop keys,
// and quantize (real block scales, Automodel's raw cast, or none).
#include <fmt/format.h>

#include <map>

#include "adapter/validate.hpp"
#include "core/key_pattern.hpp"
#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/mimo_rules.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/tensor_key.hpp"

namespace moeckpt {
namespace {

class ToHfPlanner {
 public:
  ToHfPlanner(const TensorSource& src, const MimoConfig& c, const ToHfOptions& o,
              const std::vector<int64_t>& starts)
      : src_(src), c_(c), o_(o), starts_(starts), compat_(is_automodel(o.compat)) {
    mode_ = effective_quant(o);
    block_ = compat_ ? BlockSize{} : c.block.value_or(BlockSize{});
    // Automodel's exclude_key_regex is re.match (anchored at the key's start); ours is a search.
    if (o.exclude_regex)
      exclude_.emplace(*o.exclude_regex,
                       compat_ ? KeyPattern::Anchor::kStart : KeyPattern::Anchor::kSearch);
  }

  Plan plan() {
    // MiMo-V2.6 (fused QKV, MXFP4 experts): written back unquantized with split projections.
    // Automodel 0.7.0 refuses a quantized export; this version does not write the published
    // fused/MXFP4 layout yet either.
    if (c_.fused_qkv && effective_quant(o_) != QuantMode::kNone)
      fail(ErrorKind::kUnsupportedLayout, "", "",
           compat_ ? "MiMo-V2.6 quantized conversion is only supported for checkpoint loading "
                     "(Automodel 0.7.0 refuses it)"
                   : "a quantized export of a fused-QKV (MiMo-V2.6) checkpoint is not supported "
                     "yet",
           "no quantization: BF16 with split q/k/v projections and per-expert weights");
    if (o_.hf_source) {
      refuse_native_layout(src_);
      refuse_quantized(src_);
    } else {
      refuse_hf_layout(src_);
      check_native_metadata(src_, c_);
    }
    if (!compat_) {  // Automodel converts whatever it is given; the default mode validates
      check_shapes_against_config(src_, c_);
      if (o_.require_all_experts) check_layers_complete(src_, c_, !o_.hf_source);
    }
    for (const auto& t : src_.tensors()) {
      if (t.part != 0) continue;  // other EP ranks hold replicas of non-expert tensors
      auto key = classify_tensor_name(t.name);
      if (key.kind == TensorKind::kGroupedExperts) {
        emit_grouped(t, key);
        continue;
      }
      emit(t.name, MatrixView{&t}, t);
    }
    for (auto& [base, g] : fused_) {
      FusedQuantTask task{{}, {}, {}, *g.layout, block_.cols};
      for (size_t p = 0; p < 3; ++p) {
        if (g.view[p] && g.view[p]->src->shape.size() == 2 && g.view[p]->src->shape[1] > 0)
          task.chunk_rows = std::max<int64_t>(
              1, static_cast<int64_t>(o_.task_bytes / (g.view[p]->src->shape[1] * 3)));
        task.in[p] = g.view[p];
        task.out_weight[p] = g.out_weight[p];
        task.out_scale[p] = g.out_scale[p];
      }
      plan_.tasks.push_back(std::move(task));
    }
    plan_.metadata = {{"format", "pt"}};
    return std::move(plan_);
  }

 private:
  struct FusedGroup {
    std::optional<FusedQkvLayout> layout;
    std::array<std::optional<MatrixView>, 3> view;
    std::array<std::optional<size_t>, 3> out_weight, out_scale;
  };

  // An HF source to quantize holds no FP8 weights and no block scales.
  static void refuse_quantized(const TensorSource& src) {
    for (const auto& t : src.tensors())
      if (t.dtype == Dtype::F8_E4M3 || t.name.ends_with("_scale_inv"))
        fail(ErrorKind::kUnsupportedLayout, t.file, t.name,
             t.dtype == Dtype::F8_E4M3 ? "is already FP8: the checkpoint is quantized"
                                       : "is a block scale: the checkpoint is quantized",
             "an unquantized (BF16, F16 or F32) HF checkpoint");
  }

  bool excluded(const std::string& key) const {
    if (!exclude_) return false;
    // Automodel: re.match (anchored at the start, prefix match). Default: found anywhere.
    return exclude_->matches(key);
  }

  // Every output name is produced once: two sources mapping to one HF key (a passthrough tensor
  // named like a split expert, grouped tensors under two prefixes, a --prefix choice) would give a
  // file with a duplicate key, or a state dict that silently keeps one of them.
  size_t add_output(std::string name, Dtype dt, std::vector<uint64_t> shape) {
    auto [it, fresh] = origins_.emplace(name, origin_);
    if (!fresh)
      fail(ErrorKind::kConfigMismatch, origin_file_, name,
           "is produced twice: from " + it->second + " and from " + origin_,
           "sources that map to distinct HF keys (check the tensor names and the expert prefix)");
    plan_.outputs.push_back({std::move(name), dt, std::move(shape)});
    return plan_.outputs.size() - 1;
  }

  bool quantize(const std::string& key) const {
    switch (mode_) {
      case QuantMode::kNone:
        return false;
      case QuantMode::kCast:
        return should_quantize_key(key, o_.compat);
      case QuantMode::kBlock:
        return is_published_fp8_key(key);
    }
    return false;
  }

  void emit(const std::string& key, const MatrixView& view, const SourceTensor& src) {
    if (excluded(key)) return;
    origin_ = "'" + src.name + "'" +
              (view.slot >= 0 ? " (expert slot " + std::to_string(view.slot) + ")" : "") +
              (src_.parts() > 1 ? " of " + src.file : "");
    origin_file_ = src.file;
    const bool slot = view.slot >= 0;
    std::vector<uint64_t> shape =
        slot ? std::vector<uint64_t>{static_cast<uint64_t>(view.cols), src.shape[1]} : src.shape;
    if (!quantize(key)) {
      if (slot)
        plan_.tasks.push_back(
            EmitTask{view, add_output(key, src.dtype, shape), std::nullopt, QuantMode::kNone});
      else
        plan_.tasks.push_back(CopyTask{&src, add_output(key, src.dtype, shape),
                                       std::min(o_.task_bytes / 2, kCopyChunkBytes)});
      return;
    }
    if (shape.size() != 2)
      fail(ErrorKind::kMalformedFile, src.file, src.name,
           "cannot quantize a weight of shape " + format_shape(shape), "a 2-D [out, in] weight");
    if (src.dtype != Dtype::BF16 && src.dtype != Dtype::F32 && src.dtype != Dtype::F16)
      fail(ErrorKind::kMalformedFile, src.file, src.name,
           "cannot quantize a " + std::string(dtype_name(src.dtype)) + " tensor",
           "BF16, F16 or F32 values");
    const auto R = static_cast<int64_t>(shape[0]), C = static_cast<int64_t>(shape[1]);
    if (mode_ == QuantMode::kBlock) {
      if (auto* g = fused_group(key, R)) {
        auto k = classify_tensor_name(key);
        const size_t p = qkv_index(k.projection);
        g->view[p] = view;
        g->out_weight[p] = add_output(key, Dtype::F8_E4M3, shape);
        g->out_scale[p] = add_output(key + "_scale_inv", Dtype::F32,
                                     {static_cast<uint64_t>(g->layout->scale_rows(k.projection)),
                                      static_cast<uint64_t>(ceil_div(C, block_.cols))});
        return;
      }
    }
    int64_t scale_rows = ceil_div(R, block_.rows);
    // Automodel pads the full-attention k scale to 8 rows (the published shape).
    if (mode_ == QuantMode::kCast && key.ends_with(".self_attn.k_proj.weight") &&
        R == c_.full.num_kv_heads * c_.full.head_dim)
      scale_rows = std::max<int64_t>(scale_rows, 8);
    const size_t w = add_output(key, Dtype::F8_E4M3, shape);
    const size_t s = add_output(
        key + "_scale_inv", Dtype::F32,
        {static_cast<uint64_t>(scale_rows), static_cast<uint64_t>(ceil_div(C, block_.cols))});
    if (slot) {
      plan_.tasks.push_back(EmitTask{view, w, s, mode_, scale_rows, block_.rows, block_.cols});
      return;
    }
    for (auto [r0, r1] : split_rows(R, static_cast<uint64_t>(C) * dtype_size(src.dtype),
                                    o_.task_bytes, block_.rows))
      plan_.tasks.push_back(
          EmitTask{view, w, s, mode_, scale_rows, block_.rows, block_.cols, r0, r1});
  }

  // The fused q/k/v group this key belongs to, when its layer's published layout is the fused one.
  FusedGroup* fused_group(const std::string& key, int64_t rows) {
    auto k = classify_tensor_name(key);
    if (k.kind != TensorKind::kAttentionProj || k.projection == Projection::kO || !k.layer)
      return nullptr;
    const auto& dims = attention_dims_of(k, c_);
    auto layout = FusedQkvLayout::make(dims.q_rows(), dims.k_rows(), dims.v_rows(), block_.rows);
    if (!layout || !layout->differs_from_plain() || !layout->every_projection_owns_scale_rows())
      return nullptr;
    if (rows != layout->rows(k.projection))
      fail(ErrorKind::kConfigMismatch, "", key,
           fmt::format("has {} rows but this layer's attention config gives {}", rows,
                       layout->rows(k.projection)));
    auto& g = fused_[self_attn_prefix(key)];
    g.layout = layout;
    return &g;
  }

  void emit_grouped(const SourceTensor& t, const TensorKey& key) {
    const int64_t E = c_.n_routed_experts, Ie = c_.moe_intermediate_size, D = c_.hidden_size;
    const bool gate_up = key.projection == Projection::kGateAndUp;
    // Every rank's copy of this tensor, with its global expert ids.
    std::map<int64_t, std::pair<const SourceTensor*, int64_t>> by_expert;  // id -> (tensor, slot)
    if (!compat_ && (key.mtp || *key.layer >= c_.num_hidden_layers ||
                     !c_.layer_is_moe[static_cast<size_t>(*key.layer)]))
      fail(ErrorKind::kConfigMismatch, t.file, t.name,
           fmt::format("grouped expert tensor in layer {}, which config.json makes a dense layer",
                       *key.layer),
           "expert tensors only in MoE layers (moe_layer_freq)");
    for (const auto& part : src_.tensors()) {
      if (part.name != t.name) continue;
      if (!compat_ && part.dtype != Dtype::BF16 && part.dtype != Dtype::F16 &&
          part.dtype != Dtype::F32)
        fail(ErrorKind::kMalformedFile, part.file, part.name,
             "grouped expert tensor of dtype " + std::string(dtype_name(part.dtype)),
             "BF16, F16 or F32 values");
      if (part.shape.size() != 3 ||
          (!compat_ && (part.shape[1] != static_cast<uint64_t>(gate_up ? D : Ie) ||
                        part.shape[2] != static_cast<uint64_t>(gate_up ? 2 * Ie : D)))) {
        if (compat_ && !gate_up) {  // Automodel passes such a down_projs through unchanged
          emit(t.name, MatrixView{&t}, t);
          return;
        }
        fail(ErrorKind::kConfigMismatch, part.file, part.name,
             "grouped expert tensor of shape " + format_shape(part.shape) +
                 " disagrees with config.json",
             gate_up ? fmt::format("[n, {}, {}]", D, 2 * Ie) : fmt::format("[n, {}, {}]", Ie, D));
      }
      if (compat_ && !gate_up && part.shape[1] != static_cast<uint64_t>(Ie)) {
        emit(t.name, MatrixView{&t}, t);
        return;
      }
      if (gate_up && static_cast<int64_t>(part.shape[2]) < Ie)
        fail(ErrorKind::kConfigMismatch, part.file, part.name,
             "gate_and_up_projs narrower than moe_intermediate_size");
      const int64_t first = starts_.at(part.part);
      const auto n = static_cast<int64_t>(part.shape[0]);
      if (first < 0 || first + n > E)
        fail(ErrorKind::kConfigMismatch, part.file, part.name,
             fmt::format("holds experts [{}, {}) but n_routed_experts is {}", first, first + n, E));
      for (int64_t s = 0; s < n; ++s)
        if (!by_expert.emplace(first + s, std::make_pair(&part, s)).second)
          fail(ErrorKind::kConfigMismatch, part.file, part.name,
               fmt::format("expert {} is held by two EP ranks", first + s));
    }
    if (o_.require_all_experts && static_cast<int64_t>(by_expert.size()) != E)
      fail(ErrorKind::kConfigMismatch, t.file, t.name,
           fmt::format("the inputs hold {} of the {} experts of this layer", by_expert.size(), E),
           "every EP rank's folder (or a tensor with all n_routed_experts)");
    const std::string prefix = o_.prefix ? *o_.prefix : compat_ ? "model." : key.prefix;
    for (const auto& [id, where] : by_expert) {
      const auto& [src, slot] = where;
      const std::string base = fmt::format("{}layers.{}.mlp.experts.{}.", prefix, *key.layer, id);
      if (gate_up) {
        const auto width = static_cast<int64_t>(src->shape[2]);
        const size_t first = plan_.tasks.size();
        emit(base + "gate_proj.weight", MatrixView{src, slot, 0, Ie}, *src);
        emit(base + "up_proj.weight", MatrixView{src, slot, Ie, width - Ie}, *src);
        if (plan_.tasks.size() - first == 2) {  // both kept: one task reads the slot once
          SlotGroupTask group;
          for (size_t i = first; i < plan_.tasks.size(); ++i)
            group.parts.push_back(std::get<EmitTask>(plan_.tasks[i]));
          plan_.tasks.resize(first);
          plan_.tasks.push_back(std::move(group));
        }
      } else {
        emit(base + "down_proj.weight",
             MatrixView{src, slot, 0, static_cast<int64_t>(src->shape[2])}, *src);
      }
    }
  }

  const TensorSource& src_;
  const MimoConfig& c_;
  const ToHfOptions& o_;
  const std::vector<int64_t>& starts_;
  const bool compat_;
  QuantMode mode_;
  BlockSize block_;
  std::optional<KeyPattern> exclude_;
  std::map<std::string, std::string> origins_;  // output name -> the source it comes from
  std::string origin_, origin_file_;            // the source being emitted
  std::map<std::string, FusedGroup> fused_;
  Plan plan_;
};

}  // namespace

Plan plan_to_hf(const TensorSource& native, const MimoConfig& config, const ToHfOptions& options,
                const std::vector<int64_t>& expert_start) {
  if (expert_start.size() != native.parts())
    fail(ErrorKind::kInvalidArgument, "", "", "one expert start per input folder is needed");
  return ToHfPlanner(native, config, options, expert_start).plan();
}

}  // namespace moeckpt
