// The adapter against hand-computed expectations: EP ranges, quantize rules, the fused K/V
// dequantization, round trips, EP reassembly and the refusals of the contract.
#include <gtest/gtest.h>

#include <bit>
#include <cstring>
#include <functional>

#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/numerics.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/synth.hpp"
#include "moeckpt/verify.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;

TEST(ExpertRange, SplitsAsAutomodelDoes) {
  auto r = [](int64_t e, int64_t w, int64_t k) {
    auto x = ExpertRange::for_rank(e, w, k);
    return std::make_pair(x.first, x.count);
  };
  EXPECT_EQ(r(6, 4, 0), std::make_pair(int64_t{0}, int64_t{2}));
  EXPECT_EQ(r(6, 4, 1), std::make_pair(int64_t{2}, int64_t{2}));
  EXPECT_EQ(r(6, 4, 2), std::make_pair(int64_t{4}, int64_t{1}));
  EXPECT_EQ(r(6, 4, 3), std::make_pair(int64_t{5}, int64_t{1}));
  EXPECT_EQ(r(256, 8, 7), std::make_pair(int64_t{224}, int64_t{32}));
  EXPECT_EQ(r(3, 8, 5), std::make_pair(int64_t{3}, int64_t{0}));
  EXPECT_THROW(ExpertRange::for_rank(8, 4, 4), Error);
  EXPECT_THROW(ExpertRange::for_rank(8, 4, -1), Error);
  EXPECT_THROW(ExpertRange::for_rank(8, 0, 0), Error);
}

