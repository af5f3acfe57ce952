// Qwen3-MoE, GLM-4.5 and MiniMax-M2 through the folder commands: from-hf (EP 1 and every rank of an
// uneven split), to-hf of one folder and of every rank's together, verify against the input; the
// precision each release is written back in (BF16 releases stay BF16 without a
// quantization_config, FP8 releases come back code for code); quantize of a BF16 release into the
// FP8 layout and dequantize back; the compat mode's refusal of FP8 input (Qwen3, GLM) or its
// dequantization (MiniMax-M2, as Automodel's adapter).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/synth.hpp"
#include "moeckpt/verify.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

// Every value bitwise equal, every FP8 code equal; `fp8` says whether there were FP8 codes.
void expect_bitwise(const VerifyReport& r, bool fp8) {
  EXPECT_TRUE(r.ok());
  EXPECT_TRUE(r.only_in_a.empty() && r.only_in_b.empty() && r.shape_mismatch.empty());
  uint64_t codes = 0;
  for (const auto& [name, f] : r.families) {
    EXPECT_EQ(f.bitwise_equal, f.elements) << name;
    EXPECT_EQ(f.fp8_equal, f.fp8_elements) << name;
    codes += f.fp8_elements;
  }
  EXPECT_EQ(codes > 0, fp8);
}

size_t count_dtype(const fs::path& dir, Dtype dt) {
  auto ck = Checkpoint::open(dir);
  size_t n = 0;
  for (const auto& name : ck.names()) n += ck.find(name)->info->dtype == dt;
  return n;
}

bool has_quantization_config(const fs::path& dir) {
  return json::parse(test::read_text(dir / "config.json")).contains("quantization_config");
}

class HfMoeConversion : public ::testing::TestWithParam<std::string> {};

TEST_P(HfMoeConversion, EveryCommandKeepsEveryValueInThePublishedPrecision) {
  const bool fp8 = GetParam().ends_with("-fp8") || GetParam().starts_with("minimax");
  test::TempDir dir;
  SynthOptions o;
  o.preset = GetParam();
  o.seed = 7;
  synthesize_checkpoint(dir / "hf", o);
  EXPECT_EQ(count_dtype(dir / "hf", Dtype::F8_E4M3) > 0, fp8);
  from_hf_dir(dir / "hf", dir / "native", {});
  expect_bitwise(verify_checkpoints(dir / "hf", dir / "native", {}), false);
  std::vector<fs::path> ranks;
  for (int64_t r = 0; r < 3; ++r) {  // 8 experts over 3 ranks: 3, 3, 2
    FromHfOptions ep;
    ep.ep_size = 3;
    ep.ep_rank = r;
    ranks.push_back(dir / ("ep" + std::to_string(r)));
    from_hf_dir(dir / "hf", ranks.back(), ep);
    auto ck = Checkpoint::open(ranks.back());
    for (const auto& n : ck.names())
      if (n.ends_with("gate_and_up_projs")) {
        EXPECT_EQ(ck.find(n)->info->shape[0], r < 2 ? 3u : 2u) << n;
      }
  }
  to_hf_dirs({dir / "native"}, dir / "back", {}, std::nullopt);
  to_hf_dirs(ranks, dir / "back_ranks", {}, std::nullopt);
  // A BF16 release comes back BF16 (no quantization_config); an FP8 one code for code.
  expect_bitwise(verify_checkpoints(dir / "hf", dir / "back", {}), fp8);
  EXPECT_EQ(has_quantization_config(dir / "back"), fp8);
  auto a = Checkpoint::open(dir / "back"), b = Checkpoint::open(dir / "back_ranks");
  ASSERT_EQ(a.names(), b.names());
  for (const auto& n : a.names()) EXPECT_EQ(a.read_all(*a.find(n)), b.read_all(*b.find(n))) << n;
  // The compat mode's to_hf: Qwen3's and GLM's adapters ignore quantization=True (BF16 without a
  // quantization_config); MiniMax-M2's casts with ones scales (o_proj too).
  ToHfOptions compat;
  compat.compat = Compat::kAutomodel07;
  to_hf_dirs({dir / "native"}, dir / "compat", compat, std::nullopt);
  const bool casts = GetParam().starts_with("minimax");
  EXPECT_EQ(count_dtype(dir / "compat", Dtype::F8_E4M3) > 0, casts);
  EXPECT_EQ(has_quantization_config(dir / "compat"), casts);
  if (!casts) expect_bitwise(verify_checkpoints(dir / "hf", dir / "compat", {}), false);
}

