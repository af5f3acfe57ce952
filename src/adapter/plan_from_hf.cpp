// HF -> native: dequantize every weight that has a `_scale_inv`, drop scales, group the rank's
// experts into transposed gate_and_up_projs / down_projs slots.
#include <fmt/format.h>

#include <array>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <set>

#include "adapter/scale_ref.hpp"
#include "adapter/stacked_member_source.hpp"
#include "adapter/validate.hpp"
#include "exec/numeric_refusals.hpp"
#include "exec/transforms.hpp"
#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/model_spec.hpp"
#include "moeckpt/mxfp4.hpp"
#include "moeckpt/numerics.hpp"
#include "moeckpt/safetensors.hpp"

namespace moeckpt {
namespace {

class FromHfPlanner {
 public:
  FromHfPlanner(const TensorSource& src, const ModelConfig& c, const FromHfOptions& o)
      : src_(src), spec_(model_spec_for(c)), c_(c), o_(o), compat_(is_automodel(o.compat)) {
    if (o.dtype != Dtype::BF16 && o.dtype != Dtype::F32)
      fail(ErrorKind::kInvalidArgument, "", "", "output dtype must be bf16 or f32");
    require_reproduced(*spec_, o.compat);
    block_ = c.block.value_or(BlockSize{});
    range_ = ExpertRange::for_rank(c.n_routed_experts, o.ep_size, o.ep_rank);
    if (spec_->hf_qkv_fused()) {
      if (!o.group_experts)
        fail(ErrorKind::kUnsupportedLayout, "", "",
             fmt::format("a fused-QKV ({}) checkpoint cannot be dequantized in place: its config "
                         "describes the fused projection, the conversion splits it",
                         spec_->layout_name()),
             "from-hf to the native layout");
      const std::string index =
          src.tensors().empty()
              ? std::string(kIndexFileName)
              : (std::filesystem::path(src.tensors().front().file).parent_path() / kIndexFileName)
                    .string();
      tp_ = spec_->checkpoint_tp(src.index_metadata(0), index);
    }
    nan_ = compat_ ? NanPolicy::kTorchCompat : NanPolicy::kRefuse;
  }

  Plan plan() {
    refuse_native_layout(src_, *spec_);
    if (compat_) refuse_fp8_input_in_compat();
    if (!o_.group_experts && (o_.ep_size != 1 || o_.ep_rank != 0))
      fail(ErrorKind::kInvalidArgument, "", "", "an expert-parallel rank needs grouped experts",
           "EP size 1 when experts stay per expert");
    collect_experts();
    validate_experts();
    if (!compat_) {  // Automodel converts whatever it is given; the default mode validates
      check_shapes_against_config(src_, *spec_);
      if (o_.whole_checkpoint)  // an EP rank needs only its own experts in the folder
        check_layers_complete(src_, *spec_, false,
                              range_.count > 0 ? std::optional(range_.first) : std::nullopt);
    }
    std::set<std::pair<std::string, int64_t>> emitted;
    for (const auto& t : src_.tensors()) {
      if (spec_->is_block_scale(t.name)) continue;  // dropped, orphans included
      auto key = spec_->classify(t.name);
      if (key.is_mx_scale) continue;  // read with its weight (collect_experts checks orphans)
      if (spec_->hf_qkv_fused() && key.kind == TensorKind::kAttentionProj &&
          key.projection == Projection::kQkv) {
        emit_fused_qkv(t, key);
        continue;
      }
      if (key.kind == TensorKind::kExpertBias) {
        emit_expert_bias(t);
        continue;
      }
      if (key.kind == TensorKind::kStackedExperts) {
        emit_stacked_rows(t, key);
        continue;
      }
      // Stacked experts stay stacked when dequantized in place (the HF BF16 layout is the
      // grouped one under its HF name).
      if (spec_->is_grouped_expert(key) && (o_.group_experts || spec_->hf_experts_stacked())) {
        auto id = std::make_pair(key.prefix, *key.layer);
        if (emitted.insert(id).second) emit_group(id);
        continue;
      }
      emit_single(t, key);
    }
    if (!o_.group_experts)
      plan_.metadata = {{"format", "pt"}};
    else
      plan_.metadata = {{"format", "pt"},
                        {kMetaLayout, "native"},
                        {kMetaEpSize, std::to_string(o_.ep_size)},
                        {kMetaEpRank, std::to_string(o_.ep_rank)},
                        {kMetaExpertStart, std::to_string(range_.first)},
                        {kMetaExpertCount, std::to_string(range_.count)}};
    if (spec_->hf_qkv_fused() && !spec_->fixed_checkpoint_tp() && o_.group_experts)
      plan_.metadata[kMetaCheckpointTp] = std::to_string(tp_);
    // Scales are small: refusing a bad one now means no output is ever started for it.
    if (!compat_ && o_.prescan_scales)
      for (const auto& in : mx_used_) check_mx_scales(in);
    if (!compat_ && o_.prescan_scales)
      for (const auto& [s, used] : scales_used_)
        for (const auto& big :
             check_scale_values(src_, *s, used.first, used.second, largest_safe_scale()))
          check_large_scale(*s, big);
    return std::move(plan_);
  }