TEST(QuantRules, AutomodelSubstringRule) {
  EXPECT_TRUE(should_quantize_key("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_TRUE(should_quantize_key("model.layers.0.mlp.gate_proj.weight"));
  EXPECT_TRUE(should_quantize_key("model.mtp.layers.0.eh_proj.weight"));
  EXPECT_FALSE(should_quantize_key("model.layers.0.mlp.gate.weight"));
  EXPECT_FALSE(should_quantize_key("model.layers.0.self_attn.o_proj.weight"));
  EXPECT_FALSE(should_quantize_key("model.mtp.layers.0.enorm.weight"));
  EXPECT_FALSE(should_quantize_key("model.mtp.layers.0.final_layernorm.weight"));
  EXPECT_FALSE(should_quantize_key("lm_head.weight"));
  EXPECT_FALSE(should_quantize_key("model.layers.1.mlp.gate.e_score_correction_bias"));
  EXPECT_FALSE(should_quantize_key("visual.blocks.0.attn.qkv.weight"));
  EXPECT_TRUE(should_quantize_key("model.visual.x.weight"));
  EXPECT_TRUE(is_published_fp8_key("model.layers.3.mlp.experts.7.down_proj.weight"));
  EXPECT_FALSE(is_published_fp8_key("model.mtp.layers.0.eh_proj.weight"));
  EXPECT_FALSE(is_published_fp8_key("model.layers.0.self_attn.o_proj.weight"));
}

// A fixture quantized in the T = 4 layout with K much larger than V: full-attention layer 0 of
// the tiny config (768 K rows, 512 V rows, hidden 256), k scale [8, 2], v scale [4, 2].
struct FusedFixture {
  std::vector<uint8_t> q, k, v;
  std::vector<float> qs, ks, vs;
  std::vector<NamedTensor> run(Compat compat) {
    auto bytes = [](const std::vector<float>& f) {
      return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(f.data()), f.size() * 4);
    };
    const std::string p = "model.layers.0.self_attn.";
    MemorySource src({{p + "q_proj.weight", Dtype::F8_E4M3, {1536, 256}, q},
                      {p + "q_proj.weight_scale_inv", Dtype::F32, {12, 2}, bytes(qs)},
                      {p + "k_proj.weight", Dtype::F8_E4M3, {768, 256}, k},
                      {p + "k_proj.weight_scale_inv", Dtype::F32, {8, 2}, bytes(ks)},
                      {p + "v_proj.weight", Dtype::F8_E4M3, {512, 256}, v},
                      {p + "v_proj.weight_scale_inv", Dtype::F32, {4, 2}, bytes(vs)}});
    auto config = ModelConfig::parse(synth_config({}), "tiny");
    FromHfOptions o;
    o.compat = compat;
    o.whole_checkpoint = false;  // one attention layer's q/k/v only
    return run_in_memory(plan_from_hf(src, config, o), src);
  }
};

uint16_t bf16_at(const NamedTensor& t, size_t i) {
  return static_cast<uint16_t>(t.bytes[2 * i] | t.bytes[2 * i + 1] << 8);
}

TEST(FromHf, FusedKvLayoutIsDequantizedWithThePublishedScaleRows) {
  FusedFixture f;
  uint32_t state = 12345;
  auto code = [&]() {
    state = state * 1664525u + 1013904223u;
    uint8_t c = static_cast<uint8_t>(state >> 24);
    return (c & 0x7F) == 0x7F ? uint8_t{0x3C} : c;  // no NaN codes
  };
  f.q.resize(1536 * 256);
  f.k.resize(768 * 256);
  f.v.resize(512 * 256);
  for (auto* w : {&f.q, &f.k, &f.v})
    for (auto& c : *w) c = code();
  f.qs.assign(12 * 2, 0.01f);
  f.ks.resize(8 * 2);
  f.vs.resize(4 * 2);
  for (size_t i = 0; i < f.ks.size(); ++i)
    f.ks[i] = 2.0f + 0.25f * static_cast<float>(i);  // K: large
  for (size_t i = 0; i < f.vs.size(); ++i)
    f.vs[i] = 0.001f * static_cast<float>(i + 1);  // V: small

  auto fused = f.run(Compat::kNone);
  auto plain = f.run(Compat::kAutomodel07);
  auto find = [](std::vector<NamedTensor>& ts, const std::string& suffix) -> const NamedTensor& {
    for (const auto& t : ts)
      if (t.name.ends_with(suffix)) return t;
    throw std::runtime_error("missing " + suffix);
  };
  const auto& kf = find(fused, "k_proj.weight");
  const auto& vf = find(fused, "v_proj.weight");
  const auto& kp = find(plain, "k_proj.weight");
  const auto& vp = find(plain, "v_proj.weight");
  EXPECT_EQ(kf.dtype, Dtype::BF16);
  auto expect = [](uint8_t c, float s) {
    return numerics::f32_to_bf16_rne(numerics::fp8_e4m3fn_to_f32(c) * s);
  };
  size_t differing_v = 0;
  for (int g = 0; g < 768; ++g)
    for (int c = 0; c < 256; ++c) {
      const size_t i = static_cast<size_t>(g * 256 + c);
      const int h = g / 192, j = g % 192;
      ASSERT_EQ(bf16_at(kf, i),
                expect(f.k[i], f.ks[static_cast<size_t>((2 * h + j / 128) * 2 + c / 128)]))
          << "k row " << g;
      ASSERT_EQ(bf16_at(kp, i), expect(f.k[i], f.ks[static_cast<size_t>((g / 128) * 2 + c / 128)]))
          << "k row " << g;
    }
  for (int g = 0; g < 512; ++g)
    for (int c = 0; c < 256; ++c) {
      const size_t i = static_cast<size_t>(g * 256 + c);
      const int h = g / 128, j = g % 128;
      const float s = j < 64 ? f.ks[static_cast<size_t>((2 * h + 1) * 2 + c / 128)]
                             : f.vs[static_cast<size_t>(h * 2 + c / 128)];
      ASSERT_EQ(bf16_at(vf, i), expect(f.v[i], s)) << "v row " << g;
      ASSERT_EQ(bf16_at(vp, i), expect(f.v[i], f.vs[static_cast<size_t>((g / 128) * 2 + c / 128)]))
          << "v row " << g;
      differing_v += bf16_at(vf, i) != bf16_at(vp, i);
    }
  EXPECT_GT(differing_v, 4u * 64 * 200);  // the first 64 V rows of each head differ
  // q rows are the plain grid in both modes.
  EXPECT_EQ(find(fused, "q_proj.weight").bytes, find(plain, "q_proj.weight").bytes);
}

class TinyCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override { synthesize_checkpoint(dir_ / "hf", {}); }
  fs::path hf() const { return dir_ / "hf"; }
  test::TempDir dir_;
};

