// The fused-QKV presets (MiMo-V2.6 and MiMo-V2.5-Pro layouts) are synthesized through the
// exporter: the folders must read back as those layouts, exactly.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <set>

#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/inspect.hpp"
#include "moeckpt/mxfp4.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/synth.hpp"
#include "moeckpt/verify.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;

nlohmann::json index_of(const fs::path& dir) {
  return nlohmann::json::parse(test::read_bytes(dir / kIndexFileName));
}

class FusedPreset : public ::testing::TestWithParam<const char*> {};

// Inspect finds nothing wrong; the layout is the one the preset names: qkv_proj FP8 with one
// grid per TP shard, experts MXFP4 (V2.6) or FP8 (V2.5-Pro), the index's tp_size.
TEST_P(FusedPreset, ReadsBackAsThePublishedLayout) {
  test::TempDir dir;
  SynthOptions o;
  o.preset = GetParam();
  synthesize_checkpoint(dir / "hf", o);
  const bool v26 = o.preset.starts_with("v26");
  auto r = inspect_checkpoint(dir / "hf", {});
  EXPECT_TRUE(r.problems.empty()) << r.problems.front();
  EXPECT_EQ(r.model, v26 ? "MiMo-V2.6" : "MiMo-V2.5-Pro");
  const auto config = synth_config(o);
  const int64_t tp = v26 ? 4 : config["num_key_value_heads"].get<int64_t>();
  size_t fused = 0, mx = 0;
  for (const auto& f : r.fp8) {
    if (f.family == "attention_proj.qkv_proj") {
      ++fused;
      EXPECT_EQ(f.layout, "per_tp_shard_" + std::to_string(tp));
      EXPECT_EQ(f.scale_shape[0] % static_cast<uint64_t>(tp), 0u);
    }
    if (f.layout == "mxfp4") ++mx;
  }
  EXPECT_GT(fused, 0u);
  EXPECT_EQ(mx > 0, v26);
  const auto md = index_of(dir / "hf")["metadata"];
  EXPECT_EQ(md["tp_size"], tp);  // recorded for either (Automodel's V2.5-Pro reader ignores it)
  Checkpoint ck = Checkpoint::open(dir / "hf");
  EXPECT_EQ(ck.find("visual.patch_embed.proj.weight") != nullptr, v26);
  EXPECT_EQ(ck.find("model.layers.0.self_attn.q_proj.weight"), nullptr);
  ASSERT_NE(ck.find("model.layers.0.self_attn.qkv_proj.weight"), nullptr);
}

// from-hf then to-hf gives every tensor back bit for bit (the synthetic values are BF16, which
// the published formats hold exactly once quantized), and the native folder splits q/k/v for
// V2.6 only.
TEST_P(FusedPreset, RoundTripIsBitExact) {
  test::TempDir dir;
  SynthOptions o;
  o.preset = GetParam();
  o.experts = 4;
  synthesize_checkpoint(dir / "hf", o);
  from_hf_dir(dir / "hf", dir / "native", {});
  Checkpoint native = Checkpoint::open(dir / "native");
  EXPECT_EQ(native.find("model.layers.0.self_attn.q_proj.weight") != nullptr,
            o.preset.starts_with("v26"));
  to_hf_dirs({dir / "native"}, dir / "back", {}, std::nullopt);
  VerifyOptions vo;
  auto v = verify_checkpoints(dir / "hf", dir / "back", vo);
  EXPECT_TRUE(v.ok());
  for (const auto& [family, f] : v.families) EXPECT_EQ(f.bitwise_equal, f.elements) << family;
  Checkpoint a = Checkpoint::open(dir / "hf"), b = Checkpoint::open(dir / "back");
  ASSERT_EQ(a.names(), b.names());
  for (const auto& name : a.names())
    EXPECT_EQ(a.read_all(*a.find(name)), b.read_all(*b.find(name))) << name;
}