 private:
  using ExpertParts = std::map<Projection, const SourceTensor*>;

  // An Automodel adapter with no FP8 path would keep the codes and drop their scales.
  void refuse_fp8_input_in_compat() const {
    const auto why = spec_->compat_fp8_input_refusal();
    if (!why) return;
    for (const auto& t : src_.tensors())
      if (t.dtype == Dtype::F8_E4M3 || spec_->is_block_scale(t.name))
        fail(ErrorKind::kUnsupportedLayout, t.file, t.name,
             fmt::format("is {} in a {} checkpoint, which the Automodel compat mode cannot "
                         "reproduce: {}",
                         spec_->is_block_scale(t.name) ? "a block scale" : "FP8",
                         spec_->layout_name(), *why),
             "a BF16 checkpoint, or the default mode (it dequantizes FP8 with its scales)");
  }

  // The block-scale companion of a weight, when the source holds one.
  const SourceTensor* block_scale_of(const std::string& weight) const {
    auto name = spec_->block_scale_name(weight);
    return name ? src_.find(*name) : nullptr;
  }

  void collect_experts() {
    for (const auto& t : src_.tensors()) {
      auto key = spec_->classify(t.name);
      if (key.is_mx_scale && !src_.find(key.weight_name))
        fail(ErrorKind::kMalformedFile, t.file, t.name,
             "MXFP4 expert scale without its weight " + key.weight_name,
             "each weight_scale beside its packed weight");
      if (!spec_->is_grouped_expert(key)) continue;
      auto id = std::make_pair(key.prefix, *key.layer);
      if (!compat_ && !key.is_scale) {
        check_layer_index(t, key, *spec_);  // a layer past the config's, before "dense layer"
        if (!spec_->layer_has_routed_experts(key))
          fail(ErrorKind::kConfigMismatch, t.file, t.name,
               fmt::format("expert weight in layer {}, which config.json makes a dense layer "
                           "(moe_layer_freq / num_hidden_layers)",
                           *key.layer),
               "expert weights only in MoE layers");
        if (*key.expert >= c_.n_routed_experts)
          fail(ErrorKind::kConfigMismatch, t.file, t.name,
               fmt::format("expert id {} is not below n_routed_experts = {} of config.json",
                           *key.expert, c_.n_routed_experts),
               "as many experts as config.json says");
      }
      auto& layer = layers_[id];  // any expert key, scales included, marks an expert layer
      if (key.is_scale || *key.expert >= c_.n_routed_experts) continue;  // ids >= E ignored
      layer[*key.expert][key.projection] = &t;
    }
  }

  void validate_experts() {
    for (const auto& [id, experts] : layers_) {
      std::vector<std::string> missing;
      int64_t n_missing = 0;
      // A rank needs (and reads) only its own experts.
      const int64_t e0 = range_.first;
      const int64_t e1 = range_.first + range_.count;
      for (int64_t e = e0; e < e1; ++e) {
        auto it = experts.find(e);
        for (const auto& g : spec_->expert_groupings())
          for (Projection proj : g.parts)
            if (it == experts.end() || !it->second.contains(proj)) {
              ++n_missing;
              if (missing.size() < 5)
                missing.push_back(spec_->expert_weight_name(id.first, id.second, e, proj));
            }
      }
      if (n_missing)
        fail(ErrorKind::kConfigMismatch, src_.tensors().empty() ? "" : src_.tensors().front().file,
             "",
             fmt::format("{} expert weights of layer {} are missing for experts [{}, {}) "
                         "(n_routed_experts = {}, EP rank {}/{}): {}{}",
                         n_missing, id.second, e0, e1, c_.n_routed_experts, o_.ep_rank, o_.ep_size,
                         fmt::join(missing, ", "), n_missing > 5 ? ", ..." : ""),
             "every projection of every expert config.json declares");
    }
  }

