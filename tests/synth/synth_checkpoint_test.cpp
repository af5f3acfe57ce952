#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "moeckpt/error.hpp"
#include "moeckpt/inspect.hpp"
#include "moeckpt/model_config.hpp"
#include "moeckpt/numerics.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;

int64_t cd(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Tensor count and bytes straight from the recipe in docs/CHECKPOINT.md ("The tiny
// checkpoint"), computed independently of the synthesizer.
std::pair<uint64_t, uint64_t> recipe_totals(const nlohmann::json& c, int64_t n_mtp) {
  const int64_t D = c["hidden_size"], V = c["vocab_size"], I = c["intermediate_size"],
                Ie = c["moe_intermediate_size"], E = c["n_routed_experts"],
                L = c["num_hidden_layers"];
  const int64_t B = 128, T = 4, C = cd(D, B);
  uint64_t count = 3, bytes = 2 * V * D * 2 + D * 2;
  auto attention = [&](int64_t nh, int64_t kv, int64_t hd, int64_t vd, bool sink) {
    int64_t Qr = nh * hd / T, Kr = kv * hd / T, Vr = kv * vd / T;
    int64_t Sq = T * cd(Qr, B), Sk = T * (cd(Qr + Kr, B) - cd(Qr, B)),
            Sv = T * (cd(Qr + Kr + Vr, B) - cd(Qr + Kr, B));
    count += 7 + (sink ? 1 : 0);
    bytes += (nh * hd + kv * hd + kv * vd) * D + (Sq + Sk + Sv) * C * 4 + D * nh * vd * 2 +
             (sink ? nh * 2 : 0);
  };
  auto dense = [&]() {
    count += 6;
    bytes += 3 * I * D + (2 * cd(I, B) * C + cd(D, B) * cd(I, B)) * 4;
  };
  for (int64_t l = 0; l < L; ++l) {
    bool full = c["hybrid_layer_pattern"][l] == 0;
    count += 2;
    bytes += 2 * D * 2;
    if (full)
      attention(c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["v_head_dim"],
                c["add_full_attention_sink_bias"]);
    else
      attention(c["swa_num_attention_heads"], c["swa_num_key_value_heads"], c["swa_head_dim"],
                c["swa_v_head_dim"], c["add_swa_attention_sink_bias"]);
    if (c["moe_layer_freq"][l] == 0) {
      dense();
    } else {
      count += 2 + 6 * E;
      bytes +=
          E * D * 4 + E * 4 + E * (3 * Ie * D + (2 * cd(Ie, B) * C + cd(D, B) * cd(Ie, B)) * 4);
    }
  }
  for (int64_t m = 0; m < n_mtp; ++m) {
    count += 6;  // enorm, hnorm, eh_proj, input/pre_mlp/final layernorm
    bytes += 5 * D * 2 + D * 2 * D * 2;
    attention(c["swa_num_attention_heads"], c["swa_num_key_value_heads"], c["swa_head_dim"],
              c["swa_v_head_dim"], c["add_swa_attention_sink_bias"]);
    dense();
  }
  return {count, bytes};
}

TEST(Synth, TinyPresetMatchesTheRecipe) {
  test::TempDir dir;
  auto report = synthesize_checkpoint(dir / "tiny", {});
  auto [count, bytes] = recipe_totals(synth_config({}), 3);
  EXPECT_EQ(count, 257u);
  EXPECT_EQ(report.tensors, count);
  EXPECT_EQ(report.total_bytes, bytes);
  EXPECT_GE(report.shards, 2u);

  auto r = inspect_checkpoint(dir / "tiny");
  EXPECT_EQ(r.tensors, 257u);
  EXPECT_EQ(r.total_bytes, bytes);
  EXPECT_TRUE(r.problems.empty()) << r.problems.front();
  EXPECT_TRUE(r.notes.empty()) << r.notes.front();
  EXPECT_EQ(r.mtp_layers, 3);
  EXPECT_EQ(r.full_layers, 2);
  EXPECT_EQ(r.moe_layers, 3);
  EXPECT_EQ(r.experts_per_layer.at(3), 8);
  ASSERT_EQ(r.attention.size(), 4u + 3u);
  for (const auto& a : r.attention) {
    bool full = a.layer == "0" || a.layer == "3";
    EXPECT_EQ(a.kind, full ? "full" : "sliding_window") << a.layer;  // MTP layers are SWA
    EXPECT_EQ(a.layout, full ? "fused_kv_t4" : "plain") << a.layer;
    EXPECT_EQ(a.k_scale_shape, (std::vector<uint64_t>{full ? 8u : 12u, 2u})) << a.layer;
  }
}

TEST(Synth, StructuralFeaturesOfTheRealCheckpoint) {
  test::TempDir dir;
  synthesize_checkpoint(dir / "t", {});
  auto ck = Checkpoint::open(dir / "t");
  auto dtype = [&](const std::string& n) { return ck.find(n)->info->dtype; };
  auto shape = [&](const std::string& n) { return ck.find(n)->info->shape; };
  using S = std::vector<uint64_t>;
  EXPECT_EQ(dtype("model.layers.1.mlp.gate.weight"), Dtype::F32);
  EXPECT_EQ(dtype("model.layers.1.mlp.gate.e_score_correction_bias"), Dtype::F32);
  EXPECT_EQ(dtype("model.layers.1.self_attn.o_proj.weight"), Dtype::BF16);
  EXPECT_EQ(dtype("model.layers.1.self_attn.attention_sink_bias"), Dtype::BF16);
  EXPECT_EQ(ck.find("model.layers.0.self_attn.attention_sink_bias"), nullptr);
  EXPECT_EQ(ck.find("model.layers.0.self_attn.o_proj.weight_scale_inv"), nullptr);
  EXPECT_EQ(dtype("model.layers.0.mlp.down_proj.weight"), Dtype::F8_E4M3);
  EXPECT_EQ(shape("model.layers.0.mlp.down_proj.weight_scale_inv"), (S{2, 4}));
  EXPECT_EQ(shape("model.layers.0.self_attn.k_proj.weight"), (S{768, 256}));
  EXPECT_EQ(shape("model.layers.0.self_attn.k_proj.weight_scale_inv"), (S{8, 2}));
  EXPECT_EQ(shape("model.layers.0.self_attn.v_proj.weight_scale_inv"), (S{4, 2}));
  EXPECT_EQ(shape("model.layers.2.self_attn.k_proj.weight"), (S{1536, 256}));
  EXPECT_EQ(shape("model.layers.3.mlp.experts.7.down_proj.weight"), (S{256, 128}));
  EXPECT_EQ(shape("model.mtp.layers.2.eh_proj.weight"), (S{256, 512}));
  EXPECT_EQ(dtype("model.mtp.layers.0.mlp.up_proj.weight"), Dtype::F8_E4M3);
  EXPECT_NE(ck.find("model.mtp.layers.1.self_attn.attention_sink_bias"), nullptr);
  EXPECT_EQ(dtype("lm_head.weight"), Dtype::BF16);

  size_t cross = 0;
  for (const auto& n : ck.names())
    if (n.ends_with("_scale_inv") &&
        ck.find(n)->shard != ck.find(n.substr(0, n.size() - 10))->shard)
      ++cross;
  EXPECT_GT(cross, 0u) << "no scale lives in a different shard from its weight";
}

// Every block was scaled by amax/448: its largest code is +-448 (0x7E/0xFE). In the fused layout
// a block spans K and V rows, so the check runs over the fused row space.
TEST(Synth, BlocksAreQuantizedWithRealAmaxScales) {
  test::TempDir dir;
  synthesize_checkpoint(dir / "t", {});
  auto ck = Checkpoint::open(dir / "t");
  auto codes = [&](const std::string& n) { return ck.read_all(*ck.find(n)); };
  // A plain weight: expert gate_proj [128, 256], scale [1, 2].
  auto w = codes("model.layers.1.mlp.experts.3.gate_proj.weight");
  for (int cb = 0; cb < 2; ++cb) {
    int max_mag = 0;
    for (int r = 0; r < 128; ++r)
      for (int c = cb * 128; c < cb * 128 + 128; ++c)
        max_mag = std::max(max_mag, w[r * 256 + c] & 0x7F);
    EXPECT_EQ(max_mag, 0x7E);
  }
  // Full-attention layer 0: per shard h (kv head), K rows [192h, 192h+192) and V rows
  // [128h, 128h+128). Fused block 2h+1 = K rows 128..191 of the head + V rows 0..63.
  auto k = codes("model.layers.0.self_attn.k_proj.weight");
  auto v = codes("model.layers.0.self_attn.v_proj.weight");
  for (int h = 0; h < 4; ++h)
    for (int cb = 0; cb < 2; ++cb) {
      int max_k = 0, max_v_low = 0;
      for (int c = cb * 128; c < cb * 128 + 128; ++c) {
        for (int j = 128; j < 192; ++j) max_k = std::max(max_k, k[(192 * h + j) * 256 + c] & 0x7F);
        for (int j = 0; j < 64; ++j)
          max_v_low = std::max(max_v_low, v[(128 * h + j) * 256 + c] & 0x7F);
      }
      EXPECT_EQ(std::max(max_k, max_v_low), 0x7E) << "head " << h;
    }
  // Scales are positive and finite; dequantized values are in the synthesizer's range.
  auto s = ck.read_all(*ck.find("model.layers.0.self_attn.k_proj.weight_scale_inv"));
  for (size_t i = 0; i < s.size(); i += 4) {
    float f;
    std::memcpy(&f, &s[i], 4);
    EXPECT_TRUE(std::isfinite(f) && f > 0) << f;
    EXPECT_LT(f * 448, 0.2f);
  }
}

TEST(Synth, DeterministicForASeed) {
  test::TempDir dir;
  SynthOptions a, b;
  b.seed = 7;
  synthesize_checkpoint(dir / "a1", a);
  synthesize_checkpoint(dir / "a2", a);
  synthesize_checkpoint(dir / "b", b);
  size_t same = 0, files = 0;
  for (const auto& e : fs::directory_iterator(dir / "a1")) {
    auto name = e.path().filename();
    ++files;
    EXPECT_EQ(test::read_bytes(dir / "a1" / name), test::read_bytes(dir / "a2" / name)) << name;
    same += test::read_bytes(dir / "a1" / name) == test::read_bytes(dir / "b" / name);
  }
  EXPECT_GE(files, 3u);
  EXPECT_LE(same, 2u);  // config.json and the index may match; shards must differ
}

TEST(Synth, OptionsTrimThePreset) {
  test::TempDir dir;
  SynthOptions o;
  o.layers = 2;
  o.experts = 3;
  o.vocab = 64;
  o.mtp_layers = 1;
  o.max_shard_bytes = 1 << 20;
  auto report = synthesize_checkpoint(dir / "t", o);
  auto [count, bytes] = recipe_totals(synth_config(o), 1);
  EXPECT_EQ(report.tensors, count);
  EXPECT_EQ(report.total_bytes, bytes);
  auto c = ModelConfig::load(dir / "t" / "config.json");
  EXPECT_EQ(c.n_routed_experts, 3);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.num_hidden_layers, 2);
}

TEST(Synth, RefusesAnExistingCheckpointAndBadOptions) {
  test::TempDir dir;
  synthesize_checkpoint(dir / "t", {});
  EXPECT_THROW(synthesize_checkpoint(dir / "t", {}), Error);
  SynthOptions o;
  o.layers = 0;
  EXPECT_THROW(synth_config(o), Error);
  o = {};
  o.preset = "huge";
  EXPECT_THROW(synth_config(o), Error);
}

}  // namespace
}  // namespace moeckpt
