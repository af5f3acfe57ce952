// The DeepSeek-V3 family's spec: config parsing (DeepSeek-V3, Kimi-K2, null q_lora_rank), the
// tensor-name grammar, the shapes of the real checkpoints (as their headers list them), the FP8
// set as published and as Automodel's cast rule has it, and a synthesized checkpoint holding
// exactly what the spec requires.
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

std::optional<ErrorKind> parse_error(const nlohmann::json& doc) {
  try {
    ModelConfig::parse(doc, "config.json");
  } catch (const Error& e) {
    return e.kind();
  }
  return std::nullopt;
}

TEST(DeepSeekConfig, ModelTypesPickTheFamily) {
  EXPECT_EQ(model_spec_for(config_of("deepseek-v3-full"))->layout_name(), "DeepSeek-V3");
  EXPECT_EQ(model_spec_for(config_of("kimi-k2-full"))->layout_name(), "Kimi-K2");
  const auto c = config_of("deepseek-v3-full");
  EXPECT_EQ(c.family, "deepseek");
  ASSERT_TRUE(c.latent);
  EXPECT_EQ(c.latent->q_lora_rank, 1536);
  EXPECT_EQ(c.n_shared_experts, 1);
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  ASSERT_EQ(c.layer_is_moe.size(), 61u);
  EXPECT_FALSE(c.layer_is_moe[2]);  // first_k_dense_replace = 3
  EXPECT_TRUE(c.layer_is_moe[3]);
  EXPECT_TRUE(c.layer_is_moe[60]);
  ASSERT_TRUE(c.block);
  EXPECT_EQ(c.block->rows, 128);
  EXPECT_EQ(config_of("deepseek-v3-tiny-q-proj").latent->q_lora_rank, 0);
  EXPECT_EQ(config_of("kimi-k2-full").n_routed_experts, 384);
}

TEST(DeepSeekConfig, MalformedFieldsAreRefused) {
  const auto base = model_preset("deepseek-v3-tiny");
  auto with = [&](const char* key, nlohmann::json v) {
    auto d = base;
    if (v.is_discarded())
      d.erase(key);
    else
      d[key] = v;
    return d;
  };
  EXPECT_EQ(parse_error(with("q_lora_rank", 0)), ErrorKind::kMalformedFile);
  EXPECT_EQ(parse_error(with("q_lora_rank", -3)), ErrorKind::kMalformedFile);
  EXPECT_EQ(parse_error(with("kv_lora_rank", nlohmann::json::value_t::discarded)),
            ErrorKind::kMalformedFile);
  EXPECT_EQ(parse_error(with("kv_lora_rank", nullptr)), ErrorKind::kMalformedFile);
  EXPECT_EQ(parse_error(with("moe_layer_freq", 0)), ErrorKind::kMalformedFile);
  EXPECT_EQ(parse_error(with("first_k_dense_replace", 99)), ErrorKind::kMalformedFile);
  EXPECT_EQ(parse_error(with("num_experts_per_tok", 99)), ErrorKind::kMalformedFile);
  EXPECT_EQ(parse_error(with("n_shared_experts", "one")), ErrorKind::kMalformedFile);
  EXPECT_EQ(parse_error(with("qk_rope_head_dim", 1.5)), ErrorKind::kMalformedFile);
  // moe_layer_freq 2 from first_k_dense_replace 1: layers 2, 4, ... are MoE.
  auto c = ModelConfig::parse(with("moe_layer_freq", 2), "c");
  EXPECT_EQ(c.layer_is_moe, (std::vector<bool>{false, false, true}));
}