TEST_F(TinyCheckpoint, RoundTripGivesBackTheFp8Codes) {
  from_hf_dir(hf(), dir_ / "native", {});
  to_hf_dirs({dir_ / "native"}, dir_ / "back", {}, std::nullopt);
  auto r = verify_checkpoints(hf(), dir_ / "back", {});
  uint64_t fp8 = 0, equal = 0, one_step = 0, zeros_lost = 0;
  for (const auto& [_, f] : r.families) {
    fp8 += f.fp8_elements;
    equal += f.fp8_equal;
    one_step += f.fp8_one_step;
    zeros_lost += f.signed_zeros_lost;
  }
  EXPECT_GT(fp8, 10'000'000u);
  EXPECT_GE(static_cast<double>(equal), 0.999 * static_cast<double>(fp8));
  EXPECT_EQ(equal + one_step, fp8);
  EXPECT_EQ(zeros_lost, 0u);
  EXPECT_TRUE(r.only_in_a.empty() && r.only_in_b.empty() && r.shape_mismatch.empty());
  // Published scale shapes, fused K/V included.
  auto back = Checkpoint::open(dir_ / "back");
  auto orig = Checkpoint::open(hf());
  for (const auto& n : orig.names()) {
    ASSERT_NE(back.find(n), nullptr) << n;
    EXPECT_EQ(back.find(n)->info->shape, orig.find(n)->info->shape) << n;
    EXPECT_EQ(back.find(n)->info->dtype, orig.find(n)->info->dtype) << n;
  }
  EXPECT_EQ(back.find("model.layers.3.self_attn.k_proj.weight_scale_inv")->info->shape,
            (std::vector<uint64_t>{8, 2}));
  // And the native side equals the dequantized source exactly.
  EXPECT_TRUE(verify_checkpoints(hf(), dir_ / "native", {}).ok());
}

TEST_F(TinyCheckpoint, F32NativeRoundTripsThroughTheScalarPaths) {
  FromHfOptions f32;
  f32.dtype = Dtype::F32;
  from_hf_dir(hf(), dir_ / "native32", f32);
  auto ck = Checkpoint::open(dir_ / "native32");
  EXPECT_EQ(ck.find("model.layers.1.mlp.experts.gate_and_up_projs")->info->dtype, Dtype::F32);
  EXPECT_EQ(ck.find("model.layers.0.self_attn.q_proj.weight")->info->dtype, Dtype::F32);
  to_hf_dirs({dir_ / "native32"}, dir_ / "back32", {}, std::nullopt);
  auto back = Checkpoint::open(dir_ / "back32"), orig = Checkpoint::open(hf());
  for (const auto& n : orig.names())
    EXPECT_EQ(back.read_all(*back.find(n)), orig.read_all(*orig.find(n))) << n;
}