  size_t add_output(std::string name, Dtype dt, std::vector<uint64_t> shape) {
    plan_.outputs.push_back({std::move(name), dt, std::move(shape)});
    return plan_.outputs.size() - 1;
  }

  // Scales up to this keep every product with an FP8 code (|x| <= 448) finite in the output dtype.
  float largest_safe_scale() const {
    const float max_out = o_.dtype == Dtype::F32 ? std::numeric_limits<float>::max()
                                                 : numerics::bf16_to_f32(0x7F7F);  // BF16 max
    return max_out / 448.0f;
  }

  // A scale entry above largest_safe_scale(): its block's largest code decides whether a
  // dequantized value overflows (exactly, for a plain grid; a fused layout's entry serves rows of
  // several projections, and is refused as soon as 448 x scale would overflow).
  void check_large_scale(const SourceTensor& s, const LargeScale& big) const {
    float largest = 448.0f;
    auto owner = plain_owner_.find(&s);
    if (owner != plain_owner_.end()) {
      const SourceTensor& w = *owner->second;
      if (w.dtype != Dtype::F8_E4M3) return;  // unquantized weights are refused elsewhere if bad
      const int64_t R = static_cast<int64_t>(w.shape[0]), C = static_cast<int64_t>(w.shape[1]);
      const int64_t r0 = big.row * block_.rows, r1 = std::min(R, r0 + block_.rows);
      const int64_t c0 = big.col * block_.cols, c1 = std::min(C, c0 + block_.cols);
      largest = 0.0f;
      std::vector<uint8_t> row(static_cast<size_t>(c1 - c0));
      for (int64_t r = r0; r < r1; ++r) {
        src_.read(w, static_cast<uint64_t>(r * C + c0), row);
        for (uint8_t b : row)
          if ((b & 0x7F) != 0x7F)
            largest = std::max(largest, std::fabs(numerics::fp8_e4m3fn_to_f32(b)));
      }
    }
    const float product = largest * big.value;  // the dequantization's one float32 multiply
    const bool finite = o_.dtype == Dtype::F32
                            ? std::isfinite(product)
                            : (numerics::f32_to_bf16_rne(product) & 0x7F80) != 0x7F80;
    if (!finite)
      fail(ErrorKind::kNumeric, s.file, s.name,
           fmt::format("scale entry [{}, {}] is {}: times the block's largest FP8 magnitude {} it "
                       "is {}, not finite in {}",
                       big.row, big.col, big.value, largest, product, dtype_name(o_.dtype)),
           "scales whose dequantized weights are finite");
  }

  DequantInput dequant_input(const SourceTensor& w, const TensorKey& key) {
    DequantInput in;
    in.weight = &w;
    in.nan = nan_;
    if (const auto* s = block_scale_of(w.name)) {
      if (w.dtype != Dtype::F8_E4M3 && w.dtype != Dtype::BF16 && w.dtype != Dtype::F16 &&
          w.dtype != Dtype::F32)
        fail(ErrorKind::kMalformedFile, w.file, w.name,
             "weight of dtype " + std::string(dtype_name(w.dtype)) + " has a block scale",
             "an F8_E4M3 (or BF16, F16, F32) weight");
      in.scale = resolve_scale_ref(src_, w, *s, key, *spec_, {block_, !compat_, !compat_});
      in.scale->check_products = !compat_ && !o_.prescan_scales;  // the tasks check instead
      const int64_t cols = ceil_div(static_cast<int64_t>(w.shape[1]), in.scale->block_cols);
      auto use = [&](const SourceTensor* st, int64_t rows) {
        auto& u = scales_used_[st];
        u = {std::max(u.first, rows), std::max(u.second, cols)};
      };
      for (size_t i = 0; i < in.scale->tensors.size(); ++i)
        if (in.scale->tensors[i]) use(in.scale->tensors[i], in.scale->used_rows.at(i));
      if (const auto* g = in.scale->grid()) plain_owner_[g] = &w;
    }
    return in;
  }

