#include <gtest/gtest.h>

#include "model/mimo/mimo_tensor_names.hpp"

namespace moeckpt {
namespace {

TEST(TensorKey, ClassifiesExpertWeightsAndScales) {
  auto k = classify_tensor_name("model.layers.12.mlp.experts.255.down_proj.weight_scale_inv");
  EXPECT_TRUE(k.is_scale);
  EXPECT_EQ(k.weight_name, "model.layers.12.mlp.experts.255.down_proj.weight");
  EXPECT_EQ(k.kind, TensorKind::kExpertProj);
  EXPECT_EQ(k.projection, Projection::kDown);
  EXPECT_EQ(k.layer, 12);
  EXPECT_EQ(k.expert, 255);
  EXPECT_EQ(k.prefix, "model.");
  EXPECT_FALSE(k.mtp);
}

TEST(TensorKey, KeepsEveryPrefix) {
  for (std::string p : {"model.", "", "model.language_model.", "language_model."}) {
    auto k = classify_tensor_name(p + "layers.3.mlp.experts.0.gate_proj.weight");
    EXPECT_EQ(k.prefix, p);
    EXPECT_EQ(k.kind, TensorKind::kExpertProj);
    EXPECT_EQ(k.projection, Projection::kGate);
    auto g = classify_tensor_name(p + "layers.3.mlp.experts.gate_and_up_projs");
    EXPECT_EQ(g.kind, TensorKind::kGroupedExperts);
    EXPECT_EQ(g.projection, Projection::kGateAndUp);
    EXPECT_EQ(g.prefix, p);
  }
}

TEST(TensorKey, ClassifiesAttentionRouterNormsAndMtp) {
  struct Case {
    const char* name;
    TensorKind kind;
    Projection proj;
  };
  const Case cases[] = {
      {"model.layers.0.self_attn.q_proj.weight", TensorKind::kAttentionProj, Projection::kQ},
      {"model.layers.0.self_attn.k_proj.weight_scale_inv", TensorKind::kAttentionProj,
       Projection::kK},
      {"model.layers.0.self_attn.v_proj.weight", TensorKind::kAttentionProj, Projection::kV},
      {"model.layers.0.self_attn.o_proj.weight", TensorKind::kAttentionProj, Projection::kO},
      {"model.layers.1.self_attn.attention_sink_bias", TensorKind::kAttentionSink,
       Projection::kNone},
      {"model.layers.0.mlp.gate_proj.weight", TensorKind::kDenseMlpProj, Projection::kGate},
      {"model.layers.0.mlp.down_proj.weight", TensorKind::kDenseMlpProj, Projection::kDown},
      {"model.layers.1.mlp.gate.weight", TensorKind::kRouter, Projection::kNone},
      {"model.layers.1.mlp.gate.e_score_correction_bias", TensorKind::kRouterBias,
       Projection::kNone},
      {"model.layers.1.input_layernorm.weight", TensorKind::kNorm, Projection::kNone},
      {"model.layers.1.post_attention_layernorm.weight", TensorKind::kNorm, Projection::kNone},
      {"model.mtp.layers.2.enorm.weight", TensorKind::kNorm, Projection::kNone},
      {"model.mtp.layers.2.final_layernorm.weight", TensorKind::kNorm, Projection::kNone},
      {"model.mtp.layers.2.eh_proj.weight", TensorKind::kMtpEhProj, Projection::kNone},
      {"model.mtp.layers.2.mlp.up_proj.weight", TensorKind::kDenseMlpProj, Projection::kUp},
      {"model.embed_tokens.weight", TensorKind::kEmbedding, Projection::kNone},
      {"lm_head.weight", TensorKind::kLmHead, Projection::kNone},
      {"model.norm.weight", TensorKind::kFinalNorm, Projection::kNone},
      {"model.layers.1.mlp.experts.x.gate_proj.weight", TensorKind::kOther, Projection::kNone},
      {"model.layers.01.mlp.gate.weight", TensorKind::kOther, Projection::kNone},
      {"model.layers.1.mlp.experts.3.w1.weight", TensorKind::kOther, Projection::kNone},
      {"model.layers.1.self_attn.rotary.inv_freq", TensorKind::kOther, Projection::kNone},
      {"something.else", TensorKind::kOther, Projection::kNone},
      {"model.enorm.weight", TensorKind::kOther, Projection::kNone},
  };
  for (const auto& c : cases) {
    auto k = classify_tensor_name(c.name);
    EXPECT_EQ(k.kind, c.kind) << c.name;
    EXPECT_EQ(k.projection, c.proj) << c.name;
  }
  auto m = classify_tensor_name("model.mtp.layers.2.self_attn.q_proj.weight");
  EXPECT_TRUE(m.mtp);
  EXPECT_EQ(m.layer, 2);
  EXPECT_EQ(m.prefix, "model.");
}

}  // namespace
}  // namespace moeckpt
