// The shared Hugging Face MoE conventions as one spec (hf_moe_spec.hpp); a family contributes its
// config parser and an HfMoeLayout.
#include "model/hf_moe_spec.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>

#include "model/config_fields.hpp"
#include "model/hf_tensor_names.hpp"
#include "model/preset_size.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt {
namespace {

// What only an MTP layer holds, relative to "layers.<L>.": the first four are required, the
// embedding and output head copies are optional (some releases share the model's own).
constexpr std::array<std::string_view, 6> kHfMoeMtpOnly = {
    "enorm.weight",        "hnorm.weight",           "eh_proj.weight", "shared_head.norm.weight",
    "embed_tokens.weight", "shared_head.head.weight"};
constexpr size_t kHfMoeMtpRequired = 4;

std::optional<Projection> hf_moe_mlp_projection(std::string_view s) {
  if (s == "gate_proj") return Projection::kGate;
  if (s == "up_proj") return Projection::kUp;
  if (s == "down_proj") return Projection::kDown;
  return std::nullopt;
}

constexpr std::string_view kTeSinkName = "self_attn.attn_module.softmax_offset";

// The stacked layout's projections: gate and up fused (rows interleaved), down.
std::string_view stacked_leaf(Projection p) {
  return p == Projection::kDown ? "down_proj" : "gate_up_proj";
}
std::optional<Projection> stacked_projection(std::string_view leaf) {
  if (leaf == "gate_up_proj") return Projection::kGateAndUp;
  if (leaf == "down_proj") return Projection::kDown;
  return std::nullopt;
}

// "<proj>_blocks" or "<proj>_scales" with a member's "[E]" (plain decimal), split.
struct StackedPart {
  Projection projection;
  bool scales = false;
  std::optional<int64_t> expert;
};
std::optional<StackedPart> parse_stacked(std::string_view e) {
  std::optional<int64_t> expert;
  if (e.ends_with(']')) {
    const auto open = e.rfind('[');
    if (open == std::string_view::npos) return std::nullopt;
    auto digits = std::string(e.substr(open + 1, e.size() - open - 2)) + ".";
    std::string_view d = digits;
    expert = take_index(d);
    if (!expert || !d.empty()) return std::nullopt;
    e = e.substr(0, open);
  }
  for (std::string_view suffix : {"_blocks", "_scales"})
    if (e.ends_with(suffix))
      if (auto p = stacked_projection(e.substr(0, e.size() - suffix.size())))
        return StackedPart{*p, suffix == "_scales", expert};
  return std::nullopt;
}

// What follows "layers.<L>.mlp.experts." in the stacked layout: a member's blocks (the expert's
// weight) or scales, an expert bias, the native grouped tensors. The stacked tensors themselves
// are left kOther: planning reads their members (SourceTensor::stored).
void classify_stacked_expert(std::string_view e, TensorKey& k) {
  if (e == "gate_and_up_projs" || e == "down_projs") {
    k.kind = TensorKind::kGroupedExperts;
    k.projection = e == "down_projs" ? Projection::kDown : Projection::kGateAndUp;
    return;
  }
  if (e.ends_with("_bias")) {
    if (auto p = stacked_projection(e.substr(0, e.size() - 5))) {
      k.kind = TensorKind::kExpertBias;
      k.projection = *p;
    }
    return;
  }
  if (auto p = stacked_projection(e)) {  // the HF BF16 layout: the grouped tensor under its HF name
    k.kind = TensorKind::kStackedExperts;
    k.projection = *p;
    return;
  }
  auto part = parse_stacked(e);
  if (!part || !part->expert) return;
  k.kind = TensorKind::kExpertProj;
  k.projection = part->projection;
  k.expert = part->expert;
  if (part->scales) {
    k.is_scale = k.is_mx_scale = true;
    const auto at = k.name.rfind("_scales[");
    k.weight_name = k.name.substr(0, at) + "_blocks" + k.name.substr(at + 7);
  }
}

std::optional<Projection> hf_moe_attention_projection(std::string_view s) {
  for (Projection p : {Projection::kQ, Projection::kK, Projection::kV, Projection::kO})
    if (s == projection_name(p)) return p;
  return std::nullopt;
}

// What follows "layers.<L>." (an MTP layer's own tensors are named so at any index:
// contradicts_config refuses them in a decoder layer). The MoE block under its HF names (`l`) or
// the native ones.
void classify_hf_moe_layer_rest(std::string_view rest, TensorKey& k, const HfMoeLayout& l) {
  if (rest == l.hf_router || rest == "mlp.gate.weight") {
    k.kind = TensorKind::kRouter;
    return;
  }
  if (rest == l.hf_router_bias || rest == l.native_router_bias) {
    k.kind = TensorKind::kRouterBias;
    return;
  }
  if (l.stacked_mxfp4_experts && rest.starts_with("mlp.experts.")) {
    classify_stacked_expert(rest.substr(12), k);
    return;
  }
  if (l.attention_sinks && (rest == "self_attn.sinks" || rest == kTeSinkName)) {
    k.kind = TensorKind::kAttentionSink;
    return;
  }
  if (rest.starts_with(l.hf_experts) && rest.size() > l.hf_experts.size() &&
      rest[l.hf_experts.size()] == '.') {
    auto e = rest.substr(l.hf_experts.size() + 1);
    auto id = take_index(e);
    if (id && e.ends_with(".weight"))
      for (size_t i = 0; i < 3; ++i)
        if (e.substr(0, e.size() - 7) == l.hf_expert_leaves[i]) {
          k.kind = TensorKind::kExpertProj;
          k.projection = i == 0 ? Projection::kGate : i == 1 ? Projection::kUp : Projection::kDown;
          k.expert = *id;
          return;
        }
  }
  if (rest == "input_layernorm.weight" || rest == "post_attention_layernorm.weight" ||
      rest == "enorm.weight" || rest == "hnorm.weight" || rest == "shared_head.norm.weight") {
    k.kind = TensorKind::kNorm;
  } else if (rest == "eh_proj.weight") {
    k.kind = TensorKind::kMtpEhProj;
  } else if (rest == "embed_tokens.weight") {
    k.kind = TensorKind::kMtpEmbedding;
  } else if (rest == "shared_head.head.weight") {
    k.kind = TensorKind::kMtpHead;
  } else if (rest.starts_with("self_attn.")) {
    const auto r = rest.substr(10);
    if (r == "q_norm.weight" || r == "k_norm.weight") {  // the projection says which
      k.kind = TensorKind::kNorm;
      k.projection = r[0] == 'q' ? Projection::kQ : Projection::kK;
      return;
    }
    const auto dot = r.rfind('.');
    if (dot == std::string_view::npos) return;
    const auto leaf = r.substr(dot + 1);
    if (leaf != "weight" && leaf != "bias") return;
    if (auto p = hf_moe_attention_projection(r.substr(0, dot))) {
      k.kind = leaf == "weight" ? TensorKind::kAttentionProj : TensorKind::kAttentionBias;
      k.projection = *p;
    }
  } else if (rest.starts_with("mlp.")) {
    auto r = rest.substr(4);
    const bool shared = r.starts_with("shared_experts.");
    if (shared) r.remove_prefix(15);
    if (!shared && r.starts_with("experts.")) {
      auto e = r.substr(8);
      if (e == "gate_and_up_projs" || e == "down_projs") {
        k.kind = TensorKind::kGroupedExperts;
        k.projection = e == "down_projs" ? Projection::kDown : Projection::kGateAndUp;
      }
      return;  // per-expert weights only under their HF names (above)
    }
    if (!r.ends_with(".weight")) return;
    if (auto p = hf_moe_mlp_projection(r.substr(0, r.size() - 7))) {
      k.kind = shared ? TensorKind::kSharedExpertProj : TensorKind::kDenseMlpProj;
      k.projection = *p;
    }
  }
}

class HfMoeSpec final : public ModelSpec {
 public:
  HfMoeSpec(const ModelConfig& c, const HfMoeLayout& layout) : ModelSpec(c), layout_(layout) {}