TEST_P(HfMoeConversion, CompatModeRefusesFp8InputAndQuantizeMakesTheFp8Layout) {
  test::TempDir dir;
  SynthOptions o;
  o.preset = GetParam();
  synthesize_checkpoint(dir / "hf", o);
  if (GetParam().starts_with(
          "minimax")) {  // Automodel's MiniMax adapter dequantizes: so does compat
    FromHfOptions compat;
    compat.compat = Compat::kAutomodel07;
    from_hf_dir(dir / "hf", dir / "compat", compat);
    from_hf_dir(dir / "hf", dir / "default", {});
    expect_bitwise(verify_checkpoints(dir / "compat", dir / "default", {}), false);
    return;
  }
  if (GetParam().ends_with("-fp8")) {
    FromHfOptions compat;
    compat.compat = Compat::kAutomodel07;
    try {
      from_hf_dir(dir / "hf", dir / "x", compat);
      ADD_FAILURE() << "FP8 input converted in compat mode";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUnsupportedLayout);
      EXPECT_NE(std::string(e.what()).find("drops every weight_scale_inv"), std::string::npos)
          << e.what();
    }
    EXPECT_FALSE(fs::exists(dir / "x"));
    return;
  }
  // quantize: the BF16 release into the FP8 layout (attention, dense MLP, experts; 128x128
  // blocks), and dequantize back within one FP8 step of every value.
  quantize_dir(dir / "hf", dir / "fp8", {});
  EXPECT_TRUE(has_quantization_config(dir / "fp8"));
  auto q = Checkpoint::open(dir / "fp8");
  const auto spec = model_spec_for(ModelConfig::load(dir / "fp8" / "config.json"));
  size_t fp8 = 0;
  for (const auto& n : q.names()) {
    const auto k = spec->classify(n);
    if (k.is_scale) continue;
    const bool want = spec->is_published_fp8(n);
    EXPECT_EQ(q.find(n)->info->dtype == Dtype::F8_E4M3, want) << n;
    if (want) {
      EXPECT_NE(q.find(n + "_scale_inv"), nullptr) << n;
    }
    fp8 += want;
  }
  EXPECT_GT(fp8, 0u);
  dequantize_dir(dir / "fp8", dir / "bf16", {});
  EXPECT_FALSE(has_quantization_config(dir / "bf16"));
  VerifyOptions v;
  v.rtol = 0.07;  // E4M3 keeps 3 mantissa bits: one step is at most 1/16 of the value
  v.atol = 1e-4;  // values far below their block's largest fall to subnormal steps
  EXPECT_TRUE(verify_checkpoints(dir / "hf", dir / "bf16", v).ok());
}

// A BF16 release's experts are moved bit for bit into the grouped tensors (torch's copy, which
// Automodel's grouping is): a NaN keeps its payload in compat mode and is refused by default,
// naming the expert's element; every other value lands at its transposed position.
TEST(HfMoeExpertBits, BF16ExpertsAreMovedBitForBit) {
  test::TempDir dir;
  SynthOptions o;
  o.preset = "qwen3-moe-tiny";
  synthesize_checkpoint(dir / "hf", o);
  const std::string name = "model.layers.2.mlp.experts.5.up_proj.weight";  // [96, 320]
  {
    auto ck = Checkpoint::open(dir / "hf");
    const auto* e = ck.find(name);
    ASSERT_NE(e, nullptr);
    const auto& shard = ck.shard(e->shard);
    const uint64_t at = shard.header().data_offset() + e->info->begin + 2 * (7 * 320 + 11);
    auto bytes = test::read_bytes(shard.path());
    bytes.at(at) = 0xC1;  // 0x7FC1: a NaN with a payload
    bytes.at(at + 1) = 0x7F;
    fs::permissions(shard.path(), fs::perms::owner_write, fs::perm_options::add);
    test::write_bytes(shard.path(), bytes);
  }
  try {
    from_hf_dir(dir / "hf", dir / "x", {});
    ADD_FAILURE() << "a NaN converted by default";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNumeric);
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
  }
  FromHfOptions compat;
  compat.compat = Compat::kAutomodel07;
  from_hf_dir(dir / "hf", dir / "native", compat);
  auto in = Checkpoint::open(dir / "hf"), out = Checkpoint::open(dir / "native");
  const auto gate = in.read_all(*in.find("model.layers.2.mlp.experts.5.gate_proj.weight"));
  const auto up = in.read_all(*in.find(name));
  const auto grouped = out.read_all(*out.find("model.layers.2.mlp.experts.gate_and_up_projs"));
  // [8, 320, 192]: slot 5, row d, column j (gate 0..95, up 96..191) = weight[j][d].
  auto at = [&](int64_t d, int64_t j) {
    const size_t i = 2 * static_cast<size_t>((5 * 320 + d) * 192 + j);
    return static_cast<uint16_t>(grouped[i] | grouped[i + 1] << 8);
  };
  auto w = [](const std::vector<uint8_t>& b, int64_t r, int64_t c) {
    const size_t i = 2 * static_cast<size_t>(r * 320 + c);
    return static_cast<uint16_t>(b[i] | b[i + 1] << 8);
  };
  EXPECT_EQ(at(11, 96 + 7), 0x7FC1);
  for (int64_t d = 0; d < 320; ++d)
    for (int64_t j = 0; j < 96; ++j) {
      ASSERT_EQ(at(d, j), w(gate, j, d)) << d << " " << j;
      ASSERT_EQ(at(d, 96 + j), w(up, j, d)) << d << " " << j;
    }
}

INSTANTIATE_TEST_SUITE_P(Presets, HfMoeConversion,
                         ::testing::Values("qwen3-moe-tiny", "qwen3-moe-tiny-fp8", "glm4-moe-tiny",
                                           "glm4-moe-tiny-fp8", "minimax-m2-tiny"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (auto& ch : s)
                             if (ch == '-') ch = '_';
                           return s;
                         });

}  // namespace
}  // namespace moeckpt