TEST_F(TinyCheckpoint, EpRanksReassembleToTheFullConversion) {
  from_hf_dir(hf(), dir_ / "ep1", {});
  std::vector<fs::path> ranks;
  for (int64_t r = 0; r < 3; ++r) {  // 8 experts over 3 ranks: 3, 3, 2
    FromHfOptions o;
    o.ep_size = 3;
    o.ep_rank = r;
    ranks.push_back(dir_ / ("ep3_" + std::to_string(r)));
    from_hf_dir(hf(), ranks.back(), o);
    auto ck = Checkpoint::open(ranks.back());
    auto* gu = ck.find("model.layers.1.mlp.experts.gate_and_up_projs");
    ASSERT_NE(gu, nullptr);
    EXPECT_EQ(gu->info->shape[0], r < 2 ? 3u : 2u);
    EXPECT_EQ(ck.shard(0).header().metadata().at(kMetaExpertStart), std::to_string(r * 3));
    // The rank's slice of the EP1 tensor, byte for byte.
    auto full = Checkpoint::open(dir_ / "ep1");
    auto whole = full.read_all(*full.find("model.layers.1.mlp.experts.gate_and_up_projs"));
    auto part = ck.read_all(*gu);
    const size_t slot = 256 * 256 * 2;
    EXPECT_TRUE(
        std::equal(part.begin(), part.end(), whole.begin() + static_cast<long>(r * 3 * slot)));
  }
  to_hf_dirs(ranks, dir_ / "from_ranks", {}, std::nullopt);
  to_hf_dirs({dir_ / "ep1"}, dir_ / "from_ep1", {}, std::nullopt);
  auto a = Checkpoint::open(dir_ / "from_ranks"), b = Checkpoint::open(dir_ / "from_ep1");
  ASSERT_EQ(a.names(), b.names());
  for (const auto& n : a.names()) EXPECT_EQ(a.read_all(*a.find(n)), b.read_all(*b.find(n))) << n;
  // A missing rank is refused.
  EXPECT_THROW(to_hf_dirs({ranks[0], ranks[1]}, dir_ / "partial", {}, std::nullopt), Error);
  EXPECT_FALSE(fs::exists(dir_ / "partial" / kIndexFileName));
  EXPECT_FALSE(fs::exists(dir_ / "partial" / kSingleFileName));
}

TEST_F(TinyCheckpoint, QuantNoneWritesBf16AndDropsQuantizationConfig) {
  from_hf_dir(hf(), dir_ / "native", {});
  ToHfOptions o;
  o.quant = QuantMode::kNone;
  to_hf_dirs({dir_ / "native"}, dir_ / "bf16", o, std::nullopt);
  auto cfg = ModelConfig::load(dir_ / "bf16" / "config.json");
  EXPECT_FALSE(cfg.raw.contains("quantization_config"));
  auto ck = Checkpoint::open(dir_ / "bf16");
  for (const auto& n : ck.names()) {
    EXPECT_FALSE(n.ends_with("_scale_inv")) << n;
    EXPECT_NE(ck.find(n)->info->dtype, Dtype::F8_E4M3) << n;
  }
  EXPECT_TRUE(verify_checkpoints(dir_ / "bf16", dir_ / "native", {}).ok());
  EXPECT_TRUE(verify_checkpoints(hf(), dir_ / "bf16", {}).ok());
}

TEST_F(TinyCheckpoint, ExcludeRegexDefaultSearchesCompatAnchors) {
  from_hf_dir(hf(), dir_ / "native", {});
  ToHfOptions o;
  o.exclude_regex = "experts\\.[0-3]\\.";
  to_hf_dirs({dir_ / "native"}, dir_ / "a", o, std::nullopt);
  auto a = Checkpoint::open(dir_ / "a");
  EXPECT_EQ(a.find("model.layers.1.mlp.experts.2.up_proj.weight"), nullptr);
  EXPECT_EQ(a.find("model.layers.1.mlp.experts.2.up_proj.weight_scale_inv"), nullptr);
  EXPECT_NE(a.find("model.layers.1.mlp.experts.4.up_proj.weight"), nullptr);
  o.compat = Compat::kAutomodel07;  // re.match: anchored at the start -> excludes nothing here
  to_hf_dirs({dir_ / "native"}, dir_ / "b", o, std::nullopt);
  EXPECT_NE(Checkpoint::open(dir_ / "b").find("model.layers.1.mlp.experts.2.up_proj.weight"),
            nullptr);
  o.exclude_regex = "model\\.layers\\.1\\.";
  to_hf_dirs({dir_ / "native"}, dir_ / "c", o, std::nullopt);
  auto c = Checkpoint::open(dir_ / "c");
  for (const auto& n : c.names()) EXPECT_FALSE(n.starts_with("model.layers.1.")) << n;
  EXPECT_NE(c.find("model.layers.2.mlp.experts.0.up_proj.weight"), nullptr);
}