  std::string_view layout_name() const noexcept override { return layout_.name; }

  TensorKey classify(std::string_view name) const override {
    TensorKey k;
    k.name = std::string(name);
    std::string_view w = name;
    if (w.ends_with(kBlockScaleSuffix)) {
      k.is_scale = true;
      w.remove_suffix(kBlockScaleSuffix.size());
    }
    k.weight_name = std::string(w);
    if (auto path = split_layer_path(w)) {
      k.prefix = std::string(path->prefix);
      k.layer = path->layer;
      k.mtp = is_mtp_layer(path->layer);
      classify_hf_moe_layer_rest(path->rest, k, layout_);
      return k;
    }
    classify_model_level(w, k);
    return k;
  }

  std::string expert_weight_name(std::string_view prefix, int64_t layer, int64_t expert,
                                 Projection p) const override {
    if (layout_.stacked_mxfp4_experts)
      return fmt::format("{}layers.{}.mlp.experts.{}_blocks[{}]", prefix, layer, stacked_leaf(p),
                         expert);
    const size_t i = p == Projection::kGate ? 0 : p == Projection::kUp ? 1 : 2;
    return fmt::format("{}layers.{}.{}.{}.{}.weight", prefix, layer, layout_.hf_experts, expert,
                       layout_.hf_expert_leaves[i]);
  }
  // The router (and its correction bias) natively under mlp.gate, in the HF layout wherever the
  // family keeps it; an expert's weight natively mlp.experts.E.<gate|up|down>_proj.weight (where
  // it is not grouped).
  std::optional<std::string> native_name_of(std::string_view hf) const override {
    const auto k = classify(hf);
    if (k.kind == TensorKind::kExpertProj && !k.is_scale) {
      auto native = expert_weight_name_of(k.prefix, *k.layer, *k.expert, k.projection);
      if (native != hf) return native;
      return std::nullopt;
    }
    if (layout_.stacked_mxfp4_experts)
      if (auto native =
              rename_layer_rest(hf, {{"mlp.experts.gate_up_proj", "mlp.experts.gate_and_up_projs"},
                                     {"mlp.experts.down_proj", "mlp.experts.down_projs"}}))
        return native;
    return rename_layer_rest(hf, {{layout_.hf_router, "mlp.gate.weight"},
                                  {layout_.hf_router_bias, layout_.native_router_bias}});
  }
  // Stacked: the grouped tensors are the HF BF16 layout's gate_up_proj / down_proj.
  std::optional<std::string> hf_name_of(std::string_view native) const override {
    if (layout_.stacked_mxfp4_experts)
      if (auto hf = rename_layer_rest(
              native, {{"mlp.experts.gate_and_up_projs", "mlp.experts.gate_up_proj"},
                       {"mlp.experts.down_projs", "mlp.experts.down_proj"}}))
        return hf;
    return rename_layer_rest(native, {{"mlp.gate.weight", layout_.hf_router},
                                      {layout_.native_router_bias, layout_.hf_router_bias}});
  }

