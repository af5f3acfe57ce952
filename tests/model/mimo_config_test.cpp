#include <gtest/gtest.h>

#include "moeckpt/error.hpp"
#include "moeckpt/model_config.hpp"
#include "moeckpt/synth.hpp"

namespace moeckpt {
namespace {

using nlohmann::json;

json tiny() {
  return synth_config({});
}

TEST(ModelConfig, ParsesTheTinyConfig) {
  auto c = ModelConfig::parse(tiny(), "config.json");
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.num_hidden_layers, 4);
  EXPECT_EQ(c.layer_attention,
            (std::vector<AttentionKind>{AttentionKind::kFull, AttentionKind::kSlidingWindow,
                                        AttentionKind::kSlidingWindow, AttentionKind::kFull}));
  EXPECT_EQ(c.layer_is_moe, (std::vector<bool>{false, true, true, true}));
  EXPECT_EQ(c.full.num_kv_heads, 4);
  EXPECT_EQ(c.swa.num_kv_heads, 8);
  EXPECT_FALSE(c.full.has_sink);
  EXPECT_TRUE(c.swa.has_sink);
  EXPECT_EQ(c.full.k_rows(), 768);
  EXPECT_EQ(c.full.v_rows(), 512);
  EXPECT_EQ(c.n_routed_experts, 8);
  ASSERT_TRUE(c.block);
  EXPECT_EQ(c.block->rows, 128);
  EXPECT_EQ(c.moe_layer_count(), 3);
}

TEST(ModelConfig, ParsesTheFullConfig) {
  SynthOptions o;
  o.preset = "full";
  auto c = ModelConfig::parse(synth_config(o), "config.json");
  EXPECT_EQ(c.num_hidden_layers, 48);
  int full = 0;
  for (auto k : c.layer_attention) full += k == AttentionKind::kFull;
  EXPECT_EQ(full, 9);
  EXPECT_EQ(c.layer_attention[5], AttentionKind::kFull);
  EXPECT_EQ(c.layer_attention[11], AttentionKind::kFull);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.moe_layer_count(), 47);
}

TEST(ModelConfig, RefusesMissingAndInconsistentFields) {
  struct Case {
    std::function<void(json&)> edit;
    std::string fragment;
  };
  const Case cases[] = {
      {[](json& c) { c.erase("hidden_size"); }, "no \"hidden_size\""},
      {[](json& c) { c["hidden_size"] = -4; }, "\"hidden_size\" is -4"},
      {[](json& c) { c["hidden_size"] = 25.5; }, "\"hidden_size\""},
      {[](json& c) { c["hidden_size"] = "256"; }, "\"hidden_size\""},
      {[](json& c) { c["hidden_size"] = int64_t{1} << 40; }, "at most"},
      {[](json& c) {
         c["hybrid_layer_pattern"] = {0, 1, 1};
       },
       "has 3 entries"},
      {[](json& c) {
         c["hybrid_layer_pattern"] = {0, 1, 2, 0};
       },
       "holds 2"},
      {[](json& c) { c["moe_layer_freq"] = 1; }, "not a list"},
      {[](json& c) { c.erase("moe_layer_freq"); }, "no \"moe_layer_freq\""},
      {[](json& c) { c.erase("n_routed_experts"); }, "no \"n_routed_experts\""},
      {[](json& c) { c["num_experts_per_tok"] = 9; }, "exceeds n_routed_experts"},
      {[](json& c) { c["num_key_value_heads"] = 3; }, "not a multiple"},
      {[](json& c) { c.erase("swa_v_head_dim"); }, "swa_v_head_dim"},
      {[](json& c) { c["quantization_config"]["weight_block_size"] = {128}; }, "weight_block_size"},
      {[](json& c) {
         c["quantization_config"]["weight_block_size"] = {128, 0};
       },
       "weight_block_size"},
      {[](json& c) { c["quantization_config"] = 5; }, "quantization_config"},
      {[](json& c) { c["tie_word_embeddings"] = "no"; }, "tie_word_embeddings"},
  };
  for (const auto& c : cases) {
    json doc = tiny();
    c.edit(doc);
    try {
      ModelConfig::parse(doc, "cfg.json");
      ADD_FAILURE() << "accepted; expected " << c.fragment;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.fragment), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("cfg.json"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(ModelConfig::parse(json::array(), "cfg.json"), Error);
}

TEST(ModelConfig, DenseOnlyModelNeedsNoExperts) {
  json doc = tiny();
  doc["moe_layer_freq"] = {0, 0, 0, 0};
  doc.erase("n_routed_experts");
  auto c = ModelConfig::parse(doc, "cfg.json");
  EXPECT_EQ(c.moe_layer_count(), 0);
}

}  // namespace
}  // namespace moeckpt