  void emit_single(const SourceTensor& t, const TensorKey& key) {
    const auto* scale = block_scale_of(t.name);
    // Natively, under the family's own name (dequantize keeps the HF names).
    const std::string out_name =
        o_.group_experts ? spec_->native_name_of(t.name).value_or(t.name) : t.name;
    if (spec_->is_grouped_expert(key)) {  // kept per expert: the shape check of emit_group
      const auto want = spec_->expert_hf_shape(key.projection);
      if (*key.expert < c_.n_routed_experts && t.shape != stored_expert_shape(t, want))
        fail(ErrorKind::kConfigMismatch, t.file, t.name,
             "expert weight of shape " + format_shape(t.shape) + " disagrees with config.json",
             format_shape(want) + " from hidden_size and moe_intermediate_size");
    }
    if (t.dtype == Dtype::U8 && key.kind == TensorKind::kExpertProj) {  // MXFP4, whole
      auto in = mx_input(t);
      const size_t out = add_output(t.name, o_.dtype, {t.shape[0], 2 * t.shape[1]});
      plan_.tasks.push_back(DequantTask{in, out, o_.dtype});
      return;
    }
    if (auto nb = spec_->native_backend_name(t.name, o_.attn_backend)) {
      const auto dt = nb->f32 ? std::optional<Dtype>(Dtype::F32) : std::nullopt;
      plan_.tasks.push_back(CopyTask{&t, add_output(nb->name, dt.value_or(t.dtype), t.shape),
                                     std::min(o_.task_bytes / 2, kCopyChunkBytes), dt});
      return;
    }
    if (!scale) {
      if (t.dtype == Dtype::F8_E4M3 && !compat_)
        fail(ErrorKind::kMalformedFile, t.file, t.name,
             "FP8 weight without a '_scale_inv' companion",
             "every FP8 weight to have its block scales (the Automodel compat mode passes it "
             "through)");
      plan_.tasks.push_back(CopyTask{&t, add_output(out_name, t.dtype, t.shape),
                                     std::min(o_.task_bytes / 2, kCopyChunkBytes), std::nullopt});
      return;
    }
    auto in = dequant_input(t, key);
    const size_t out = add_output(out_name, o_.dtype, t.shape);
    const uint64_t row_bytes = t.shape[1] * dtype_size(o_.dtype);
    for (auto [r0, r1] : split_rows(static_cast<int64_t>(t.shape[0]), row_bytes, o_.task_bytes, 1))
      plan_.tasks.push_back(DequantTask{in, out, o_.dtype, r0, r1});
  }