TEST_P(FusedPreset, DeterministicForASeedAndOptions) {
  test::TempDir dir;
  SynthOptions o;
  o.preset = GetParam();
  o.layers = 2;
  synthesize_checkpoint(dir / "a", o);
  synthesize_checkpoint(dir / "b", o);
  EXPECT_EQ(test::final_files(dir / "a"), test::final_files(dir / "b"));
  o.seed = 3;
  synthesize_checkpoint(dir / "c", o);
  EXPECT_NE(test::final_files(dir / "a"), test::final_files(dir / "c"));
  EXPECT_EQ(synth_config(o)["num_hidden_layers"], 2);
  EXPECT_THROW(synthesize_checkpoint(dir / "a", o), Error);  // holds a checkpoint
}

INSTANTIATE_TEST_SUITE_P(Layouts, FusedPreset, ::testing::Values("v26-tiny", "v25-tiny"));

// --tp-size: V2.6 records the degree it is given; a family with a fixed degree (V2.5-Pro) or no
// fused projection refuses it.
TEST(FusedPresetOptions, TpSizeIsRecordedOrRefused) {
  test::TempDir dir;
  SynthOptions o;
  o.preset = "v26-tiny";
  o.tp_size = 2;
  synthesize_checkpoint(dir / "tp2", o);
  EXPECT_EQ(index_of(dir / "tp2")["metadata"]["tp_size"], 2);
  Checkpoint ck = Checkpoint::open(dir / "tp2");
  const auto* scale = ck.find("model.layers.0.self_attn.qkv_proj.weight_scale_inv");
  ASSERT_NE(scale, nullptr);
  EXPECT_EQ(scale->info->shape[0] % 2, 0u);
  for (const char* preset : {"v25-tiny", "tiny"}) {
    o.preset = preset;
    try {
      synthesize_checkpoint(dir / preset, o);
      ADD_FAILURE() << preset;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      // What is expected is no degree at all, and which presets take one (not "a positive TP
      // degree", which 2 is).
      const std::string m = e.what();
      EXPECT_EQ(m.find("positive"), std::string::npos) << m;
      EXPECT_NE(m.find("a TP degree (2)"), std::string::npos) << m;
      EXPECT_NE(m.find("expected no TP degree for this preset"), std::string::npos) << m;
      EXPECT_NE(m.find("takes one (v26-tiny, v26-full)"), std::string::npos) << m;
    }
    EXPECT_FALSE(fs::exists(dir / preset / kIndexFileName));
    // The same refusal from the options alone, before any destination is looked at.
    EXPECT_THROW(check_synth_options(o), Error);
  }
  o.preset = "v26-tiny";
  o.tp_size = 0;
  try {
    check_synth_options(o);
    ADD_FAILURE() << "tp_size 0";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected a TP degree of at least 1"), std::string::npos)
        << e.what();
  }
  o.tp_size = 2;
  EXPECT_NO_THROW(check_synth_options(o));
  o.preset = "v26-micro";
  o.tp_size.reset();
  EXPECT_THROW(synthesize_checkpoint(dir / "m", o), Error);  // no such preset
}

// MXFP4 experts: every E8M0 scale is a real exponent and every packed byte two E2M1 codes
// whose values match the native weights within the format's step.
TEST(FusedPresetOptions, Mxfp4ExpertsHoldRealScales) {
  test::TempDir dir;
  SynthOptions o;
  o.preset = "v26-tiny";
  o.experts = 2;
  synthesize_checkpoint(dir / "hf", o);
  Checkpoint ck = Checkpoint::open(dir / "hf");
  const auto* s = ck.find("model.layers.1.mlp.experts.1.down_proj.weight_scale");
  ASSERT_NE(s, nullptr);
  const auto scales = ck.read_all(*s);
  std::set<uint8_t> distinct(scales.begin(), scales.end());
  EXPECT_GT(distinct.size(), 2u);  // magnitudes change every 32 rows
  for (uint8_t e : scales) EXPECT_LT(e, numerics::kE8m0Nan);
}

}  // namespace
}  // namespace moeckpt