  // A stacked member's scales ("<proj>_scales[E]"); the other layouts have no MXFP4 experts (the
  // name is never looked up).
  std::string mx_scale_name(std::string_view weight) const override {
    const auto at = weight.rfind("_blocks[");
    if (layout_.stacked_mxfp4_experts && at != std::string_view::npos)
      return fmt::format("{}_scales{}", weight.substr(0, at), weight.substr(at + 7));
    return std::string(weight) + "_scale";
  }
  // Attention sinks under TE (Automodel keeps their dtype).
  std::optional<BackendName> native_backend_name(std::string_view hf,
                                                 AttnBackend backend) const override {
    if (backend != AttnBackend::kTe || !layout_.attention_sinks) return std::nullopt;
    auto te = rename_layer_rest(hf, {{"self_attn.sinks", kTeSinkName}});
    if (!te) return std::nullopt;
    return BackendName{std::move(*te), false};
  }
  std::optional<std::string> hf_name_of_backend_name(std::string_view native) const override {
    if (!layout_.attention_sinks) return std::nullopt;
    return rename_layer_rest(native, {{kTeSinkName, "self_attn.sinks"}});
  }

  bool hf_experts_stacked() const noexcept override { return layout_.stacked_mxfp4_experts; }
  std::optional<std::string> stacked_expert_member(std::string_view stacked,
                                                   int64_t e) const override {
    const auto k = stacked_part(stacked);
    if (!k || k->expert) return std::nullopt;
    return fmt::format("{}[{}]", stacked, e);
  }
  std::optional<std::pair<std::string, int64_t>> stack_of_member(
      std::string_view member) const override {
    const auto k = stacked_part(member);
    if (!k || !k->expert) return std::nullopt;
    return std::make_pair(std::string(member.substr(0, member.rfind('['))), *k->expert);
  }
  // Blocks [E, out, in / 32, 16] from members [out, in / 2]; scales [E, out, in / 32].
  std::vector<uint64_t> stacked_shape(std::string_view stacked, const std::vector<uint64_t>& m,
                                      int64_t experts) const override {
    const auto n = static_cast<uint64_t>(experts);
    const auto k = stacked_part(stacked);
    if (k && !k->scales && m.size() == 2) return {n, m[0], m[1] / 16, 16};
    return ModelSpec::stacked_shape(stacked, m, experts);
  }
  std::vector<ExpertGrouping> expert_groupings() const override {
    if (!layout_.stacked_mxfp4_experts) return ModelSpec::expert_groupings();
    return {{Projection::kGateAndUp, {Projection::kGateAndUp}},
            {Projection::kDown, {Projection::kDown}}};
  }
  // Stacked: gate and up as one [2 * moe_intermediate, hidden] projection.
  std::vector<uint64_t> expert_hf_shape(Projection p) const override {
    auto shape = ModelSpec::expert_hf_shape(p);
    if (p == Projection::kGateAndUp) shape[0] *= 2;
    return shape;
  }