  // qkv_proj [tp * (q + k + v), H] -> q_proj, k_proj, v_proj: shard t's rows of each projection go
  // to rows [t * n, (t + 1) * n) of its output; the scale grid restarts with every shard.
  void emit_fused_qkv(const SourceTensor& t, const TensorKey& key) {
    const auto& dims = spec_->attention_dims(key);
    const auto layout = spec_->qkv_interleave(dims, tp_, !compat_, t.file, t.name);
    const bool native_fused = spec_->native_qkv_fused();
    if (native_fused && !block_scale_of(t.name)) {
      // Kept fused natively: an unquantized qkv_proj is taken as it is (Automodel reorders only
      // what it dequantizes; its own BF16 export is already canonical).
      plan_.tasks.push_back(CopyTask{&t, add_output(t.name, t.dtype, t.shape),
                                     std::min(o_.task_bytes / 2, kCopyChunkBytes), std::nullopt});
      return;
    }
    const auto H = static_cast<uint64_t>(c_.hidden_size);
    const std::vector<uint64_t> want{static_cast<uint64_t>(layout.rows()), H};
    if (t.shape != want)
      fail(ErrorKind::kConfigMismatch, t.file, t.name,
           fmt::format("shape {} disagrees with config.json and the checkpoint TP degree {} "
                       "(metadata.tp_size)",
                       format_shape(t.shape), tp_),
           format_shape(want) + ": tp x (q + k + v) rows of the layer");
    DequantInput in;
    in.weight = &t;
    in.nan = nan_;
    Dtype out_dtype = o_.dtype;
    if (const auto* s = block_scale_of(t.name)) {
      const int64_t srps = ceil_div(layout.rows_per_shard(), block_.rows);
      const std::vector<uint64_t> swant{
          static_cast<uint64_t>(tp_ * srps),
          static_cast<uint64_t>(ceil_div(c_.hidden_size, block_.cols))};
      if (s->shape != swant ||
          (s->dtype != Dtype::F32 && s->dtype != Dtype::BF16 && s->dtype != Dtype::F16))
        fail(ErrorKind::kConfigMismatch, s->file, s->name,
             fmt::format("scale {} {} does not fit {} TP shards of {} rows", dtype_name(s->dtype),
                         format_shape(s->shape), tp_, layout.rows_per_shard()),
             "F32 " + format_shape(swant) + ": one block grid per TP shard");
      ScaleRef r;
      r.tensors = {s};
      r.used_rows = {tp_ * srps};
      r.block_rows = block_.rows;
      r.block_cols = block_.cols;
      r.period_rows = layout.rows_per_shard();
      r.period_scale_rows = srps;
      r.check_values = !compat_;
      in.scale = r;
      auto& u = scales_used_[s];
      u = {static_cast<int64_t>(swant[0]), static_cast<int64_t>(swant[1])};
    } else if (t.dtype == Dtype::F8_E4M3) {
      fail(ErrorKind::kMalformedFile, t.file, t.name, "FP8 weight without a '_scale_inv' companion",
           "every FP8 weight to have its block scales");
    } else if (t.dtype == Dtype::BF16 || t.dtype == Dtype::F32) {
      out_dtype = t.dtype;  // unquantized shards are split as they are
    } else {
      fail(ErrorKind::kMalformedFile, t.file, t.name,
           "fused QKV weight of dtype " + std::string(dtype_name(t.dtype)), "F8_E4M3, BF16 or F32");
    }
    static constexpr std::array<Projection, 3> kParts{Projection::kQ, Projection::kK,
                                                      Projection::kV};
    // Split natively: q, k, v; kept fused: one qkv_proj in canonical [Q, K, V] order.
    const size_t fused = native_fused ? add_output(t.name, out_dtype, t.shape) : 0;
    int64_t canonical = 0;  // first row of projection p in the canonical order
    for (int p = 0; p < 3; ++p) {
      const int64_t n = layout.shard_rows(p);
      const size_t out = native_fused ? fused
                                      : add_output(spec_->attention_weight_name(t.name, kParts[p]),
                                                   out_dtype, {static_cast<uint64_t>(tp_ * n), H});
      const int64_t out_first = native_fused ? canonical : 0;
      for (int64_t sh = 0; sh < tp_; ++sh) {
        const int64_t first = layout.first_row(sh, p);
        for (auto [r0, r1] : split_rows(n, H * dtype_size(out_dtype), o_.task_bytes, 1)) {
          DequantTask task{in, out, out_dtype, first + r0, first + r1};
          task.out_row0 = out_first + sh * n + r0;
          plan_.tasks.push_back(std::move(task));
        }
      }
      canonical += tp_ * n;
    }
  }

  // A layer's rank experts into grouped tensors: each grouping's parts ([out, in] per expert)
  // transposed into one slot per expert, side by side along the last axis.
  void emit_group(const std::pair<std::string, int64_t>& id) {
    if (range_.count == 0) return;
    const auto n = static_cast<uint64_t>(range_.count);
    const auto groupings = spec_->expert_groupings();
    std::vector<size_t> outs;
    std::vector<int64_t> ins, widths;
    for (const auto& g : groupings) {
      const auto [in, width] = spec_->grouped_slot_shape(g);
      const auto name = spec_->grouped_experts_name(id.first, id.second, g.grouped);
      outs.push_back(add_output(o_.group_experts ? name : spec_->hf_name_of(name).value_or(name),
                                o_.dtype, {n, in, width}));
      ins.push_back(static_cast<int64_t>(in));
      widths.push_back(static_cast<int64_t>(width));
    }
    const auto& experts = layers_.at(id);
    for (int64_t slot = 0; slot < range_.count; ++slot) {
      const ExpertParts& parts = experts.at(range_.first + slot);
      for (const auto& g : groupings)
        for (Projection p : g.parts) {
          const SourceTensor* w = parts.at(p);
          const auto want = spec_->expert_hf_shape(p);
          if (w->shape != stored_expert_shape(*w, want))
            fail(ErrorKind::kConfigMismatch, w->file, w->name,
                 "expert weight of shape " + format_shape(w->shape) + " disagrees with config.json",
                 format_shape(want) + " from hidden_size and moe_intermediate_size");
        }
      for (size_t gi = 0; gi < groupings.size(); ++gi) {
        ExpertSlotTask task{outs[gi], slot, ins[gi], widths[gi], {}, o_.dtype};
        int64_t col = 0;
        for (Projection p : groupings[gi].parts) {
          task.parts.push_back({expert_input(*parts.at(p)), col});
          col += static_cast<int64_t>(spec_->expert_hf_shape(p)[0]);
        }
        plan_.tasks.push_back(std::move(task));
      }
    }
  }

