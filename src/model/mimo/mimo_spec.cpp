// The MiMo family's spec: MiMo-V2-Flash (split attention, FP8 experts, the fused K/V scale layout
// of its full-attention layers), MiMo-V2.6 (fused qkv_proj over the index's TP degree, MXFP4
// experts) and MiMo-V2.5-Pro (fused qkv_proj over num_key_value_heads, kept fused natively), with
// NeMo Automodel's names, FP8 sets and compat differences (0.6 / 0.7).
#include "model/mimo/mimo_spec.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>

#include "model/hf_tensor_names.hpp"
#include "model/mimo/mimo_shapes.hpp"
#include "model/mimo/mimo_tensor_names.hpp"

namespace moeckpt {
namespace {

constexpr std::string_view kMxScaleSuffix = "_scale";
// The full-attention k scale Automodel's cast pads to (the published shape).
constexpr int64_t kPublishedKScaleRows = 8;

class MimoSpec final : public ModelSpec {
 public:
  explicit MimoSpec(const ModelConfig& c) : ModelSpec(c) {}

  std::string_view layout_name() const noexcept override {
    if (!config_.fused_qkv) return "MiMo-V2-Flash";
    return config_.fused_native ? "MiMo-V2.5-Pro" : "MiMo-V2.6";
  }

  TensorKey classify(std::string_view name) const override { return classify_tensor_name(name); }

  std::string mx_scale_name(std::string_view weight) const override {
    return std::string(weight) + std::string(kMxScaleSuffix);
  }

  std::optional<BackendName> native_backend_name(std::string_view hf,
                                                 AttnBackend backend) const override {
    if (backend != AttnBackend::kTe) return std::nullopt;
    auto te = te_sink_name(hf);  // Automodel's TE model: the sink renamed, widened to F32
    if (!te) return std::nullopt;
    return BackendName{*te, true};
  }
  std::optional<std::string> hf_name_of_backend_name(std::string_view native) const override {
    return hf_sink_name(native);
  }

  std::vector<RequiredTensor> required_tensors(std::string_view prefix,
                                               const std::set<int64_t>& mtp_layers,
                                               bool native) const override {
    std::vector<RequiredTensor> out;
    auto add = [&](std::string name, const std::string& what) {
      // Automodel's TE model names the sink attn_module.softmax_offset natively.
      out.push_back({name, what, native ? te_sink_name(name) : std::nullopt});
    };
    for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
      const auto base = fmt::format("{}layers.{}.", prefix, l);
      const auto what = describe_layer(l);
      for (const auto& n : layer_tensors(l, false, native)) add(base + n, what);
    }
    for (int64_t m : mtp_layers)
      for (const auto& n : layer_tensors(m, true, native))
        add(fmt::format("{}mtp.layers.{}.{}", prefix, m, n), fmt::format("MTP layer {}", m));
    add(std::string(prefix) + "embed_tokens.weight", "the model");
    add(std::string(prefix) + "norm.weight", "the model");
    if (!config_.tie_word_embeddings)
      add("lm_head.weight", "the model (tie_word_embeddings is false)");
    return out;
  }

  // MiMo-V2.6's multimodal towers.
  bool is_passthrough(std::string_view name) const override {
    return config_.fused_qkv && (name.starts_with("visual.") || name.starts_with("audio."));
  }

  std::vector<std::pair<std::string, std::vector<uint64_t>>> synthetic_passthrough_tensors()
      const override {
    if (!config_.fused_qkv || config_.fused_native) return {};
    return {{"visual.patch_embed.proj.weight", {32, 48}},
            {"visual.blocks.0.norm1.weight", {32}},
            {"audio.encoder.layers.0.fc1.weight", {16, 32}}};
  }