// The shapes DeepSeek-V3's and Kimi-K2's published headers list.
TEST(DeepSeekSpec, ShapesOfThePublishedCheckpoints) {
  const auto ds = model_spec_for(config_of("deepseek-v3-full"));
  auto shape = [&](const ModelSpec& s, const std::string& n) {
    return s.expected_hf_shape(s.classify(n));
  };
  const std::string l = "model.layers.5.";
  EXPECT_EQ(shape(*ds, l + "self_attn.q_a_proj.weight"), (Shape{1536, 7168}));
  EXPECT_EQ(shape(*ds, l + "self_attn.q_a_layernorm.weight"), (Shape{1536}));
  EXPECT_EQ(shape(*ds, l + "self_attn.q_b_proj.weight"), (Shape{24576, 1536}));
  EXPECT_EQ(shape(*ds, l + "self_attn.kv_a_proj_with_mqa.weight"), (Shape{576, 7168}));
  EXPECT_EQ(shape(*ds, l + "self_attn.kv_a_layernorm.weight"), (Shape{512}));
  EXPECT_EQ(shape(*ds, l + "self_attn.kv_b_proj.weight"), (Shape{32768, 512}));
  EXPECT_EQ(shape(*ds, l + "self_attn.o_proj.weight"), (Shape{7168, 16384}));
  EXPECT_EQ(shape(*ds, "model.layers.0.mlp.gate_proj.weight"), (Shape{18432, 7168}));
  EXPECT_EQ(shape(*ds, "model.layers.0.mlp.down_proj.weight"), (Shape{7168, 18432}));
  EXPECT_EQ(shape(*ds, l + "mlp.experts.255.up_proj.weight"), (Shape{2048, 7168}));
  EXPECT_EQ(shape(*ds, l + "mlp.experts.0.down_proj.weight"), (Shape{7168, 2048}));
  EXPECT_EQ(shape(*ds, l + "mlp.shared_experts.gate_proj.weight"), (Shape{2048, 7168}));
  EXPECT_EQ(shape(*ds, l + "mlp.shared_experts.down_proj.weight"), (Shape{7168, 2048}));
  EXPECT_EQ(shape(*ds, l + "mlp.gate.weight"), (Shape{256, 7168}));
  EXPECT_EQ(shape(*ds, l + "mlp.gate.e_score_correction_bias"), (Shape{256}));
  EXPECT_EQ(shape(*ds, "model.embed_tokens.weight"), (Shape{129280, 7168}));
  EXPECT_EQ(shape(*ds, "lm_head.weight"), (Shape{129280, 7168}));
  // The MTP layer (61): its own embedding and head, eh_proj over [embedding; hidden].
  EXPECT_EQ(shape(*ds, "model.layers.61.eh_proj.weight"), (Shape{7168, 14336}));
  EXPECT_EQ(shape(*ds, "model.layers.61.embed_tokens.weight"), (Shape{129280, 7168}));
  EXPECT_EQ(shape(*ds, "model.layers.61.shared_head.head.weight"), (Shape{129280, 7168}));
  EXPECT_EQ(shape(*ds, "model.layers.61.shared_head.norm.weight"), (Shape{7168}));
  EXPECT_EQ(shape(*ds, "model.layers.61.mlp.experts.3.gate_proj.weight"), (Shape{2048, 7168}));
  EXPECT_FALSE(shape(*ds, "model.layers.62.input_layernorm.weight"));  // no such layer
  const auto k2 = model_spec_for(config_of("kimi-k2-full"));
  EXPECT_EQ(shape(*k2, l + "self_attn.q_b_proj.weight"), (Shape{12288, 1536}));
  EXPECT_EQ(shape(*k2, l + "self_attn.kv_b_proj.weight"), (Shape{16384, 512}));
  EXPECT_EQ(shape(*k2, l + "self_attn.o_proj.weight"), (Shape{7168, 8192}));
  EXPECT_EQ(shape(*k2, l + "mlp.gate.weight"), (Shape{384, 7168}));
  const auto plain_q = model_spec_for(config_of("deepseek-v3-tiny-q-proj"));
  EXPECT_EQ(shape(*plain_q, "model.layers.1.self_attn.q_proj.weight"), (Shape{4 * 96, 320}));
  EXPECT_FALSE(shape(*plain_q, "model.layers.1.self_attn.q_a_proj.weight"));
}

