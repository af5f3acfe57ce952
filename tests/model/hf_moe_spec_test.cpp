// The Qwen3-MoE and GLM-4.5 families (the shared Hugging Face MoE spec): config parsing and its
// refusals, which layers are MoE, the tensor-name grammar, the shapes of the real checkpoints (the
// published configs' dimensions), the FP8 sets of BF16 and FP8 releases, the compat rules, and a
// synthesized checkpoint holding exactly what the spec requires.
#include <gtest/gtest.h>

#include <set>

#include "moeckpt/error.hpp"
#include "moeckpt/model_spec.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

using Shape = std::vector<uint64_t>;

ModelConfig config_of(const std::string& preset, PresetSize size = {}) {
  return ModelConfig::parse(model_preset(preset, size), "config.json");
}

// The message of the refusal of `doc`, empty when it parses.
std::string parse_error(const nlohmann::json& doc) {
  try {
    ModelConfig::parse(doc, "config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::optional<Shape> shape_of(const ModelSpec& spec, const std::string& name) {
  return spec.expected_hf_shape(spec.classify(name));
}

TEST(HfMoeConfig, Qwen3MoeLayersAndAttention) {
  const auto c = config_of("qwen3-235b-a22b");
  EXPECT_EQ(c.family, "qwen3_moe");
  EXPECT_EQ(model_spec_for(c)->layout_name(), "Qwen3-MoE");
  EXPECT_EQ(c.n_routed_experts, 128);
  EXPECT_EQ(c.full.num_heads, 64);
  EXPECT_EQ(c.full.num_kv_heads, 4);
  EXPECT_EQ(c.full.head_dim, 128);  // stated: 4096 / 64 would be 64
  EXPECT_EQ(c.moe_layer_count(), 94);
  EXPECT_FALSE(c.block);
  EXPECT_TRUE(config_of("qwen3-235b-a22b-fp8").block);
  // mlp_only_layers and decoder_sparse_step (transformers' rule: (l + 1) % step == 0).
  auto doc = model_preset("qwen3-moe-tiny");
  doc["num_hidden_layers"] = 6;
  doc["decoder_sparse_step"] = 2;
  doc["mlp_only_layers"] = {3, 40};  // an index past the layers is ignored, as transformers does
  const auto s = ModelConfig::parse(doc, "config.json");
  EXPECT_EQ(s.layer_is_moe, (std::vector<bool>{false, true, false, false, false, true}));
  // Without head_dim: hidden_size / heads.
  doc = model_preset("qwen3-moe-tiny");
  doc.erase("head_dim");
  EXPECT_EQ(ModelConfig::parse(doc, "config.json").full.head_dim, 80);
}

TEST(HfMoeConfig, Glm45LayersSharedExpertsAndMtp) {
  const auto c = config_of("glm-4.5");
  EXPECT_EQ(c.family, "glm4_moe");
  EXPECT_EQ(model_spec_for(c)->layout_name(), "GLM-4.5");
  EXPECT_EQ(c.n_routed_experts, 160);
  EXPECT_EQ(c.n_shared_experts, 1);
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_FALSE(c.layer_is_moe[2]);  // first_k_dense_replace = 3
  EXPECT_TRUE(c.layer_is_moe[3]);
  EXPECT_EQ(model_spec_for(c)->mtp_layer_id(0), 92);
  auto doc = model_preset("glm-4.5-air");
  doc.erase("num_nextn_predict_layers");
  doc["num_mtp_layers"] = 2;  // transformers' alias
  EXPECT_EQ(ModelConfig::parse(doc, "config.json").num_nextn_predict_layers, 2);
  doc.erase("num_mtp_layers");  // transformers' default
  EXPECT_EQ(ModelConfig::parse(doc, "config.json").num_nextn_predict_layers, 1);
}

TEST(HfMoeConfig, MalformedFieldsAreRefused) {
  auto with = [](const char* preset, const char* key, nlohmann::json v) {
    auto d = model_preset(preset);
    if (v.is_discarded())
      d.erase(key);
    else
      d[key] = v;
    return parse_error(d);
  };
  const auto discard = nlohmann::json(nlohmann::json::value_t::discarded);
  EXPECT_NE(with("qwen3-moe-tiny", "num_experts", discard).find("\"num_experts\""),
            std::string::npos);
  EXPECT_NE(with("qwen3-moe-tiny", "num_experts_per_tok", 9).find("exceeds num_experts = 8"),
            std::string::npos);
  EXPECT_NE(with("qwen3-moe-tiny", "num_key_value_heads", 3).find("not a multiple"),
            std::string::npos);
  EXPECT_NE(with("qwen3-moe-tiny", "decoder_sparse_step", 0).find("decoder_sparse_step"),
            std::string::npos);
  EXPECT_NE(with("qwen3-moe-tiny", "mlp_only_layers", "1").find("mlp_only_layers"),
            std::string::npos);
  EXPECT_NE(with("qwen3-moe-tiny", "mlp_only_layers", {-1}).find("mlp_only_layers"),
            std::string::npos);
  EXPECT_NE(with("qwen3-moe-tiny", "attention_bias", 1).find("attention_bias"), std::string::npos);
  EXPECT_NE(with("glm4-moe-tiny", "use_qk_norm", "yes").find("use_qk_norm"), std::string::npos);
  EXPECT_NE(with("glm4-moe-tiny", "n_routed_experts", 0).find("n_routed_experts"),
            std::string::npos);
  EXPECT_NE(with("glm4-moe-tiny", "first_k_dense_replace", -1).find("first_k_dense_replace"),
            std::string::npos);
  auto doc = model_preset("qwen3-moe-tiny");
  doc.erase("head_dim");
  doc["hidden_size"] = 322;  // not a multiple of 4 heads
  EXPECT_NE(parse_error(doc).find("no \"head_dim\""), std::string::npos);
  // GLM-4.5-FP8's compressed-tensors per-channel scales are refused by name.
  doc = model_preset("glm-4.5-air");
  doc["quantization_config"] = {{"quant_method", "compressed-tensors"},
                                {"format", "float-quantized"}};
  EXPECT_NE(parse_error(doc).find("compressed-tensors"), std::string::npos);
}

TEST(HfMoeSpec, ShapesOfThePublishedCheckpoints) {
  // Qwen3-30B-A3B: hidden 2048, 32 heads, 4 KV heads of 128, experts 768 wide.
  auto spec = model_spec_for(config_of("qwen3-30b-a3b"));
  EXPECT_EQ(shape_of(*spec, "model.layers.0.self_attn.q_proj.weight"), (Shape{4096, 2048}));
  EXPECT_EQ(shape_of(*spec, "model.layers.0.self_attn.k_proj.weight"), (Shape{512, 2048}));
  EXPECT_EQ(shape_of(*spec, "model.layers.0.self_attn.o_proj.weight"), (Shape{2048, 4096}));
  EXPECT_EQ(shape_of(*spec, "model.layers.0.self_attn.q_norm.weight"), (Shape{128}));
  EXPECT_EQ(shape_of(*spec, "model.layers.0.mlp.gate.weight"), (Shape{128, 2048}));
  EXPECT_EQ(shape_of(*spec, "model.layers.47.mlp.experts.127.down_proj.weight"),
            (Shape{2048, 768}));
  EXPECT_EQ(shape_of(*spec, "lm_head.weight"), (Shape{151936, 2048}));
  // GLM-4.5: 96 heads of 128 over hidden 5120, q/k/v biases, shared expert 1536 wide, MTP layer 92.
  spec = model_spec_for(config_of("glm-4.5"));
  EXPECT_EQ(shape_of(*spec, "model.layers.3.self_attn.q_proj.weight"), (Shape{12288, 5120}));
  EXPECT_EQ(shape_of(*spec, "model.layers.3.self_attn.k_proj.bias"), (Shape{1024}));
  EXPECT_EQ(shape_of(*spec, "model.layers.3.self_attn.k_norm.weight"), (Shape{128}));
  EXPECT_EQ(shape_of(*spec, "model.layers.0.mlp.down_proj.weight"), (Shape{5120, 12288}));
  EXPECT_EQ(shape_of(*spec, "model.layers.3.mlp.shared_experts.up_proj.weight"),
            (Shape{1536, 5120}));
  EXPECT_EQ(shape_of(*spec, "model.layers.3.mlp.gate.e_score_correction_bias"), (Shape{160}));
  EXPECT_EQ(shape_of(*spec, "model.layers.92.eh_proj.weight"), (Shape{5120, 10240}));
  EXPECT_EQ(shape_of(*spec, "model.layers.92.mlp.experts.159.gate_proj.weight"),
            (Shape{1536, 5120}));
  EXPECT_EQ(shape_of(*spec, "model.layers.93.mlp.gate.weight"), std::nullopt);
}

TEST(HfMoeSpec, NamesClassifyAndContradictTheConfig) {
  const auto qwen = model_spec_for(config_of("qwen3-moe-tiny"));
  auto k = qwen->classify("model.layers.0.self_attn.o_proj.bias");
  EXPECT_EQ(k.kind, TensorKind::kAttentionBias);
  EXPECT_EQ(k.projection, Projection::kO);
  k = qwen->classify("model.layers.2.mlp.experts.7.up_proj.weight_scale_inv");
  EXPECT_TRUE(k.is_scale);
  EXPECT_EQ(k.kind, TensorKind::kExpertProj);
  EXPECT_EQ(k.expert, 7);
  EXPECT_EQ(qwen->classify("model.layers.0.self_attn.q_norm.weight").kind, TensorKind::kNorm);
  EXPECT_EQ(qwen->classify("model.layers.0.self_attn.qkv_proj.weight").kind, TensorKind::kOther);
  EXPECT_EQ(qwen->classify("model.layers.0.mlp.experts.gate_and_up_projs").kind,
            TensorKind::kGroupedExperts);
  auto why = [](const ModelSpec& s, const char* name) {
    return s.contradicts_config(s.classify(name)).value_or("");
  };
  // qwen3-moe-tiny: layer 1 dense (mlp_only_layers), no shared experts, no router bias, no MTP.
  EXPECT_NE(why(*qwen, "model.layers.0.mlp.down_proj.weight").find("MoE layer"), std::string::npos);
  EXPECT_NE(why(*qwen, "model.layers.1.mlp.gate.weight").find("dense layer"), std::string::npos);
  EXPECT_NE(why(*qwen, "model.layers.0.mlp.gate.e_score_correction_bias").find("no e_score"),
            std::string::npos);
  EXPECT_NE(why(*qwen, "model.layers.0.mlp.shared_experts.up_proj.weight").find("no shared"),
            std::string::npos);
  EXPECT_NE(why(*qwen, "model.layers.1.eh_proj.weight").find("MTP layer's tensor"),
            std::string::npos);
  EXPECT_EQ(why(*qwen, "model.layers.0.self_attn.o_proj.bias"), "");
  const auto glm = model_spec_for(config_of("glm4-moe-tiny"));
  EXPECT_NE(why(*glm, "model.layers.1.self_attn.o_proj.bias").find("no o_proj bias"),
            std::string::npos);
  EXPECT_EQ(why(*glm, "model.layers.3.enorm.weight"), "");  // the MTP layer
  const auto air = model_spec_for(config_of("glm-4.5-air"));
  EXPECT_NE(why(*air, "model.layers.1.self_attn.q_norm.weight").find("use_qk_norm"),
            std::string::npos);
  auto doc = model_preset("qwen3-moe-tiny");
  doc["attention_bias"] = false;
  const auto plain = model_spec_for(ModelConfig::parse(doc, "config.json"));
  EXPECT_NE(why(*plain, "model.layers.0.self_attn.q_proj.bias").find("attention_bias is false"),
            std::string::npos);
}

TEST(HfMoeSpec, Fp8SetsAndCompatRules) {
  const auto bf16 = model_spec_for(config_of("qwen3-30b-a3b"));
  const auto fp8 = model_spec_for(config_of("qwen3-30b-a3b-fp8"));
  EXPECT_FALSE(bf16->publishes_fp8());
  EXPECT_TRUE(fp8->publishes_fp8());
  for (const char* n :
       {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.mlp.experts.3.down_proj.weight"})
    EXPECT_TRUE(fp8->is_published_fp8(n)) << n;
  for (const char* n : {"model.layers.0.self_attn.q_norm.weight", "model.layers.0.mlp.gate.weight",
                        "model.layers.0.self_attn.q_proj.bias", "model.embed_tokens.weight",
                        "lm_head.weight", "model.layers.0.self_attn.q_proj.weight_scale_inv"})
    EXPECT_FALSE(fp8->is_published_fp8(n)) << n;
  // Automodel's mixin adapters: no cast, FP8 input refused, 0.7.0 only.
  EXPECT_FALSE(fp8->compat_casts());
  EXPECT_FALSE(
      fp8->compat_quantizes("model.layers.0.self_attn.q_proj.weight", Compat::kAutomodel07));
  EXPECT_NE(fp8->compat_fp8_input_refusal().value_or("").find("drops every weight_scale_inv"),
            std::string::npos);
  EXPECT_FALSE(fp8->reproduces(Compat::kAutomodel06));
  const auto glm = model_spec_for(config_of("glm-4.5"));
  EXPECT_TRUE(
      glm->is_published_f32(glm->classify("model.layers.3.mlp.gate.e_score_correction_bias")));
}

TEST(HfMoeSpec, SynthesizedCheckpointHoldsWhatTheSpecRequires) {
  for (const char* preset : {"qwen3-moe-tiny", "qwen3-moe-tiny-fp8", "glm4-moe-tiny",
                             "glm4-moe-tiny-fp8", "minimax-m2-tiny"}) {
    SCOPED_TRACE(preset);
    test::TempDir dir;
    SynthOptions o;
    o.preset = preset;
    synthesize_checkpoint(dir / "hf", o);
    Checkpoint ck = Checkpoint::open(dir / "hf");
    const auto spec = model_spec_for(ModelConfig::load(dir / "hf" / "config.json"));
    const bool glm = std::string(preset).starts_with("glm");
    const std::set<int64_t> mtp = glm ? std::set<int64_t>{3} : std::set<int64_t>{};
    std::set<std::string> have(ck.names().begin(), ck.names().end()), want;
    for (const auto& r : spec->required_tensors("model.", mtp, false)) want.insert(r.name);
    size_t experts = 0, scales = 0;
    for (const auto& name : have) {
      const auto k = spec->classify(name);
      if (k.is_scale) {
        ++scales;
        EXPECT_TRUE(have.contains(k.weight_name)) << name;
        continue;
      }
      EXPECT_EQ(spec->publishes_fp8() && spec->is_published_fp8(name),
                ck.find(name)->info->dtype == Dtype::F8_E4M3)
          << name;
      if (k.kind == TensorKind::kExpertProj) {
        ++experts;
        continue;
      }
      EXPECT_TRUE(want.contains(name)) << name << " is not required";
    }
    for (const auto& name : want) EXPECT_TRUE(have.contains(name)) << name;
    // qwen3: MoE layers 0 and 2; glm: layers 1, 2 and the MTP layer 3; minimax: layers 0 and 1;
    // 8 experts, 3 projections.
    EXPECT_EQ(experts, (glm ? 3u : 2u) * 8u * 3u);
    EXPECT_EQ(scales > 0, spec->publishes_fp8());
  }
}

TEST(HfMoeSpec, MiniMaxM2NamesShapesAndCastRule) {
  const auto c = config_of("minimax-m2");
  EXPECT_EQ(c.family, "minimax_m2");
  EXPECT_EQ(c.moe_intermediate_size, 1536);  // intermediate_size is the experts' width
  EXPECT_EQ(c.moe_layer_count(), 62);
  EXPECT_EQ(c.num_nextn_predict_layers, 0);  // use_mtp, but the release holds no MTP weights
  const auto spec = model_spec_for(c);
  EXPECT_EQ(spec->layout_name(), "MiniMax-M2");
  EXPECT_TRUE(spec->publishes_fp8());
  // HF names under block_sparse_moe; natively mlp.gate / mlp.experts.
  const std::string L = "model.layers.5.";
  auto k = spec->classify(L + "block_sparse_moe.experts.255.w3.weight");
  EXPECT_EQ(k.kind, TensorKind::kExpertProj);
  EXPECT_EQ(k.projection, Projection::kUp);
  EXPECT_EQ(k.expert, 255);
  EXPECT_EQ(spec->expert_weight_name("model.", 5, 255, Projection::kUp), k.name);
  EXPECT_EQ(spec->expert_weight_name("model.", 5, 0, Projection::kGate),
            L + "block_sparse_moe.experts.0.w1.weight");
  EXPECT_EQ(spec->classify(L + "mlp.experts.3.gate_proj.weight").kind, TensorKind::kOther);
  EXPECT_EQ(spec->native_name_of(L + "block_sparse_moe.gate.weight"), L + "mlp.gate.weight");
  EXPECT_EQ(spec->native_name_of(L + "block_sparse_moe.e_score_correction_bias"),
            L + "mlp.gate.e_score_correction_bias");
  EXPECT_EQ(spec->hf_name_of(L + "mlp.gate.weight"), L + "block_sparse_moe.gate.weight");
  EXPECT_EQ(spec->native_name_of(L + "self_attn.q_proj.weight"), std::nullopt);
  EXPECT_TRUE(spec->is_published_f32(spec->classify(L + "block_sparse_moe.gate.weight")));
  EXPECT_TRUE(spec->is_published_f32(spec->classify(L + "mlp.gate.e_score_correction_bias")));
  // Full-width q/k norms.
  EXPECT_EQ(shape_of(*spec, L + "self_attn.q_norm.weight"), (Shape{6144}));
  EXPECT_EQ(shape_of(*spec, L + "self_attn.k_norm.weight"), (Shape{1024}));
  EXPECT_EQ(shape_of(*spec, L + "block_sparse_moe.experts.0.w2.weight"), (Shape{3072, 1536}));
  EXPECT_EQ(shape_of(*spec, L + "block_sparse_moe.gate.weight"), (Shape{256, 3072}));
  // Automodel's should_quantize_key on HF names: o_proj cast, norms and the router not.
  EXPECT_TRUE(spec->compat_casts());
  for (const char* n : {"self_attn.o_proj.weight", "block_sparse_moe.experts.0.w1.weight"})
    EXPECT_TRUE(spec->compat_quantizes(L + n, Compat::kAutomodel07)) << n;
  for (const char* n : {"self_attn.q_norm.weight", "block_sparse_moe.gate.weight",
                        "block_sparse_moe.e_score_correction_bias", "input_layernorm.weight",
                        "self_attn.q_proj.lora_A.weight"})
    EXPECT_FALSE(spec->compat_quantizes(L + n, Compat::kAutomodel07)) << n;
  EXPECT_EQ(spec->compat_fp8_input_refusal(), std::nullopt);  // its from_hf dequantizes
  // No dense layers, no shared experts, no attention biases.
  auto why = [&](const std::string& name) {
    return spec->contradicts_config(spec->classify(name)).value_or("");
  };
  EXPECT_NE(why(L + "mlp.up_proj.weight").find("MoE layer"), std::string::npos);
  EXPECT_NE(why(L + "self_attn.q_proj.bias").find("no bias"), std::string::npos);
  auto doc = model_preset("minimax-m2-tiny");
  doc.erase("intermediate_size");
  EXPECT_NE(parse_error(doc).find("\"intermediate_size\""), std::string::npos);
}

}  // namespace
}  // namespace moeckpt