  // What a layer's role rules out: an MTP layer's own tensors in a decoder layer; a decoder
  // layer's post-attention norm, router or routed experts in an MTP layer (MTP layers are dense,
  // with pre_mlp_layernorm); a dense MLP in a MoE layer and a router in a dense one; a sink where
  // the layer's attention kind has none.
  std::optional<std::string> contradicts_config(const TensorKey& k) const override {
    if (k.is_scale || !k.layer) return std::nullopt;
    static constexpr std::array<std::string_view, 5> kMtpOnly = {
        "enorm.weight", "hnorm.weight", "eh_proj.weight", "pre_mlp_layernorm.weight",
        "final_layernorm.weight"};
    const auto path = split_layer_path(k.weight_name);
    const std::string_view rest = path ? path->rest : std::string_view();
    const bool mtp_only = std::find(kMtpOnly.begin(), kMtpOnly.end(), rest) != kMtpOnly.end();
    const bool router = k.kind == TensorKind::kRouter || k.kind == TensorKind::kRouterBias;
    const int64_t l = *k.layer;
    const bool known = k.mtp || l < config_.num_hidden_layers;  // else refused by its index
    if (k.kind == TensorKind::kAttentionSink && known) {
      const AttentionDims& a = attention_dims_of(k, config_);
      if (!a.has_sink)
        return fmt::format(
            "{} has no attention sink in config.json ({} is false)",
            k.mtp ? fmt::format("MTP layer {}", l) : describe_layer(l),
            &a == &config_.full ? "add_full_attention_sink_bias" : "add_swa_attention_sink_bias");
    }
    if (k.mtp) {
      if (router || k.kind == TensorKind::kExpertProj || k.kind == TensorKind::kGroupedExperts)
        return fmt::format("MTP layer {} is a dense layer (mlp.gate_proj, up_proj, down_proj)", l);
      if (rest == "post_attention_layernorm.weight")
        return fmt::format("MTP layer {} has pre_mlp_layernorm, not post_attention_layernorm", l);
      return std::nullopt;
    }
    if (mtp_only)
      return fmt::format(
          "{} is an MTP layer's tensor ({}mtp.layers.<i>.{}), not decoder layer {}'s", rest,
          k.prefix, rest, l);
    if (!known) return std::nullopt;
    const bool moe = config_.layer_is_moe[static_cast<size_t>(l)];
    if (k.kind == TensorKind::kDenseMlpProj && moe)
      return fmt::format("{} is a MoE layer in config.json (moe_layer_freq)", describe_layer(l));
    if (router && !moe)
      return fmt::format("{} is a dense layer in config.json (moe_layer_freq)", describe_layer(l));
    return std::nullopt;
  }

  std::string describe_layer(int64_t l) const override {
    const auto i = static_cast<size_t>(l);
    return fmt::format(
        "layer {} ({}, {})", l,
        config_.layer_attention[i] == AttentionKind::kFull ? "full attention" : "sliding window",
        config_.layer_is_moe[i] ? "MoE" : "dense");
  }

  std::optional<std::vector<uint64_t>> expected_hf_shape(const TensorKey& key) const override {
    return moeckpt::expected_hf_shape(key, config_);
  }
  const AttentionDims& attention_dims(const TensorKey& key) const override {
    return attention_dims_of(key, config_);
  }

  bool is_published_fp8(std::string_view name) const override {
    auto k = classify_tensor_name(name);
    if (k.is_scale) return false;
    switch (k.kind) {
      case TensorKind::kAttentionProj:
        return k.projection != Projection::kO;
      case TensorKind::kDenseMlpProj:
      case TensorKind::kExpertProj:
        return true;
      default:
        return false;
    }
  }

  bool is_published_f32(const TensorKey& key) const override {
    return key.kind == TensorKind::kRouter || key.kind == TensorKind::kRouterBias;
  }

  // Automodel's _should_quantize_key: a substring test against its exclusion list, so MTP's
  // eh_proj and anything unknown ending in ".weight" is cast; 0.7 never casts visual./audio.
  bool compat_quantizes(std::string_view key, Compat version) const override {
    if (!key.ends_with(".weight")) return false;
    if (version != Compat::kAutomodel06 &&
        (key.starts_with("visual.") || key.starts_with("audio.")))
      return false;
    static constexpr std::array<std::string_view, 7> kExcluded = {"input_layernorm.weight",
                                                                  "post_attention_layernorm.weight",
                                                                  "norm.weight",
                                                                  "lm_head.weight",
                                                                  "embed_tokens.weight",
                                                                  "mlp.gate.weight",
                                                                  "self_attn.o_proj.weight"};
    for (auto s : kExcluded)
      if (key.find(s) != std::string_view::npos) return false;
    return true;
  }

  int64_t compat_cast_scale_rows(const TensorKey& key, int64_t rows,
                                 int64_t block_rows) const override {
    const int64_t plain = (rows + block_rows - 1) / block_rows;
    if (key.kind == TensorKind::kAttentionProj && key.projection == Projection::kK &&
        rows == config_.full.num_kv_heads * config_.full.head_dim)
      return std::max(plain, kPublishedKScaleRows);
    return plain;
  }