TEST_F(TinyCheckpoint, ConvertSingleTensorSplitsExpertsInOrder) {
  from_hf_dir(hf(), dir_ / "native", {});
  auto ck = Checkpoint::open(dir_ / "native");
  const std::string name = "model.layers.2.mlp.experts.gate_and_up_projs";
  auto bytes = ck.read_all(*ck.find(name));
  auto config = ModelConfig::load(hf() / "config.json");
  ToHfOptions o;
  o.compat = Compat::kAutomodel07;
  // As an EP shard holding experts 4..7 (slots 4..7 of the full tensor).
  std::vector<uint8_t> half(bytes.begin() + static_cast<long>(bytes.size() / 2), bytes.end());
  auto out = convert_single_tensor_to_hf(name, Dtype::BF16, {4, 256, 256}, half, config, o, 4);
  ASSERT_EQ(out.size(), 16u);
  EXPECT_EQ(out[0].name, "model.layers.2.mlp.experts.4.gate_proj.weight");
  EXPECT_EQ(out[1].name, "model.layers.2.mlp.experts.4.gate_proj.weight_scale_inv");
  EXPECT_EQ(out[2].name, "model.layers.2.mlp.experts.4.up_proj.weight");
  EXPECT_EQ(out[15].name, "model.layers.2.mlp.experts.7.up_proj.weight_scale_inv");
  EXPECT_EQ(out[0].dtype, Dtype::F8_E4M3);
  EXPECT_EQ(out[0].shape, (std::vector<uint64_t>{128, 256}));
  EXPECT_EQ(out[1].shape, (std::vector<uint64_t>{1, 2}));
  float one;
  std::memcpy(&one, out[1].bytes.data(), 4);
  EXPECT_EQ(one, 1.0f);
  // gate_proj[j][d] = cast(slot[d][j]).
  const size_t slot0 = bytes.size() / 2;
  for (int j : {0, 5, 127})
    for (int d : {0, 17, 255}) {
      const size_t i = slot0 + static_cast<size_t>(d * 256 + j) * 2;
      float x = numerics::bf16_to_f32(static_cast<uint16_t>(bytes[i] | bytes[i + 1] << 8));
      EXPECT_EQ(out[0].bytes[static_cast<size_t>(j * 256 + d)],
                numerics::f32_to_fp8_e4m3fn_torch(x));
    }
}

// Refusals: one clear message naming the tensor, and nothing under a final name.
class Refusals : public TinyCheckpoint {
 protected:
  // A copy of checkpoint `from` (with the tiny config.json) in which `edit` may change any tensor's
  // shape and bytes, or drop it by returning false; `add` tensors are appended.
  using Edit =
      std::function<bool(const std::string&, std::vector<uint64_t>&, std::vector<uint8_t>&)>;
  using Added = std::vector<std::pair<TensorSpec, std::vector<uint8_t>>>;
  fs::path edited_copy(const fs::path& from, const std::string& name, const Edit& edit,
                       Added add = {}) {
    auto ck = Checkpoint::open(from);
    std::vector<TensorSpec> specs;
    std::vector<std::vector<uint8_t>> data;
    for (const auto& n : ck.names()) {
      const auto* e = ck.find(n);
      auto shape = e->info->shape;
      auto bytes = ck.read_all(*e);
      if (!edit(n, shape, bytes)) continue;
      specs.push_back({n, e->info->dtype, shape});
      data.push_back(std::move(bytes));
    }
    for (auto& [spec, bytes] : add) {
      specs.push_back(spec);
      data.push_back(std::move(bytes));
    }
    const fs::path out = dir_ / name;
    fs::create_directories(out);
    fs::copy_file(hf() / "config.json", out / "config.json");
    CheckpointWriter w(out, specs);
    for (size_t i = 0; i < specs.size(); ++i) w.write(i, 0, data[i]);
    w.commit();
    return out;
  }
  // The tiny checkpoint without `drop`, plus `add`.
  fs::path variant(const std::string& name, const std::vector<std::string>& drop, Added add = {}) {
    return edited_copy(
        hf(), name,
        [&](const std::string& n, auto&, auto&) {
          return std::find(drop.begin(), drop.end(), n) == drop.end();
        },
        std::move(add));
  }
  void expect_refused(const fs::path& src, const FromHfOptions& o, const std::string& fragment) {
    auto dst = dir_ / (src.filename().string() + "_out");
    try {
      from_hf_dir(src, dst, o);
      FAIL() << "accepted; expected " << fragment;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(dst / kSingleFileName));
    EXPECT_FALSE(fs::exists(dst / kIndexFileName));
    EXPECT_FALSE(fs::exists(dst / "config.json"));
  }
};