TEST(DeepSeekSpec, NamesClassifyAndFp8Sets) {
  const auto s = model_spec_for(config_of("deepseek-v3-full"));
  const auto mtp = s->classify("model.layers.61.mlp.experts.7.down_proj.weight_scale_inv");
  EXPECT_TRUE(mtp.mtp && mtp.is_scale);
  EXPECT_EQ(mtp.kind, TensorKind::kExpertProj);
  EXPECT_EQ(mtp.expert, 7);
  EXPECT_TRUE(
      s->is_grouped_expert(mtp));  // the MTP layer is a MoE layer, grouped as Automodel does
  EXPECT_TRUE(s->layer_has_routed_experts(mtp));
  EXPECT_FALSE(
      s->layer_has_routed_experts(s->classify("model.layers.2.mlp.experts.7.up_proj.weight")));
  const auto e = s->classify("model.layers.60.mlp.experts.7.down_proj.weight");
  EXPECT_FALSE(e.mtp);
  EXPECT_TRUE(s->is_grouped_expert(e));
  EXPECT_EQ(s->classify("model.layers.3.mlp.shared_experts.up_proj.weight").kind,
            TensorKind::kSharedExpertProj);
  EXPECT_EQ(s->classify("model.layers.3.self_attn.kv_a_proj_with_mqa.weight").projection,
            Projection::kKvA);
  EXPECT_EQ(s->classify("model.layers.3.self_attn.kv_a_layernorm.weight").kind, TensorKind::kNorm);
  EXPECT_TRUE(s->is_passthrough("model.layers.3.self_attn.rotary_emb.inv_freq"));

  // Published: every linear weight of attention, MLPs and experts; never norms, embeddings,
  // the router, its bias, or the MTP layer's eh_proj and head.
  for (const char* n :
       {"model.layers.3.self_attn.q_a_proj.weight", "model.layers.3.self_attn.q_b_proj.weight",
        "model.layers.3.self_attn.kv_a_proj_with_mqa.weight",
        "model.layers.3.self_attn.kv_b_proj.weight", "model.layers.3.self_attn.o_proj.weight",
        "model.layers.0.mlp.up_proj.weight", "model.layers.3.mlp.shared_experts.down_proj.weight",
        "model.layers.3.mlp.experts.9.gate_proj.weight",
        "model.layers.61.mlp.experts.9.gate_proj.weight"})
    EXPECT_TRUE(s->is_published_fp8(n)) << n;
  for (const char* n :
       {"model.layers.3.self_attn.q_a_layernorm.weight", "model.layers.3.mlp.gate.weight",
        "model.layers.3.mlp.gate.e_score_correction_bias", "model.embed_tokens.weight",
        "lm_head.weight", "model.layers.61.eh_proj.weight",
        "model.layers.61.shared_head.head.weight", "model.layers.61.embed_tokens.weight",
        "model.norm.weight"})
    EXPECT_FALSE(s->is_published_fp8(n)) << n;
  EXPECT_TRUE(s->is_published_f32(s->classify("model.layers.3.mlp.gate.e_score_correction_bias")));

  // Automodel's cast rule: a substring test, so the MTP eh_proj and head are cast, the latent
  // norms are not.
  for (const char* n :
       {"model.layers.3.self_attn.o_proj.weight", "model.layers.61.eh_proj.weight",
        "model.layers.61.shared_head.head.weight", "model.layers.0.mlp.gate_proj.weight"})
    EXPECT_TRUE(s->compat_quantizes(n, Compat::kAutomodel07)) << n;
  for (const char* n :
       {"model.layers.3.self_attn.kv_a_layernorm.weight", "model.layers.61.enorm.weight",
        "model.layers.3.mlp.gate.weight", "model.layers.3.mlp.gate.e_score_correction_bias",
        "model.layers.61.embed_tokens.weight", "lm_head.weight"})
    EXPECT_FALSE(s->compat_quantizes(n, Compat::kAutomodel07)) << n;
}

// What the spec requires plus the routed experts is exactly a synthesized checkpoint.
TEST(DeepSeekSpec, SynthesizedCheckpointHoldsWhatTheSpecRequires) {
  for (const char* preset : {"deepseek-v3-tiny", "deepseek-v3-tiny-q-proj"}) {
    test::TempDir dir;
    SynthOptions o;
    o.preset = preset;
    synthesize_checkpoint(dir / "hf", o);
    Checkpoint ck = Checkpoint::open(dir / "hf");
    const auto spec = model_spec_for(ModelConfig::load(dir / "hf" / "config.json"));
    std::set<std::string> have(ck.names().begin(), ck.names().end()), want;
    for (const auto& r : spec->required_tensors("model.", {3}, false)) want.insert(r.name);
    size_t experts = 0, scales = 0;
    for (const auto& name : have) {
      const auto k = spec->classify(name);
      if (k.is_scale) {
        ++scales;
        EXPECT_TRUE(have.contains(k.weight_name)) << name;
        continue;
      }
      EXPECT_EQ(spec->is_published_fp8(name),
                spec->block_scale_name(name) && have.contains(*spec->block_scale_name(name)))
          << name;
      if (k.kind == TensorKind::kExpertProj) {
        ++experts;
        continue;
      }
      EXPECT_TRUE(want.contains(name)) << preset << ": " << name << " is not required";
    }
    for (const auto& name : want) EXPECT_TRUE(have.contains(name)) << preset << ": " << name;
    EXPECT_EQ(experts, 3u * 8u * 3u);  // layers 1, 2 and the MTP layer 3; 8 experts; 3 projections
    EXPECT_GT(scales, experts);
  }
  SynthOptions too_many;
  too_many.preset = "deepseek-v3-tiny";
  too_many.mtp_layers = 2;
  test::TempDir dir;
  EXPECT_THROW(synthesize_checkpoint(dir / "hf", too_many), Error);
}

}  // namespace
}  // namespace moeckpt