  std::vector<RequiredTensor> required_tensors(std::string_view prefix,
                                               const std::set<int64_t>& mtp_layers,
                                               bool native) const override {
    std::vector<RequiredTensor> out;
    auto add_layer = [&](int64_t l) {
      for (const auto& n : layer_tensors(l, native))
        out.push_back({fmt::format("{}layers.{}.{}", prefix, l, n), describe_layer(l), {}});
    };
    for (int64_t l = 0; l < config_.num_hidden_layers; ++l) add_layer(l);
    for (int64_t m : mtp_layers) add_layer(m);
    out.push_back({std::string(prefix) + "embed_tokens.weight", "the model", {}});
    out.push_back({std::string(prefix) + "norm.weight", "the model", {}});
    if (!config_.tie_word_embeddings)
      out.push_back({"lm_head.weight", "the model (tie_word_embeddings is false)", {}});
    return out;
  }

  bool is_passthrough(std::string_view) const override { return false; }
  std::vector<std::pair<std::string, std::vector<uint64_t>>> synthetic_passthrough_tensors()
      const override {
    return {};
  }

  std::optional<std::string> contradicts_config(const TensorKey& k) const override {
    if (k.is_scale || !k.layer) return std::nullopt;
    const auto path = split_layer_path(k.weight_name);
    if (!k.mtp && path &&
        std::find(kHfMoeMtpOnly.begin(), kHfMoeMtpOnly.end(), path->rest) != kHfMoeMtpOnly.end())
      return fmt::format(
          "{} is an MTP layer's tensor, but config.json makes layer {} a decoder layer ({})",
          path->rest, *k.layer, layer_counts());
    if (k.kind == TensorKind::kAttentionBias) {
      const bool o = k.projection == Projection::kO;
      if (o && !layout_.o_bias)
        return fmt::format("{} attention has no o_proj bias{}", layout_.name,
                           layout_.qkv_bias ? "" : " (attention_bias is false in config.json)");
      if (!o && !layout_.qkv_bias)
        return std::string("attention_bias is false in config.json: the projections have no bias");
    }
    if (k.kind == TensorKind::kNorm && k.projection != Projection::kNone &&
        layout_.qk_norm == QkNorm::kNone)
      return fmt::format("this {} config has no q/k norm (use_qk_norm is false in config.json)",
                         layout_.name);
    const bool moe = is_moe_layer(*k.layer);
    if (k.kind == TensorKind::kDenseMlpProj && moe)
      return fmt::format("{} is a MoE layer in config.json", describe_layer(*k.layer));
    if ((k.kind == TensorKind::kRouter || k.kind == TensorKind::kRouterBias) && !moe)
      return fmt::format("{} is a dense layer in config.json", describe_layer(*k.layer));
    if (k.kind == TensorKind::kRouterBias && !layout_.router_correction_bias)
      return fmt::format("a {} router has no e_score_correction_bias", layout_.name);
    if (k.kind == TensorKind::kSharedExpertProj && (!moe || config_.n_shared_experts == 0))
      return fmt::format("{} has no shared experts in config.json (n_shared_experts {})",
                         describe_layer(*k.layer), config_.n_shared_experts);
    return std::nullopt;
  }

