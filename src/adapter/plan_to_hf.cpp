// native -> HF: split grouped experts back into per-expert [out, in] weights, optionally drop keys,
// and quantize (real block scales, Automodel's raw cast, or none).
#include <fmt/format.h>

#include <algorithm>
#include <array>

#include <map>
#include <vector>

#include "adapter/quant_rules.hpp"
#include "adapter/scale_ref.hpp"
#include "adapter/validate.hpp"
#include "core/key_pattern.hpp"
#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/model_spec.hpp"
#include "moeckpt/mxfp4.hpp"
#include "moeckpt/safetensors.hpp"

namespace moeckpt {
namespace {

class ToHfPlanner {
 public:
  ToHfPlanner(const TensorSource& src, const ModelConfig& c, const ToHfOptions& o,
              const std::vector<int64_t>& starts)
      : src_(src),
        spec_(model_spec_for(c)),
        c_(c),
        o_(o),
        starts_(starts),
        compat_(is_automodel(o.compat)) {
    require_reproduced(*spec_, o.compat);
    mode_ = effective_quant(o);
    block_ = compat_ ? BlockSize{} : c.block.value_or(BlockSize{});
    // Automodel's exclude_key_regex is re.match (anchored at the key's start); ours is a search.
    if (o.exclude_regex)
      exclude_.emplace(*o.exclude_regex,
                       compat_ ? KeyPattern::Anchor::kStart : KeyPattern::Anchor::kSearch);
  }