  // A stacked layout's expert biases [E, out]: the rank's rows, under the same name.
  void emit_expert_bias(const SourceTensor& t) {
    const auto key = spec_->classify(t.name);
    const uint64_t out = spec_->expert_hf_shape(
        key.projection == Projection::kDown ? Projection::kDown : Projection::kGateAndUp)[0];
    emit_rank_rows(t, {out}, "expert bias", "n_routed_experts x the projection's rows", t.name,
                   t.dtype);
  }

  // A stacked layout's unquantized experts ([E, in, out], the grouped layout under HF names):
  // the rank's rows under the native name (in place when dequantizing), in the output dtype
  // (Automodel renames them as they are).
  void emit_stacked_rows(const SourceTensor& t, const TensorKey& key) {
    const auto [in, width] = spec_->grouped_slot_shape(spec_->expert_grouping(key.projection));
    emit_rank_rows(t, {in, width}, "stacked expert tensor", "n_routed_experts x in x out",
                   o_.group_experts ? spec_->native_name_of(t.name).value_or(t.name) : t.name,
                   compat_ ? t.dtype : o_.dtype);
  }

  // An expert-axis tensor [n_routed_experts, tail...] (`what`, checked as such): the rank's rows
  // copied into output `name` as `dt`, reading only those rows.
  void emit_rank_rows(const SourceTensor& t, const std::vector<uint64_t>& tail, const char* what,
                      const char* dims, const std::string& name, Dtype dt) {
    std::vector<uint64_t> want{static_cast<uint64_t>(c_.n_routed_experts)};
    want.insert(want.end(), tail.begin(), tail.end());
    if (t.shape != want ||
        (t.dtype != Dtype::BF16 && t.dtype != Dtype::F16 && t.dtype != Dtype::F32))
      fail(ErrorKind::kConfigMismatch, t.file, t.name,
           fmt::format("{} {} {} disagrees with config.json", what, dtype_name(t.dtype),
                       format_shape(t.shape)),
           fmt::format("a float tensor {} ({})", format_shape(want), dims));
    if (range_.count == 0) return;
    uint64_t row = 1;
    for (uint64_t d : tail) row *= d;
    const auto first = static_cast<uint64_t>(range_.first);
    const auto n = static_cast<uint64_t>(range_.count);
    std::vector<uint64_t> shape{n};
    shape.insert(shape.end(), tail.begin(), tail.end());
    CopyTask task{&t, add_output(name, dt, std::move(shape)),
                  std::min(o_.task_bytes / 2, kCopyChunkBytes),
                  dt == t.dtype ? std::nullopt : std::optional<Dtype>(dt)};
    task.elem0 = first * row;
    task.elem1 = (first + n) * row;
    task.out_delta = -static_cast<int64_t>(first * row);
    plan_.tasks.push_back(std::move(task));
  }

  // The shape an expert weight of logical shape `want` is stored with: MXFP4 (U8) packs two
  // elements per byte along the input axis.
  static std::vector<uint64_t> stored_expert_shape(const SourceTensor& w,
                                                   std::vector<uint64_t> want) {
    if (w.dtype == Dtype::U8) want[1] /= 2;
    return want;
  }