  int64_t mtp_layer_id(int64_t i) const override { return config_.num_hidden_layers + i; }
  std::optional<int64_t> configured_mtp_layers() const override {
    return config_.num_nextn_predict_layers;
  }
  bool mtp_layers_have_routed_experts() const override { return true; }

  std::string describe_layer(int64_t l) const override {
    if (is_mtp_layer(l)) return fmt::format("MTP layer {}", l);
    return fmt::format("layer {} ({})", l, is_moe_layer(l) ? "MoE" : "dense");
  }

  std::optional<std::vector<uint64_t>> expected_hf_shape(const TensorKey& k) const override {
    using Shape = std::vector<uint64_t>;
    auto u = [](int64_t v) { return static_cast<uint64_t>(v); };
    const auto& c = config_;
    if (k.layer && !k.mtp && *k.layer >= c.num_hidden_layers) return std::nullopt;
    const uint64_t D = u(c.hidden_size), V = u(c.vocab_size);
    const auto& a = c.full;
    const uint64_t q = u(a.q_rows()), kv = u(a.k_rows());
    const uint64_t shared = u(c.n_shared_experts * c.moe_intermediate_size);
    const auto rows = [&](Projection p) {
      return p == Projection::kQ ? q : p == Projection::kO ? D : kv;
    };
    switch (k.kind) {
      case TensorKind::kEmbedding:
      case TensorKind::kLmHead:
      case TensorKind::kMtpEmbedding:
      case TensorKind::kMtpHead:
        return Shape{V, D};
      case TensorKind::kFinalNorm:
        return Shape{D};
      case TensorKind::kNorm:
        if (k.projection == Projection::kNone) return Shape{D};
        if (layout_.qk_norm == QkNorm::kFullWidth) return Shape{rows(k.projection)};
        return Shape{u(a.head_dim)};
      case TensorKind::kAttentionProj:
        if (k.projection == Projection::kO) return Shape{D, q};
        return Shape{rows(k.projection), D};
      case TensorKind::kAttentionBias:
        return Shape{rows(k.projection)};
      case TensorKind::kAttentionSink:
        return Shape{u(a.num_heads)};
      case TensorKind::kDenseMlpProj:
        if (k.projection == Projection::kDown) return Shape{D, u(c.intermediate_size)};
        return Shape{u(c.intermediate_size), D};
      case TensorKind::kSharedExpertProj:
        if (k.projection == Projection::kDown) return Shape{D, shared};
        return Shape{shared, D};
      case TensorKind::kRouter:
        return Shape{u(c.n_routed_experts), D};
      case TensorKind::kRouterBias:
        return Shape{u(c.n_routed_experts)};
      case TensorKind::kExpertProj:
        return expert_hf_shape(k.projection);
      case TensorKind::kMtpEhProj:
        return Shape{D, 2 * D};
      default:
        return std::nullopt;
    }
  }
  const AttentionDims& attention_dims(const TensorKey&) const override { return config_.full; }

  // The FP8 releases quantize every linear layer of attention and MLP (routed and shared experts
  // too), 128x128 blocks; embeddings, lm_head, norms, biases and the router stay BF16.
  bool is_published_fp8(std::string_view name) const override {
    const auto k = classify(name);
    if (k.is_scale || layout_.stacked_mxfp4_experts) return false;  // MXFP4 experts: not FP8
    return k.kind == TensorKind::kAttentionProj || k.kind == TensorKind::kDenseMlpProj ||
           k.kind == TensorKind::kSharedExpertProj || k.kind == TensorKind::kExpertProj;
  }
  bool is_published_f32(const TensorKey& key) const override {
    return (key.kind == TensorKind::kRouterBias && layout_.router_bias_f32) ||
           (layout_.router_f32 && key.kind == TensorKind::kRouter);
  }
  bool publishes_fp8() const override { return config_.block.has_value(); }
  bool compat_mxfp4_ldexp() const override { return layout_.compat_mxfp4_ldexp; }
  bool compat_casts() const override { return !layout_.compat_cast_excluded.empty(); }
  std::optional<std::string> compat_fp8_input_refusal() const override {
    if (layout_.compat_fp8_refusal.empty()) return std::nullopt;
    return std::string(layout_.compat_fp8_refusal);
  }
  // The goldens are Automodel 0.7.0's.
  bool reproduces(Compat version) const override { return version != Compat::kAutomodel06; }
  // Automodel's should_quantize_key: a substring test on the HF name.
  bool compat_quantizes(std::string_view key, Compat) const override {
    if (!compat_casts() || !key.ends_with(".weight") || key.find(".lora_") != key.npos)
      return false;
    for (auto s : layout_.compat_cast_excluded)
      if (key.find(s) != std::string_view::npos) return false;
    return true;
  }
  int64_t compat_cast_scale_rows(const TensorKey&, int64_t rows,
                                 int64_t block_rows) const override {
    return (rows + block_rows - 1) / block_rows;
  }