  Plan plan() {
    // A fused-QKV layout (fused qkv_proj over the TP degree, MXFP4 experts where published).
    // Automodel 0.7.0 refuses a quantized export; the default mode's block quantization writes
    // the published layout back; a cast has no such layout. A single tensor in compat mode is
    // cast as 0.7.0's convert_single_tensor_to_hf does (the split layout's path below), unless
    // the layout stays fused natively.
    const bool compat_single = compat_ && o_.single_tensor && !spec_->native_qkv_fused();
    if (spec_->hf_qkv_fused() && effective_quant(o_) != QuantMode::kNone && !compat_single) {
      if (compat_)
        fail(ErrorKind::kUnsupportedLayout, "", "",
             spec_->compat_quantized_export_refusal().value_or(
                 "this layout's quantized export is refused by Automodel"),
             "no quantization: BF16 weights");
      if (mode_ != QuantMode::kBlock || o_.hf_source)
        fail(ErrorKind::kUnsupportedLayout, "", "",
             fmt::format("a fused-QKV ({}) checkpoint is written in its published layout by block "
                         "quantization of a native folder only",
                         spec_->layout_name()),
             "block quantization (FP8 fused projection per TP shard), or none");
      published_fused_ = true;
      const auto fixed = spec_->fixed_checkpoint_tp();
      tp_ = fixed ? *fixed : (o_.tp_size > 0 ? o_.tp_size : recorded_tp());
      if (fixed && o_.tp_size > 0 && o_.tp_size != tp_)
        fail(ErrorKind::kInvalidArgument, "", "",
             fmt::format("a {} checkpoint is interleaved over TP {} (fixed by its config), not "
                         "TP {}",
                         spec_->layout_name(), tp_, o_.tp_size));
      plan_.index_metadata["tp_size"] = std::to_string(tp_);
    }
    if (spec_->hf_experts_stacked()) refuse_stacked_exports();
    if (o_.hf_source) {
      refuse_native_layout(src_, *spec_);
      refuse_quantized();
    } else {
      refuse_hf_layout(src_, *spec_);
      check_native_metadata(src_, *spec_);
    }
    if (!compat_) {  // Automodel converts whatever it is given; the default mode validates
      check_shapes_against_config(src_, *spec_);
      if (o_.require_all_experts) check_layers_complete(src_, *spec_, !o_.hf_source);
    }
    for (const SourceTensor* tensor : planning_order()) {
      const SourceTensor& t = *tensor;
      auto key = spec_->classify(t.name);
      if (key.kind == TensorKind::kGroupedExperts ||
          (o_.hf_source && key.kind == TensorKind::kStackedExperts)) {
        if (spec_->hf_experts_stacked())
          emit_stacked(t, key);
        else
          emit_grouped(t, key);
        continue;
      }
      if (key.kind == TensorKind::kExpertBias && !o_.hf_source) {
        emit_expert_bias(t);
        continue;
      }
      if (auto hf = spec_->hf_name_of_backend_name(t.name)) {  // e.g. a sink under a TE name
        if (!compat_) {  // written back as published: its HF name, BF16
          emit(*hf, MatrixView{&t}, t,
               t.dtype == Dtype::BF16 ? std::nullopt : std::optional<Dtype>(Dtype::BF16));
          continue;
        }
        if (o_.attn_backend == AttnBackend::kTe) {  // Automodel renames it, keeping the dtype
          emit(*hf, MatrixView{&t}, t);
          continue;
        }
      }
      emit(o_.hf_source ? t.name : spec_->hf_name_of(t.name).value_or(t.name), MatrixView{&t}, t);
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

  // The source tensors whose outputs the plan lists, in the order it lists them: the one decision
  // of an HF folder's layout (ToHfOptions::order). Tensors of other parts are skipped: other EP
  // ranks hold replicas of non-expert tensors (emit_grouped gathers their experts).
  std::vector<const SourceTensor*> planning_order() const {
    std::vector<const SourceTensor*> order;
    for (const auto& t : src_.tensors())
      if (t.part == 0) order.push_back(&t);
    if (o_.order == ToHfOptions::Order::kByName)
      std::stable_sort(
          order.begin(), order.end(),
          [](const SourceTensor* a, const SourceTensor* b) { return a->name < b->name; });
    return order;
  }

  // Stacked MXFP4 experts are written by block quantization (MXFP4) or not at all (the HF BF16
  // layout); Automodel's quantized export writes placeholders.
  void refuse_stacked_exports() const {
    const QuantMode mode = effective_quant(o_);
    if (compat_ && mode != QuantMode::kNone)
      fail(ErrorKind::kUnsupportedLayout, "", "",
           spec_->compat_quantized_export_refusal().value_or(
               "this layout's quantized export is refused by Automodel"),
           "no quantization (BF16 experts), or the default mode (it writes real MXFP4)");
    if (mode == QuantMode::kCast)
      fail(ErrorKind::kUnsupportedLayout, "", "",
           fmt::format("a {} checkpoint's experts are MXFP4: there is no FP8 cast of them",
                       spec_->layout_name()),
           "block quantization (MXFP4 experts) or none");
  }

  // The rank parts of a native expert tensor [n, ...] with their row in the stacked output: every
  // expert of the layer exactly once (unless require_all_experts is off: then the experts held, a
  // contiguous range, stacked from the first, as Automodel's to_hf of one rank's shard renames
  // it); `held` gets their count.
  std::vector<std::pair<const SourceTensor*, int64_t>> expert_parts(const SourceTensor& t,
                                                                    int64_t& held_count) const {
    const int64_t E = c_.n_routed_experts;
    std::vector<std::pair<const SourceTensor*, int64_t>> parts;
    std::vector<bool> held(static_cast<size_t>(E), false);
    for (const auto& part : src_.tensors()) {
      if (part.name != t.name) continue;
      const int64_t first = starts_.at(part.part);
      const auto n = part.shape.empty() ? int64_t{0} : static_cast<int64_t>(part.shape[0]);
      if (first < 0 || first + n > E)
        fail(ErrorKind::kConfigMismatch, part.file, part.name,
             fmt::format("holds experts [{}, {}) but n_routed_experts is {}", first, first + n, E));
      for (int64_t e = first; e < first + n; ++e) {
        if (held[static_cast<size_t>(e)])
          fail(ErrorKind::kConfigMismatch, part.file, part.name,
               fmt::format("expert {} is held by two EP ranks", e));
        held[static_cast<size_t>(e)] = true;
      }
      parts.emplace_back(&part, first);
    }
    const auto count = std::count(held.begin(), held.end(), true);
    held_count = count;
    if (o_.require_all_experts && count != E)
      fail(ErrorKind::kConfigMismatch, t.file, t.name,
           fmt::format("the inputs hold {} of the {} experts of this layer; a stacked {} tensor "
                       "needs them all",
                       count, E, spec_->layout_name()),
           "every EP rank's folder");
    if (count == E) return parts;
    const auto first = std::find(held.begin(), held.end(), true) - held.begin();
    if (count == 0 ||
        !std::all_of(held.begin() + first, held.begin() + first + count, [](bool h) { return h; }))
      fail(ErrorKind::kConfigMismatch, t.file, t.name,
           fmt::format("the inputs hold {} experts of this layer, not one contiguous range", count),
           "every EP rank's folder, or one rank's");
    for (auto& p : parts) p.second -= first;
    return parts;
  }

  // Expert biases [n, out] per rank -> one [E, out] tensor, as published (BF16 in the default
  // mode; Automodel keeps the dtype).
  void emit_expert_bias(const SourceTensor& t) {
    if (excluded(t.name)) return;
    const auto key = spec_->classify(t.name);
    const uint64_t out = spec_->expert_hf_shape(
        key.projection == Projection::kDown ? Projection::kDown : Projection::kGateAndUp)[0];
    origin_ = "'" + t.name + "'";
    origin_file_ = t.file;
    int64_t n = 0;
    const auto parts = expert_parts(t, n);
    const Dtype dt = compat_ ? t.dtype : Dtype::BF16;
    const size_t o = add_output(t.name, dt, {static_cast<uint64_t>(n), out});
    for (const auto& [part, first] : parts) {
      if (part->shape.size() != 2 || part->shape[1] != out ||
          (part->dtype != Dtype::BF16 && part->dtype != Dtype::F16 && part->dtype != Dtype::F32))
        fail(ErrorKind::kConfigMismatch, part->file, part->name,
             fmt::format("expert bias {} {} disagrees with config.json", dtype_name(part->dtype),
                         format_shape(part->shape)),
             fmt::format("a float tensor [n, {}]", out));
    }
    gather_rows(parts, o, out, dt);
  }

  // Every rank part's experts into their rows of output `o` (rows of `row` elements), as `dt`.
  void gather_rows(const std::vector<std::pair<const SourceTensor*, int64_t>>& parts, size_t o,
                   uint64_t row, Dtype dt) {
    for (const auto& [part, first] : parts) {
      CopyTask task{part, o, std::min(o_.task_bytes / 2, kCopyChunkBytes),
                    part->dtype == dt ? std::nullopt : std::optional<Dtype>(dt)};
      task.out_delta = first * static_cast<int64_t>(row);
      plan_.tasks.push_back(std::move(task));
    }
  }

  // A layer's stacked experts from its grouped tensor (every rank's part): with block
  // quantization, MXFP4 as published (<proj>_blocks and _scales, each expert's [out, in] the
  // transpose of its slot, gate/up rows as they are); otherwise the HF BF16 layout, the grouped
  // tensor under its HF name (what Automodel's to_hf writes).
  void emit_stacked(const SourceTensor& t, const TensorKey& key) {
    const ExpertGrouping grouping = spec_->expert_grouping(key.projection);
    const auto [in, width] = spec_->grouped_slot_shape(grouping);
    int64_t E = 0;
    const std::string hf = o_.prefix ? fmt::format("{}layers.{}.{}", *o_.prefix, *key.layer,
                                                   t.name.substr(t.name.find(".mlp.") + 1))
                                     : t.name;
    const std::string hf_name = spec_->hf_name_of(hf).value_or(hf);
    if (excluded(hf_name)) return;
    const auto parts = expert_parts(t, E);
    for (const auto& [part, first] : parts)
      if (part->shape.size() != 3 || part->shape[1] != in || part->shape[2] != width ||
          (part->dtype != Dtype::BF16 && part->dtype != Dtype::F16 && part->dtype != Dtype::F32))
        fail(ErrorKind::kConfigMismatch, part->file, part->name,
             fmt::format("grouped expert tensor {} {} disagrees with config.json",
                         dtype_name(part->dtype), format_shape(part->shape)),
             fmt::format("a float tensor [n, {}, {}]", in, width));
    origin_ = "'" + t.name + "'";
    origin_file_ = t.file;
    if (mode_ != QuantMode::kBlock) {
      gather_rows(parts, add_output(hf_name, t.dtype, {static_cast<uint64_t>(E), in, width}),
                  in * width, t.dtype);
      return;
    }
    if (in % numerics::kMxBlock != 0)
      fail(ErrorKind::kConfigMismatch, t.file, t.name,
           fmt::format("expert weights of {} inputs cannot be written as MXFP4", in),
           "an input size that is a multiple of 32");
    const std::string prefix = hf.substr(0, hf.find("layers."));
    const auto member = spec_->expert_weight_name(prefix, *key.layer, 0, grouping.parts.at(0));
    const auto blocks = spec_->stack_of_member(member);
    const auto scales = spec_->stack_of_member(spec_->mx_scale_name(member));
    if (!blocks || !scales)
      fail(ErrorKind::kUnsupportedLayout, t.file, t.name, "has no stacked MXFP4 name");
    const size_t w = add_output(blocks->first, Dtype::U8,
                                spec_->stacked_shape(blocks->first, {width, in / 2}, E));
    const size_t s =
        add_output(scales->first, Dtype::U8,
                   spec_->stacked_shape(scales->first, {width, in / numerics::kMxBlock}, E));
    for (const auto& [part, first] : parts)
      for (int64_t slot = 0; slot < static_cast<int64_t>(part->shape[0]); ++slot) {
        EmitTask task{MatrixView{part, slot, 0, static_cast<int64_t>(width)},
                      w,
                      s,
                      QuantMode::kBlock,
                      0,
                      1,
                      numerics::kMxBlock};
        task.format = BlockFormat::kMxfp4;
        task.out_row0 = (first + slot) * static_cast<int64_t>(width);
        plan_.tasks.push_back(std::move(task));
      }
  }

  // An HF source to quantize holds no FP8 weights and no block scales.
  void refuse_quantized() const {
    for (const auto& t : src_.tensors())
      if (t.dtype == Dtype::F8_E4M3 || spec_->is_block_scale(t.name) ||
          spec_->stacked_expert_member(t.name, 0))
        fail(ErrorKind::kUnsupportedLayout, t.file, t.name,
             t.dtype == Dtype::F8_E4M3 ? "is already FP8: the checkpoint is quantized"
             : spec_->stacked_expert_member(t.name, 0)
                 ? "is already MXFP4: the checkpoint is quantized"
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
        return spec_->compat_quantizes(key, o_.compat);
      case QuantMode::kBlock:
        return export_writes_fp8(*spec_, o_) && spec_->is_published_fp8(key);
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
    if (published_fused_) {
      const auto k = spec_->classify(key);
      if (k.kind == TensorKind::kAttentionProj && k.projection == Projection::kQkv &&
          spec_->native_qkv_fused()) {  // canonical [Q, K, V] -> interleaved
        if (slot) fail(ErrorKind::kMalformedFile, src.file, src.name, "attention weight in a slot");
        emit_tp_interleaved_qkv(key, {&src, &src, &src});
        return;
      }
      if (k.kind == TensorKind::kAttentionProj && k.projection != Projection::kO &&
          k.projection != Projection::kQkv) {  // q, k, v: one fused qkv_proj per layer
        if (slot) fail(ErrorKind::kMalformedFile, src.file, src.name, "attention weight in a slot");
        auto& g = tp_groups_[spec_->attention_weight_name(key, Projection::kQkv)];
        g[qkv_index(k.projection)] = &src;
        return;
      }
      if (k.kind == TensorKind::kExpertProj &&
          spec_->hf_experts_mxfp4()) {  // MXFP4, one E8M0 scale per 32 inputs
        if (C % numerics::kMxBlock != 0)
          fail(ErrorKind::kConfigMismatch, src.file, src.name,
               fmt::format("expert weight of {} inputs cannot be written as MXFP4", C),
               "an input size that is a multiple of 32");
        const size_t w = add_output(key, Dtype::U8, {shape[0], shape[1] / 2});
        const size_t s = add_output(spec_->mx_scale_name(key), Dtype::U8,
                                    {shape[0], shape[1] / numerics::kMxBlock});
        EmitTask task{view, w, s, QuantMode::kBlock, 0, 1, numerics::kMxBlock};
        task.format = BlockFormat::kMxfp4;
        plan_.tasks.push_back(std::move(task));
        return;
      }
    }
    if (mode_ == QuantMode::kBlock) {
      if (auto* g = fused_group(key, R)) {
        auto k = spec_->classify(key);
        const size_t p = qkv_index(k.projection);
        g->view[p] = view;
        g->out_weight[p] = add_output(key, Dtype::F8_E4M3, shape);
        g->out_scale[p] = add_output(*spec_->block_scale_name(key), Dtype::F32,
                                     {static_cast<uint64_t>(g->layout->scale_rows(k.projection)),
                                      static_cast<uint64_t>(ceil_div(C, block_.cols))});
        return;
      }
    }
    // Automodel's cast pads some scales (the published shape of a k scale).
    const int64_t scale_rows = mode_ == QuantMode::kCast ? spec_->compat_cast_scale_rows(
                                                               spec_->classify(key), R, block_.rows)
                                                         : ceil_div(R, block_.rows);
    const auto scale_name = spec_->block_scale_name(key);
    if (!scale_name)
      fail(ErrorKind::kMalformedFile, src.file, key, "cannot hold a block scale", "a weight name");
    const size_t w = add_output(key, Dtype::F8_E4M3, shape);
    const size_t s = add_output(
        *scale_name, Dtype::F32,
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
    if (published_fused_) return nullptr;
    auto k = spec_->classify(key);
    auto layout = spec_->shared_qkv_scales_to_write(k, block_.rows);
    if (!layout) return nullptr;
    if (rows != layout->rows(k.projection))
      fail(ErrorKind::kConfigMismatch, "", key,
           fmt::format("has {} rows but this layer's attention config gives {}", rows,
                       layout->rows(k.projection)));
    auto& g = fused_[spec_->attention_prefix(key)];
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

  // q, k, v of one layer -> the fused `name` [tp * (q + k + v), H]: shard t holds rows
  // [Q_t, K_t, V_t], FP8 with its own block grid ([tp * ceil(rows per shard / B), ceil(H / B)]
  // scales).
  void emit_tp_interleaved_qkv(const std::string& name,
                               const std::array<const SourceTensor*, 3>& qkv) {
    for (size_t p = 0; p < 3; ++p)
      if (!qkv[p])
        fail(ErrorKind::kConfigMismatch, "", name,
             "the fused projection needs " + spec_->attention_weight_name(name, kQkv[p]) +
                 ", which is missing or excluded",
             "the q, k and v projections of every layer");
    if (excluded(name)) return;
    const auto key = spec_->classify(name);
    const auto& dims = spec_->attention_dims(key);
    const auto layout = spec_->qkv_interleave(dims, tp_, true, qkv[0]->file, name);
    const bool native_fused = spec_->native_qkv_fused();
    const int64_t H = c_.hidden_size, rps = layout.rows_per_shard();
    // Where shard t's rows of projection p start in their source: the split projection's rows
    // t * n, or (one canonical [Q, K, V] tensor) the projection's offset plus t * n.
    std::array<int64_t, 3> offset{0, 0, 0};
    auto check = [&](const SourceTensor& t, int64_t rows) {
      if (t.shape != std::vector<uint64_t>{static_cast<uint64_t>(rows), static_cast<uint64_t>(H)})
        fail(ErrorKind::kConfigMismatch, t.file, t.name,
             "shape " + format_shape(t.shape) + " disagrees with config.json");
    };
    if (native_fused) {
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
        *spec_->block_scale_name(name), Dtype::F32,
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
    const int64_t E = c_.n_routed_experts;
    const ExpertGrouping grouping = spec_->expert_grouping(key.projection);
    // [n, in, width]: the parts' HF [out, in] shapes side by side; the last part takes what the
    // others leave (Automodel splits at the first parts' widths).
    const auto slot = spec_->grouped_slot_shape(grouping);
    const auto in = static_cast<int64_t>(slot.first), width = static_cast<int64_t>(slot.second);
    const bool split = grouping.parts.size() > 1;
    const int64_t last_width =
        grouping.parts.empty()
            ? 0
            : static_cast<int64_t>(spec_->expert_hf_shape(grouping.parts.back())[0]);
    // Every rank's copy of this tensor, with its global expert ids.
    std::map<int64_t, std::pair<const SourceTensor*, int64_t>> by_expert;  // id -> (tensor, slot)
    if (!compat_ && !spec_->layer_has_routed_experts(key))
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
      if (part.shape.size() != 3 || (!compat_ && (part.shape[1] != static_cast<uint64_t>(in) ||
                                                  part.shape[2] != static_cast<uint64_t>(width)))) {
        if (compat_ && !split) {  // Automodel passes such a tensor (down_projs) through unchanged
          emit(t.name, MatrixView{&t}, t);
          return;
        }
        fail(ErrorKind::kConfigMismatch, part.file, part.name,
             "grouped expert tensor of shape " + format_shape(part.shape) +
                 " disagrees with config.json",
             fmt::format("[n, {}, {}]", in, width));
      }
      if (compat_ && !split && part.shape[1] != static_cast<uint64_t>(in)) {
        emit(t.name, MatrixView{&t}, t);
        return;
      }
      if (split && static_cast<int64_t>(part.shape[2]) < width - last_width)
        fail(ErrorKind::kConfigMismatch, part.file, part.name,
             fmt::format("grouped expert tensor {} wide is narrower than its first parts ({})",
                         part.shape[2], width - last_width));
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
    const std::string prefix = o_.prefix ? *o_.prefix
                               : compat_ ? spec_->compat_expert_prefix()
                                         : key.prefix;
    for (const auto& [id, where] : by_expert) {
      const auto& [src, slot] = where;
      const size_t first = plan_.tasks.size();
      int64_t col = 0;
      for (size_t i = 0; i < grouping.parts.size(); ++i) {
        const Projection p = grouping.parts[i];
        const bool last = i + 1 == grouping.parts.size();
        const int64_t cols = last ? static_cast<int64_t>(src->shape[2]) - col
                                  : static_cast<int64_t>(spec_->expert_hf_shape(p)[0]);
        emit(spec_->expert_weight_name(prefix, *key.layer, id, p), MatrixView{src, slot, col, cols},
             *src);
        col += cols;
      }
      if (split && plan_.tasks.size() - first == grouping.parts.size()) {
        SlotGroupTask group;  // every part kept: one task reads the slot once
        for (size_t i = first; i < plan_.tasks.size(); ++i)
          group.parts.push_back(std::get<EmitTask>(plan_.tasks[i]));
        plan_.tasks.resize(first);
        plan_.tasks.push_back(std::move(group));
      }
    }
  }

  const TensorSource& src_;
  std::unique_ptr<const ModelSpec> spec_;
  const ModelConfig& c_;
  const ToHfOptions& o_;
  const std::vector<int64_t>& starts_;
  const bool compat_;
  QuantMode mode_;
  BlockSize block_;
  std::optional<KeyPattern> exclude_;
  std::map<std::string, std::string> origins_;  // output name -> the source it comes from
  std::string origin_, origin_file_;            // the source being emitted
  std::map<std::string, FusedGroup> fused_;
  bool published_fused_ = false;  // writing the fused-QKV (and MXFP4) layout
  int64_t tp_ = 1;
  std::map<std::string, std::array<const SourceTensor*, 3>> tp_groups_;  // per fused name
  Plan plan_;
};

}  // namespace

Plan plan_to_hf(const TensorSource& native, const ModelConfig& config, const ToHfOptions& options,
                const std::vector<int64_t>& expert_start) {
  if (expert_start.size() != native.parts())
    fail(ErrorKind::kInvalidArgument, "", "", "one expert start per input folder is needed");
  return ToHfPlanner(native, config, options, expert_start).plan();
}

}  // namespace moeckpt
