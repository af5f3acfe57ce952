// native -> HF: split grouped experts back into per-expert [out, in] weights, optionally drop keys,
// and quantize (real block scales, Automodel's raw cast, or none).
#include <fmt/format.h>

#include <array>

#include <map>

#include "adapter/scale_ref.hpp"
#include "adapter/validate.hpp"
#include "core/key_pattern.hpp"
#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/mimo_rules.hpp"
#include "moeckpt/mxfp4.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/tensor_key.hpp"
#include "moeckpt/tp_interleaved_qkv.hpp"

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
    // MiMo-V2.6 (fused QKV, MXFP4 experts). Automodel 0.7.0 refuses a quantized export; the
    // default mode's block quantization writes the published layout back (fused qkv_proj over
    // the TP degree, MXFP4 experts); a cast has no such layout.
    // A single MiMo-V2.6 tensor in compat mode is cast as 0.7.0's convert_single_tensor_to_hf
    // does (the split layout's path below).
    const bool compat_single = compat_ && o_.single_tensor && !c_.fused_native;
    if (c_.fused_qkv && effective_quant(o_) != QuantMode::kNone && !compat_single) {
      if (compat_)
        fail(ErrorKind::kUnsupportedLayout, "", "",
             c_.fused_native ? "MiMo-V2.5-Pro FP8 export is unsupported; use quantization=False to "
                               "preserve weights (Automodel 0.7.0 refuses it)"
                             : "MiMo-V2.6 quantized conversion is only supported for checkpoint "
                               "loading (Automodel 0.7.0 refuses it)",
             "no quantization: BF16 weights");
      if (mode_ != QuantMode::kBlock || o_.hf_source)
        fail(ErrorKind::kUnsupportedLayout, "", "",
             "a fused-QKV (MiMo-V2.6) checkpoint is written in its published layout by block "
             "quantization of a native folder only",
             "block quantization (FP8 qkv_proj per TP shard, MXFP4 experts), or none");
      published_v26_ = true;
      // MiMo-V2.5-Pro: over num_key_value_heads, experts FP8 as MiMo-V2-Flash.
      tp_ = c_.fused_native ? c_.full.num_kv_heads : (o_.tp_size > 0 ? o_.tp_size : recorded_tp());
      if (c_.fused_native && o_.tp_size > 0 && o_.tp_size != tp_)
        fail(ErrorKind::kInvalidArgument, "", "",
             fmt::format("a MiMo-V2.5-Pro checkpoint is interleaved over num_key_value_heads = {}, "
                         "not TP {}",
                         tp_, o_.tp_size));
      plan_.index_metadata["tp_size"] = std::to_string(tp_);
    }
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
      if (auto hf = hf_sink_name(t.name)) {  // a sink under Automodel's TE name
        if (!compat_) {                      // written back as published: attention_sink_bias, BF16
          emit(*hf, MatrixView{&t}, t,
               t.dtype == Dtype::BF16 ? std::nullopt : std::optional<Dtype>(Dtype::BF16));
          continue;
        }
        if (o_.attn_backend == AttnBackend::kTe) {  // Automodel renames it, keeping the dtype
          emit(*hf, MatrixView{&t}, t);
          continue;
        }
      }
      emit(t.name, MatrixView{&t}, t);
    }
    for (const auto& [base, g] : tp_groups_) emit_tp_interleaved_qkv(base, g);
    for (auto& [base, g] : fused_) {  // q, k, v sharing the fused layout's block scales
      GroupQuantTask task;
      task.block_cols = block_.cols;
      for (size_t p = 0; p < 3; ++p) {
        if (g.view[p] && g.view[p]->src->shape.size() == 2 && g.view[p]->src->shape[1] > 0)
          task.chunk_rows = std::max<int64_t>(
              1, static_cast<int64_t>(o_.task_bytes / (g.view[p]->src->shape[1] * 3)));
        task.in.push_back(g.view[p]);
        task.out_weight.push_back(g.out_weight[p]);
        task.runs.push_back(scale_runs(*g.layout, kQkv[p]));
        task.out_scale.push_back(g.out_scale[p]);
        task.scale_rows.push_back(g.layout->scale_rows(kQkv[p]));
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

  // `convert`: an unquantized whole tensor written in this dtype instead of its own.
  void emit(const std::string& key, const MatrixView& view, const SourceTensor& src,
            std::optional<Dtype> convert = std::nullopt) {
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
        plan_.tasks.push_back(CopyTask{&src, add_output(key, convert.value_or(src.dtype), shape),
                                       std::min(o_.task_bytes / 2, kCopyChunkBytes), convert});
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
    if (published_v26_) {
      const auto k = classify_tensor_name(key);
      if (k.kind == TensorKind::kAttentionProj && k.projection == Projection::kQkv &&
          c_.fused_native) {  // MiMo-V2.5-Pro: canonical [Q, K, V] -> interleaved
        if (slot) fail(ErrorKind::kMalformedFile, src.file, src.name, "attention weight in a slot");
        emit_tp_interleaved_qkv(
            key.substr(0, key.size() - std::string_view("qkv_proj.weight").size()),
            {&src, &src, &src});
        return;
      }
      if (k.kind == TensorKind::kAttentionProj && k.projection != Projection::kO &&
          k.projection != Projection::kQkv) {  // q, k, v: one fused qkv_proj per layer
        if (slot) fail(ErrorKind::kMalformedFile, src.file, src.name, "attention weight in a slot");
        auto& g = tp_groups_[key.substr(0, key.size() - std::string_view("q_proj.weight").size())];
        g[qkv_index(k.projection)] = &src;
        return;
      }
      if (k.kind == TensorKind::kExpertProj &&
          !c_.fused_native) {  // MXFP4, one E8M0 scale per 32 inputs
        if (C % numerics::kMxBlock != 0)
          fail(ErrorKind::kConfigMismatch, src.file, src.name,
               fmt::format("expert weight of {} inputs cannot be written as MXFP4", C),
               "an input size that is a multiple of 32");
        const size_t w = add_output(key, Dtype::U8, {shape[0], shape[1] / 2});
        const size_t s =
            add_output(key + "_scale", Dtype::U8, {shape[0], shape[1] / numerics::kMxBlock});
        EmitTask task{view, w, s, QuantMode::kBlock, 0, 1, numerics::kMxBlock};
        task.format = BlockFormat::kMxfp4;
        plan_.tasks.push_back(std::move(task));
        return;
      }
    }
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
    if (published_v26_) return nullptr;
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

  // The TP degree a native folder of a fused-QKV source records; 1 without one.
  int64_t recorded_tp() const {
    auto md = src_.metadata(0);
    auto it = md.find(kMetaCheckpointTp);
    if (it == md.end()) return 1;
    return checkpoint_tp_size({{"tp_size", it->second}},
                              src_.tensors().empty() ? "" : src_.tensors().front().file);
  }

  // q, k, v of one layer -> qkv_proj [tp * (q + k + v), H]: shard t holds rows [Q_t, K_t, V_t],
  // FP8 with its own block grid ([tp * ceil(rows per shard / B), ceil(H / B)] scales).
  void emit_tp_interleaved_qkv(const std::string& base,
                               const std::array<const SourceTensor*, 3>& qkv) {
    const std::string name = base + "qkv_proj.weight";
    for (size_t p = 0; p < 3; ++p)
      if (!qkv[p])
        fail(ErrorKind::kConfigMismatch, "", name,
             "the fused projection needs " + base + std::string(projection_name(kQkv[p])) +
                 ".weight, which is missing or excluded",
             "q_proj, k_proj and v_proj of every layer");
    if (excluded(name)) return;
    const auto key = classify_tensor_name(name);
    const auto& dims = attention_dims_of(key, c_);
    const auto layout = c_.fused_native
                            ? tp_interleaved_qkv_v25(dims, tp_, true, qkv[0]->file, name)
                            : tp_interleaved_qkv(dims, tp_, qkv[0]->file, name);
    const int64_t H = c_.hidden_size, rps = layout.rows_per_shard();
    // Where shard t's rows of projection p start in their source: the split projection's rows
    // t * n, or (one canonical [Q, K, V] tensor) the projection's offset plus t * n.
    std::array<int64_t, 3> offset{0, 0, 0};
    auto check = [&](const SourceTensor& t, int64_t rows) {
      if (t.shape != std::vector<uint64_t>{static_cast<uint64_t>(rows), static_cast<uint64_t>(H)})
        fail(ErrorKind::kConfigMismatch, t.file, t.name,
             "shape " + format_shape(t.shape) + " disagrees with config.json");
    };
    if (c_.fused_native) {
      offset = {0, tp_ * layout.q, tp_ * (layout.q + layout.k)};
      check(*qkv[0], layout.rows());
    } else {
      for (int p = 0; p < 3; ++p) check(*qkv[p], tp_ * layout.shard_rows(p));
    }
    const int64_t srps = ceil_div(rps, block_.rows);
    origin_ = "'" + qkv[0]->name + "'";
    origin_file_ = qkv[0]->file;
    const size_t w = add_output(name, Dtype::F8_E4M3,
                                {static_cast<uint64_t>(layout.rows()), static_cast<uint64_t>(H)});
    const size_t s = add_output(
        name + "_scale_inv", Dtype::F32,
        {static_cast<uint64_t>(tp_ * srps), static_cast<uint64_t>(ceil_div(H, block_.cols))});
    for (int64_t t = 0; t < tp_; ++t)
      for (auto [a, b] :
           split_rows(rps, static_cast<uint64_t>(H) * 4, o_.task_bytes, block_.rows)) {
        GatherQuantTask task;
        task.out_weight = w;
        task.out_scale = s;
        task.row0 = t * rps + a;
        task.row1 = t * rps + b;
        task.cols = H;
        task.scale_row0 = t * srps + a / block_.rows;
        task.block_rows = block_.rows;
        task.block_cols = block_.cols;
        for (int p = 0; p < 3; ++p) {  // the part of shard t's rows [a, b) in projection p
          const int64_t first = layout.first_row(0, p), n = layout.shard_rows(p);
          const int64_t lo = std::max(a, first), hi = std::min(b, first + n);
          if (lo >= hi) continue;
          task.segments.push_back({qkv[p], offset[static_cast<size_t>(p)] + t * n + (lo - first),
                                   hi - lo, t * rps + lo});
        }
        plan_.tasks.push_back(std::move(task));
      }
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
  bool published_v26_ = false;  // writing the fused-QKV / MXFP4 layout
  int64_t tp_ = 1;
  std::map<std::string, std::array<const SourceTensor*, 3>> tp_groups_;  // per self_attn prefix
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