  bool hf_qkv_fused() const noexcept override { return false; }
  bool native_qkv_fused() const noexcept override { return false; }
  bool hf_experts_mxfp4() const noexcept override { return layout_.stacked_mxfp4_experts; }
  std::optional<int64_t> fixed_checkpoint_tp() const override { return std::nullopt; }
  TpInterleavedQkv qkv_interleave(const AttentionDims&, int64_t, bool, const std::string& file,
                                  const std::string& tensor) const override {
    fail(ErrorKind::kUnsupportedLayout, file, tensor,
         fmt::format("a fused qkv projection in a {} checkpoint", layout_.name),
         "q_proj, k_proj and v_proj");
  }
  std::optional<FusedQkvLayout> detect_shared_qkv_scales(
      const TensorKey&, int64_t, int64_t, const std::array<int64_t, 3>&) const override {
    return std::nullopt;
  }
  std::optional<FusedQkvLayout> shared_qkv_scales_to_write(const TensorKey&,
                                                           int64_t) const override {
    return std::nullopt;
  }
  std::optional<std::string> compat_quantized_export_refusal() const override {
    if (layout_.compat_quantized_export_refusal.empty()) return std::nullopt;
    return std::string(layout_.compat_quantized_export_refusal);
  }
  // An export with MXFP4 experts keeps (or states) the MXFP4 quantization_config.
  void rewrite_export_config(nlohmann::json& c, bool quantized) const override {
    if (!layout_.stacked_mxfp4_experts || !quantized) return;
    const auto q = config_.raw.find("quantization_config");
    c["quantization_config"] =
        q != config_.raw.end() && q->is_object()
            ? *q
            : nlohmann::json{{"quant_method", "mxfp4"},
                             {"modules_to_not_convert",
                              {"model.layers.*.self_attn", "model.layers.*.mlp.router",
                               "model.embed_tokens", "lm_head"}}};
  }

 private:
  static std::optional<std::string> rename_layer_rest(
      std::string_view name,
      std::initializer_list<std::pair<std::string_view, std::string_view>> renames) {
    const auto path = split_layer_path(name);
    if (!path) return std::nullopt;
    for (const auto& [from, to] : renames)
      if (path->rest == from && from != to)
        return fmt::format("{}layers.{}.{}", path->prefix, path->layer, to);
    return std::nullopt;
  }

  std::optional<StackedPart> stacked_part(std::string_view name) const {
    if (!layout_.stacked_mxfp4_experts) return std::nullopt;
    const auto path = split_layer_path(name);
    if (!path || !path->rest.starts_with("mlp.experts.")) return std::nullopt;
    return parse_stacked(path->rest.substr(12));
  }

  bool is_mtp_layer(int64_t l) const {
    return l >= config_.num_hidden_layers &&
           l < config_.num_hidden_layers + config_.num_nextn_predict_layers;
  }
  bool is_moe_layer(int64_t l) const {
    return is_mtp_layer(l) || (l >= 0 && l < config_.num_hidden_layers &&
                               config_.layer_is_moe[static_cast<size_t>(l)]);
  }