TEST_F(Refusals, MissingExpertProjectionIsNamed) {
  auto src = variant("missing", {"model.layers.2.mlp.experts.5.down_proj.weight",
                                 "model.layers.2.mlp.experts.5.down_proj.weight_scale_inv"});
  expect_refused(src, {}, "model.layers.2.mlp.experts.5.down_proj.weight");
  FromHfOptions rank0;  // experts 0..3 of 2 ranks: expert 5 is not needed
  rank0.ep_size = 2;
  EXPECT_NO_THROW(from_hf_dir(src, dir_ / "rank0", rank0));
}

TEST_F(Refusals, ScaleTooSmallAndFp8WithoutScale) {
  const std::string w = "model.layers.1.mlp.experts.0.down_proj.weight";
  auto small = variant("small", {w + "_scale_inv"},
                       {{{w + "_scale_inv", Dtype::F32, {1, 1}}, std::vector<uint8_t>(4, 0x3F)}});
  expect_refused(small, {}, "is too small for weight [256, 128]");
  FromHfOptions compat;
  compat.compat = Compat::kAutomodel07;
  expect_refused(small, compat, "is too small");
  auto noscale = variant("noscale", {"model.layers.1.self_attn.q_proj.weight_scale_inv"});
  expect_refused(noscale, {}, "FP8 weight without a '_scale_inv' companion");
  from_hf_dir(noscale, dir_ / "noscale_compat", compat);  // Automodel passes it through as FP8
  auto ck = Checkpoint::open(dir_ / "noscale_compat");
  EXPECT_EQ(ck.find("model.layers.1.self_attn.q_proj.weight")->info->dtype, Dtype::F8_E4M3);
}

TEST_F(Refusals, NonTwoDimensionalWeightWithScaleAndBadEpRank) {
  auto src = variant("three_d", {"model.layers.0.mlp.up_proj.weight"},
                     {{{"model.layers.0.mlp.up_proj.weight", Dtype::F8_E4M3, {2, 256, 256}},
                       std::vector<uint8_t>(2 * 256 * 256, 0x38)}});
  // The config's shape is checked first; a 3-D weight under another name would be "not 2-D".
  expect_refused(src, {}, "shape [2, 256, 256] disagrees with config.json (expected [512, 256])");
  FromHfOptions bad;
  bad.ep_size = 4;
  bad.ep_rank = 4;
  expect_refused(hf(), bad, "EP rank 4 is outside [0, 4)");
}

TEST_F(Refusals, BadScaleValuesAndNanCodes) {
  const std::string w = "model.layers.0.mlp.gate_proj.weight";
  auto ck = Checkpoint::open(hf());
  auto scale = ck.read_all(*ck.find(w + "_scale_inv"));
  float zero = 0.0f;
  std::memcpy(scale.data() + 4, &zero, 4);
  auto src =
      variant("zero_scale", {w + "_scale_inv"}, {{{w + "_scale_inv", Dtype::F32, {4, 2}}, scale}});
  expect_refused(src, {}, "scale entry [0, 1] is 0");
  auto codes = ck.read_all(*ck.find(w));
  codes[3] = 0xFF;
  auto nan = variant("nan_code", {w}, {{{w, Dtype::F8_E4M3, {512, 256}}, codes}});
  expect_refused(nan, {}, "element [0, 3] is NaN (FP8 code 0xff)");
  FromHfOptions compat;
  compat.compat = Compat::kAutomodel07;
  from_hf_dir(nan, dir_ / "nan_compat", compat);
  auto out = Checkpoint::open(dir_ / "nan_compat");
  auto bytes = out.read_all(*out.find(w));
  EXPECT_EQ(bytes[6], 0xFF);  // torch's vectorized NaN: 0xFFFF
  EXPECT_EQ(bytes[7], 0xFF);
}