  // An MXFP4 expert weight (U8 [out, in / 2]) with its E8M0 `weight_scale` [out, in / 32].
  DequantInput mx_input(const SourceTensor& w) {
    const auto scale_name = spec_->mx_scale_name(w.name);
    const auto* s = src_.find(scale_name);
    if (!s)
      fail(ErrorKind::kMalformedFile, w.file, w.name,
           scale_name.starts_with(w.name)
               ? "MXFP4 (U8) expert weight without its '" + scale_name.substr(w.name.size()) +
                     "' companion " + scale_name
               : "MXFP4 (U8) expert weight without its E8M0 scales " + scale_name,
           "packed E2M1 weights beside their E8M0 scales");
    const uint64_t in = 2 * w.shape.at(1);
    const std::vector<uint64_t> want{w.shape[0], in / numerics::kMxBlock};
    if (w.shape.size() != 2 || in % numerics::kMxBlock != 0 || s->dtype != Dtype::U8 ||
        s->shape != want)
      fail(ErrorKind::kMalformedFile, s->file, s->name,
           "MXFP4 scale " + std::string(dtype_name(s->dtype)) + " " + format_shape(s->shape) +
               " does not fit weight " + format_shape(w.shape),
           "U8 " + format_shape(want) + " (one E8M0 scale per 32 inputs; inputs a multiple of 32)");
    DequantInput d;
    d.weight = &w;
    d.mx_scale = s;
    d.nan = nan_;
    d.mx_ldexp = compat_ && spec_->compat_mxfp4_ldexp();
    mx_used_.push_back(d);
    return d;
  }

  // MXFP4 scales are small: the E8M0 NaN code, and a scale whose product with its block's largest
  // E2M1 magnitude overflows float32, are refused before any output exists (exactly: only blocks
  // with a scale of 2^126 or more are read).
  void check_mx_scales(const DequantInput& in) const {
    const SourceTensor& s = *in.mx_scale;
    const auto scales = src_.read_all(s);
    const auto blocks = static_cast<int64_t>(s.shape.at(1));
    for (size_t i = 0; i < scales.size(); ++i) {
      const int64_t r = static_cast<int64_t>(i) / blocks, b = static_cast<int64_t>(i) % blocks;
      if (scales[i] == numerics::kE8m0Nan) exec::refuse_e8m0_nan(s, r, b);
      if (scales[i] < 253) continue;  // 6 x 2^125 is finite
      std::vector<uint8_t> packed(numerics::kMxBlock / 2);
      const uint64_t row_bytes = in.weight->shape.at(1);
      src_.read(*in.weight,
                static_cast<uint64_t>(r) * row_bytes + static_cast<uint64_t>(b) * packed.size(),
                packed);
      for (size_t j = 0; j < 2 * packed.size(); ++j) {
        const auto code = static_cast<uint8_t>((j & 1) ? packed[j / 2] >> 4 : packed[j / 2] & 0xF);
        if (!std::isfinite(numerics::dequant_mxfp4(code, scales[i])))
          exec::refuse_mxfp4_overflow(*in.weight, r,
                                      b * numerics::kMxBlock + static_cast<int64_t>(j),
                                      numerics::e2m1_to_f32(code), scales[i] - 127);
      }
    }
  }

  DequantInput expert_input(const SourceTensor& w) {
    if (w.dtype == Dtype::U8) return mx_input(w);
    auto in = dequant_input(w, spec_->classify(w.name));
    if (!in.scale && w.dtype == Dtype::F8_E4M3 && !compat_)
      fail(ErrorKind::kMalformedFile, w.file, w.name,
           "FP8 expert weight without a '_scale_inv' companion",
           "every FP8 weight to have its block scales");
    return in;
  }

  const TensorSource& src_;
  std::unique_ptr<const ModelSpec> spec_;
  const ModelConfig& c_;
  const FromHfOptions& o_;
  const bool compat_;
  BlockSize block_;
  int64_t tp_ = 1;                     // checkpoint TP degree of fused QKV weights
  std::vector<DequantInput> mx_used_;  // the MXFP4 experts this plan reads
  ExpertRange range_;
  NanPolicy nan_;
  std::map<std::pair<std::string, int64_t>, std::map<int64_t, ExpertParts>> layers_;
  std::map<const SourceTensor*, std::pair<int64_t, int64_t>> scales_used_;  // -> rows, cols used
  std::map<const SourceTensor*, const SourceTensor*> plain_owner_;  // plain scale -> its weight
  Plan plan_;
};

}  // namespace

Plan plan_from_hf(const TensorSource& hf, const ModelConfig& config, const FromHfOptions& options) {
  const auto spec = model_spec_for(config);
  if (!spec->hf_experts_stacked()) return FromHfPlanner(hf, config, options).plan();
  StackedMemberSource members(hf, *spec);
  Plan plan = FromHfPlanner(members, config, options).plan();
  plan.views = members.release_views();
  return plan;
}

}  // namespace moeckpt