  // A decoder (or MTP) layer's tensors besides routed experts, relative to "layers.<l>.";
  // natively, its grouped experts.
  std::vector<std::string> layer_tensors(int64_t l, bool native) const {
    std::vector<std::string> out{"input_layernorm.weight", "post_attention_layernorm.weight"};
    for (Projection p : {Projection::kQ, Projection::kK, Projection::kV, Projection::kO}) {
      const auto proj = std::string("self_attn.") + std::string(projection_name(p));
      out.push_back(proj + ".weight");
      if (p == Projection::kO ? layout_.o_bias : layout_.qkv_bias) out.push_back(proj + ".bias");
    }
    if (layout_.attention_sinks) out.push_back("self_attn.sinks");
    if (layout_.qk_norm != QkNorm::kNone) {
      out.push_back("self_attn.q_norm.weight");
      out.push_back("self_attn.k_norm.weight");
    }
    if (is_moe_layer(l)) {
      out.emplace_back(native ? "mlp.gate.weight" : layout_.hf_router);
      if (layout_.router_correction_bias)
        out.emplace_back(native ? layout_.native_router_bias : layout_.hf_router_bias);
      if (layout_.stacked_mxfp4_experts) {
        out.push_back("mlp.experts.gate_up_proj_bias");
        out.push_back("mlp.experts.down_proj_bias");
      }
      if (config_.n_shared_experts > 0)
        for (const char* p : {"gate_proj", "up_proj", "down_proj"})
          out.push_back(std::string("mlp.shared_experts.") + p + ".weight");
      if (native) {
        out.push_back("mlp.experts.gate_and_up_projs");
        out.push_back("mlp.experts.down_projs");
      }
    } else {
      for (const char* p : {"gate_proj", "up_proj", "down_proj"})
        out.push_back(std::string("mlp.") + p + ".weight");
    }
    if (is_mtp_layer(l))
      for (size_t i = 0; i < kHfMoeMtpRequired; ++i) out.emplace_back(kHfMoeMtpOnly[i]);
    return out;
  }

  std::string layer_counts() const {
    const int64_t n = config_.num_hidden_layers, m = config_.num_nextn_predict_layers;
    if (m == 0) return fmt::format("num_hidden_layers = {}, no MTP layer", n);
    return fmt::format("num_hidden_layers = {}, {} MTP layer{} from {}", n, m, m == 1 ? "" : "s",
                       n);
  }

  HfMoeLayout layout_;
};

}  // namespace

std::unique_ptr<const ModelSpec> make_hf_moe_spec(const ModelConfig& config,
                                                  const HfMoeLayout& layout) {
  return std::make_unique<HfMoeSpec>(config, layout);
}

void parse_hf_moe_attention(const nlohmann::json& doc, const std::string& file, ModelConfig& c) {
  FieldReader f(doc, file);
  const int64_t heads = f.positive("num_attention_heads");
  const int64_t kv = f.count("num_key_value_heads", heads);
  if (kv == 0 || heads % kv != 0)
    fail(ErrorKind::kMalformedFile, file, "",
         fmt::format("num_attention_heads = {} is not a multiple of num_key_value_heads = {}",
                     heads, kv),
         "a positive divisor of the head count");
  int64_t head_dim = f.count("head_dim", 0);
  if (head_dim == 0) {
    if (c.hidden_size % heads != 0)
      fail(ErrorKind::kMalformedFile, file, "",
           fmt::format("config has no \"head_dim\" and hidden_size = {} is not a multiple of "
                       "num_attention_heads = {}",
                       c.hidden_size, heads),
           "a head_dim field");
    head_dim = c.hidden_size / heads;
  }
  c.full = {heads, kv, head_dim, head_dim, false};
  c.swa = c.full;
  c.layer_attention.assign(static_cast<size_t>(c.num_hidden_layers), AttentionKind::kFull);
}

nlohmann::json block_fp8_quantization_config() {
  return {{"activation_scheme", "dynamic"},
          {"fmt", "e4m3"},
          {"quant_method", "fp8"},
          {"weight_block_size", {128, 128}}};
}

nlohmann::json resize_hf_moe_preset(nlohmann::json c, const PresetSize& o,
                                    const char* experts_field, const char* first_dense_field) {
  if (o.layers) {
    check_preset_option("layers", *o.layers, 1, c["num_hidden_layers"].get<int64_t>());
    c["num_hidden_layers"] = *o.layers;
    if (first_dense_field)
      c[first_dense_field] = std::min<int64_t>(c[first_dense_field].get<int64_t>(), *o.layers - 1);
  }
  resize_experts_and_vocab(c, o, experts_field);
  return c;
}

}  // namespace moeckpt