TEST_F(Refusals, BlockQuantizationRefusesNonFiniteValues) {
  from_hf_dir(hf(), dir_ / "native", {});
  edited_copy(dir_ / "native", "inf_native", [](const std::string& n, auto&, auto& bytes) {
    if (n != "model.layers.2.mlp.experts.gate_and_up_projs") return true;
    // slot 1, row d = 3, column 130 (up_proj row 2): +inf
    const size_t i = (1 * 256 * 256 + 3 * 256 + 130) * 2;
    bytes[i] = 0x80;
    bytes[i + 1] = 0x7F;
    return true;
  });
  try {
    to_hf_dirs({dir_ / "inf_native"}, dir_ / "inf_out", {}, std::nullopt);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("slot 1 element [2, 3] of the weight to quantize is inf"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "inf_out" / kSingleFileName));
  ToHfOptions cast;
  cast.quant = QuantMode::kCast;  // torch's cast turns it into a NaN code, as Automodel does
  to_hf_dirs({dir_ / "inf_native"}, dir_ / "inf_cast", cast, std::nullopt);
  auto out = Checkpoint::open(dir_ / "inf_cast");
  EXPECT_EQ(out.read_all(*out.find("model.layers.2.mlp.experts.1.up_proj.weight"))[2 * 256 + 3],
            0x7F);
}

TEST_F(Refusals, GroupedExpertDimensionMustMatchConfig) {
  from_hf_dir(hf(), dir_ / "native", {});
  edited_copy(dir_ / "native", "bad_native", [](const std::string& n, auto& shape, auto& bytes) {
    if (n != "model.layers.1.mlp.experts.down_projs") return true;
    shape[0] = 7;  // drop the last expert: 7 of 8
    bytes.resize(bytes.size() / 8 * 7);
    return true;
  });
  try {
    to_hf_dirs({dir_ / "bad_native"}, dir_ / "bad_out", {}, std::nullopt);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("down_projs"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("7 of the 8 experts"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "bad_out" / kSingleFileName));
}

}  // namespace
}  // namespace moeckpt

namespace moeckpt {
namespace {

TEST(QuantRules, VisualAndAudioKeysAreExcludedFromAutomodel07On) {
  EXPECT_TRUE(should_quantize_key("visual.blocks.0.attn.qkv.weight", Compat::kAutomodel06));
  EXPECT_FALSE(should_quantize_key("visual.blocks.0.attn.qkv.weight", Compat::kAutomodel07));
  EXPECT_TRUE(should_quantize_key("audio.encoder.proj.weight", Compat::kAutomodel06));
  EXPECT_FALSE(should_quantize_key("audio.encoder.proj.weight"));
  EXPECT_TRUE(should_quantize_key("model.visual.x.weight", Compat::kAutomodel07));  // startswith
  EXPECT_FALSE(should_quantize_key("model.norm.weight", Compat::kAutomodel06));
  EXPECT_EQ(parse_compat("automodel"), Compat::kAutomodel07);
  EXPECT_EQ(parse_compat("automodel-0.6"), Compat::kAutomodel06);
  EXPECT_FALSE(parse_compat("automodel-0.8"));
  ToHfOptions o;
  o.quant = QuantMode::kNone;
  o.compat = Compat::kAutomodel06;
  EXPECT_EQ(effective_quant(o), QuantMode::kCast);
  o.compat = Compat::kAutomodel07;
  EXPECT_EQ(effective_quant(o), QuantMode::kNone);
  o.quant = QuantMode::kBlock;
  EXPECT_EQ(effective_quant(o), QuantMode::kCast);
}

}  // namespace
}  // namespace moeckpt