  bool hf_qkv_fused() const noexcept override { return config_.fused_qkv; }
  bool native_qkv_fused() const noexcept override { return config_.fused_native; }
  bool hf_experts_mxfp4() const noexcept override {
    return config_.fused_qkv && !config_.fused_native;
  }
  std::optional<int64_t> fixed_checkpoint_tp() const override {
    if (config_.fused_native) return config_.full.num_kv_heads;
    return std::nullopt;
  }
  TpInterleavedQkv qkv_interleave(const AttentionDims& dims, int64_t tp, bool exact,
                                  const std::string& file,
                                  const std::string& tensor) const override {
    return config_.fused_native ? tp_interleaved_qkv_rounded(dims, tp, exact, file, tensor)
                                : tp_interleaved_qkv(dims, tp, file, tensor);
  }

  // MiMo-V2-Flash's full-attention layers: q/k/v quantized as 4 tensor-parallel shards.
  std::optional<FusedQkvLayout> detect_shared_qkv_scales(
      const TensorKey& key, int64_t k_scale_rows, int64_t block_rows,
      const std::array<int64_t, 3>& weight_rows) const override {
    return detect_fused_qkv(attention_dims_of(key, config_), k_scale_rows, block_rows, weight_rows);
  }
  std::optional<FusedQkvLayout> shared_qkv_scales_to_write(const TensorKey& key,
                                                           int64_t block_rows) const override {
    if (config_.fused_qkv || key.kind != TensorKind::kAttentionProj ||
        key.projection == Projection::kO || !key.layer)
      return std::nullopt;
    const auto& d = attention_dims_of(key, config_);
    auto layout = FusedQkvLayout::make(d.q_rows(), d.k_rows(), d.v_rows(), block_rows);
    if (!layout || !layout->differs_from_plain() || !layout->every_projection_owns_scale_rows())
      return std::nullopt;
    return layout;
  }

  std::optional<std::string> compat_quantized_export_refusal() const override {
    if (!config_.fused_qkv) return std::nullopt;
    return config_.fused_native ? "MiMo-V2.5-Pro FP8 export is unsupported; use "
                                  "quantization=False to preserve weights (Automodel 0.7.0 "
                                  "refuses it)"
                                : "MiMo-V2.6 quantized conversion is only supported for "
                                  "checkpoint loading (Automodel 0.7.0 refuses it)";
  }

  void rewrite_export_config(nlohmann::json& config, bool published_layout) const override {
    // Written split (MiMo-V2.6 without quantization): the config must describe q/k/v.
    if (config_.fused_qkv && !config_.fused_native && !published_layout)
      config["attention_projection_layout"] = "split";
  }

 private:
  // The non-expert tensors of a decoder layer (or MTP layer), relative to its base name.
  std::vector<std::string> layer_tensors(int64_t layer, bool mtp, bool native) const {
    const auto& c = config_;
    std::vector<std::string> out;
    const AttentionDims& a = mtp ? c.swa : c.layer_attention_dims(layer);
    const bool moe = !mtp && c.layer_is_moe[static_cast<size_t>(layer)];
    if (mtp)
      for (const char* n : {"enorm.weight", "hnorm.weight", "eh_proj.weight"}) out.push_back(n);
    out.push_back("input_layernorm.weight");
    // The fused layout's HF checkpoint holds qkv_proj; natively q, k and v are split (V2.6).
    const bool fused = c.fused_qkv && (!native || c.fused_native);
    for (const char* p : {"q_proj", "k_proj", "v_proj", "o_proj"})
      if (!fused || std::string_view(p) == "o_proj")
        out.push_back(std::string("self_attn.") + p + ".weight");
    if (fused) out.push_back("self_attn.qkv_proj.weight");
    if (a.has_sink) out.push_back("self_attn.attention_sink_bias");
    out.push_back(mtp ? "pre_mlp_layernorm.weight" : "post_attention_layernorm.weight");
    if (moe) {
      out.push_back("mlp.gate.weight");
      out.push_back("mlp.gate.e_score_correction_bias");
      if (native) {
        out.push_back("mlp.experts.gate_and_up_projs");
        out.push_back("mlp.experts.down_projs");
      }
    } else {
      for (const char* p : {"gate_proj", "up_proj", "down_proj"})
        out.push_back(std::string("mlp.") + p + ".weight");
    }
    if (mtp) out.push_back("final_layernorm.weight");
    return out;
  }
};

}  // namespace

bool is_mimo_model_type(std::string_view model_type) {
  return model_type.empty() || model_type.starts_with("mimo");
}

std::unique_ptr<const ModelSpec> make_mimo_spec(const ModelConfig& config) {
  return std::make_unique<MimoSpec>(config);
}

}  // namespace moeckpt
