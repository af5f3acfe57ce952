// Byte-for-byte parity with NeMo Automodel 0.7.0's and 0.6.0's MiMoV2FlashStateDictAdapter
// (goldens named *_am06 come from 0.6.0, whose to_hf ignores `quantization`). The goldens
// (tests/data/goldens/*.json, made by tools/make_all_goldens.sh with torch 2.11) hold the SHA-256
// of every tensor the reference produced; the inputs are regenerated (tiny: `synth --seed 1`) or
// committed (ragged) and checked against the digests the goldens were made from.
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kData = MOECKPT_TEST_DATA_DIR;

std::string sha256(std::span<const uint8_t> bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(bytes.data(), bytes.size(), md, &n, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < n; ++i) out += {hex[md[i] >> 4], hex[md[i] & 15]};
  return out;
}

json load_golden(const std::string& name) {
  std::ifstream f(kData / "goldens" / (name + ".json"));
  return json::parse(f);
}

// Every tensor of `actual` matches `expected` (name set, dtype, shape, digest).
void expect_matches(
    const std::map<std::string, std::tuple<Dtype, std::vector<uint64_t>, std::string>>& actual,
    const json& expected, const std::string& what) {
  SCOPED_TRACE(what);
  std::set<std::string> names;
  for (auto it = expected.begin(); it != expected.end(); ++it) {
    names.insert(it.key());
    auto a = actual.find(it.key());
    if (a == actual.end()) {
      ADD_FAILURE() << "missing output " << it.key();
      continue;
    }
    const auto& [dtype, shape, digest] = a->second;
    EXPECT_EQ(dtype_name(dtype), (*it)["dtype"].get<std::string>()) << it.key();
    EXPECT_EQ(shape, (*it)["shape"].get<std::vector<uint64_t>>()) << it.key();
    EXPECT_EQ(digest, (*it)["sha256"].get<std::string>()) << it.key();
  }
  for (const auto& [name, _] : actual) EXPECT_TRUE(names.count(name)) << "extra output " << name;
}

using Digests = std::map<std::string, std::tuple<Dtype, std::vector<uint64_t>, std::string>>;

Digests digest_checkpoint(const fs::path& dir) {
  auto ck = Checkpoint::open(dir);
  Digests d;
  for (const auto& n : ck.names()) {
    const auto* e = ck.find(n);
    d[n] = {e->info->dtype, e->info->shape, sha256(ck.read_all(*e))};
  }
  return d;
}

Digests digest_tensors(const std::vector<NamedTensor>& ts) {
  Digests d;
  for (const auto& t : ts) d[t.name] = {t.dtype, t.shape, sha256(t.bytes)};
  return d;
}

// The synth preset a golden's input was made from: "tiny*" the default one, a family's
// ("deepseek_v3_tiny_q_proj", "qwen3_moe_tiny", ...) the preset of that name with dashes; empty:
// a committed fixture.
std::string golden_preset(const std::string& golden) {
  if (golden.starts_with("tiny")) return "tiny";
  if (golden.starts_with("ragged")) return "";
  std::string p = golden;
  std::replace(p.begin(), p.end(), '_', '-');
  return p;
}

class GoldenParity : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    golden_ = load_golden(GetParam());
    compat_ = GetParam().ends_with("_am06") ? Compat::kAutomodel06 : Compat::kAutomodel07;
    attn_ = GetParam().ends_with("_te") ? AttnBackend::kTe : AttnBackend::kSdpa;
    if (const auto preset = golden_preset(GetParam()); !preset.empty()) {
      hf_ = dir_ / "hf";
      SynthOptions o;
      o.seed = 1;
      if (preset != "tiny") o.preset = preset;
      synthesize_checkpoint(hf_, o);
    } else {
      hf_ = kData / "ragged" / "hf";
    }
    // The input is the one the goldens were made from.
    expect_matches(digest_checkpoint(hf_), golden_["input"], "input");
    config_ = ModelConfig::load(hf_ / "config.json");
  }

  std::vector<int64_t> ep_sizes() const {
    std::set<int64_t> sizes;
    for (auto it = golden_["outputs"].begin(); it != golden_["outputs"].end(); ++it)
      if (it.key().starts_with("from_hf_ep")) sizes.insert(std::stoll(it.key().substr(10)));
    return {sizes.begin(), sizes.end()};
  }

  fs::path from_hf(int64_t w, int64_t r) {
    FromHfOptions o;
    o.compat = compat_;
    o.attn_backend = attn_;
    o.ep_size = w;
    o.ep_rank = r;
    auto dst = dir_ / fmt("native_ep{}_{}", w, r);
    if (!fs::exists(dst)) from_hf_dir(hf_, dst, o);
    return dst;
  }
  static std::string fmt(const char* f, int64_t a, int64_t b) {
    std::string s(f);
    s.replace(s.find("{}"), 2, std::to_string(a));
    s.replace(s.find("{}"), 2, std::to_string(b));
    return s;
  }

  test::TempDir dir_;
  fs::path hf_;
  json golden_;
  ModelConfig config_;
  Compat compat_ = Compat::kAutomodel07;
  AttnBackend attn_ = AttnBackend::kSdpa;  // "_te": Automodel's TE naming of the sink
};

TEST_P(GoldenParity, FromHfEveryEpRankIsByteIdentical) {
  auto sizes = ep_sizes();
  EXPECT_GE(sizes.size(), 2u);
  for (int64_t w : sizes)
    for (int64_t r = 0; r < w; ++r)
      expect_matches(digest_checkpoint(from_hf(w, r)),
                     golden_["outputs"][fmt("from_hf_ep{}_rank{}", w, r)],
                     fmt("from_hf ep {} rank {}", w, r));
}

TEST_P(GoldenParity, ToHfCastIsByteIdentical) {
  ToHfOptions o;
  o.compat = compat_;
  o.attn_backend = attn_;
  to_hf_dirs({from_hf(1, 0)}, dir_ / "to_hf", o, std::nullopt);
  expect_matches(digest_checkpoint(dir_ / "to_hf"), golden_["outputs"]["to_hf"], "to_hf");
  // Every EP rank's folder together gives the same checkpoint.
  to_hf_dirs({from_hf(2, 0), from_hf(2, 1)}, dir_ / "to_hf_ep2", o, std::nullopt);
  expect_matches(digest_checkpoint(dir_ / "to_hf_ep2"), golden_["outputs"]["to_hf"],
                 "to_hf of 2 ranks");
  // One rank's shard alone: Automodel's DTensor path offsets the expert ids.
  for (int64_t r = 0; r < 2; ++r) {
    CheckpointSource src({from_hf(2, r)});
    ToHfOptions single = o;
    single.require_all_experts = false;
    auto start = std::stoll(src.metadata(0).at(kMetaExpertStart));
    auto out = run_in_memory(plan_to_hf(src, config_, single, {start}), src);
    expect_matches(digest_tensors(out), golden_["outputs"][fmt("to_hf_ep{}_rank{}", 2, r)],
                   fmt("to_hf ep {} rank {}", 2, r));
  }
}

// A native state dict saved by other tools (torch save_file of Automodel's from_hf output): no
// moeckpt metadata, no config.json beside it; the expert range is then the full set.
TEST_P(GoldenParity, ToHfOfAForeignNativeStateDict) {
  auto ck = Checkpoint::open(from_hf(1, 0));
  std::vector<TensorSpec> specs;
  for (const auto& n : ck.names())
    specs.push_back({n, ck.find(n)->info->dtype, ck.find(n)->info->shape});
  fs::create_directories(dir_ / "foreign");
  {
    CheckpointWriter w(dir_ / "foreign", specs,
                       {.max_shard_bytes = 1 << 20,
                        .metadata = {{"format", "pt"}},
                        .index_metadata = {},
                        .completed = {},
                        .on_shard_committed = {},
                        .file_of = {}});
    for (size_t i = 0; i < specs.size(); ++i) w.write(i, 0, ck.read_all(*ck.find(specs[i].name)));
    w.commit();
  }
  ToHfOptions o;
  o.compat = compat_;
  o.attn_backend = attn_;
  EXPECT_THROW(to_hf_dirs({dir_ / "foreign"}, dir_ / "x", o, std::nullopt), Error);  // no config
  to_hf_dirs({dir_ / "foreign"}, dir_ / "foreign_hf", o, hf_ / "config.json");
  expect_matches(digest_checkpoint(dir_ / "foreign_hf"), golden_["outputs"]["to_hf"], "foreign");
}

// to_hf(sd) with Automodel's default quantization=False: BF16 in 0.7; in 0.6, which ignores the
// flag, FP8 with ones scales (the compat mode's effective_quant).
TEST_P(GoldenParity, ToHfWithoutQuantizationMatchesAutomodelDefault) {
  ToHfOptions o;
  o.quant = QuantMode::kNone;
  o.compat = compat_;
  o.attn_backend = attn_;
  to_hf_dirs({from_hf(1, 0)}, dir_ / "noquant", o, std::nullopt);
  expect_matches(digest_checkpoint(dir_ / "noquant"), golden_["outputs"]["to_hf_noquant"],
                 "noquant");
  // The default mode's --quant none writes the same (under TE it writes sinks back as published,
  // BF16 attention_sink_bias, where Automodel keeps the native F32).
  if (compat_ == Compat::kAutomodel07 && attn_ == AttnBackend::kSdpa) {
    ToHfOptions plain;
    plain.quant = QuantMode::kNone;
    to_hf_dirs({from_hf(1, 0)}, dir_ / "noquant_default", plain, std::nullopt);
    expect_matches(digest_checkpoint(dir_ / "noquant_default"), golden_["outputs"]["to_hf_noquant"],
                   "noquant default mode");
  }
}

TEST_P(GoldenParity, ExcludeGivesAutomodelsKeySet) {
  const json& cases = golden_["to_hf_exclude"];
  ASSERT_GE(cases.size(), 2u);
  CheckpointSource src({from_hf(1, 0)});
  for (auto it = cases.begin(); it != cases.end(); ++it) {
    ToHfOptions o;
    o.compat = compat_;
    o.attn_backend = attn_;
    o.exclude_regex = it.key();
    std::vector<std::string> keys;
    for (const auto& spec : plan_to_hf(src, config_, o, {0}).outputs) keys.push_back(spec.name);
    std::sort(keys.begin(), keys.end());
    auto want = (*it)["quantization=True"].get<std::vector<std::string>>();
    std::sort(want.begin(), want.end());
    EXPECT_EQ(keys, want) << it.key();
    // quantization=False: BF16 key set in 0.7, the same FP8 key set in 0.6.
    o.quant = QuantMode::kNone;
    keys.clear();
    for (const auto& spec : plan_to_hf(src, config_, o, {0}).outputs) keys.push_back(spec.name);
    std::sort(keys.begin(), keys.end());
    want = (*it)["quantization=False"].get<std::vector<std::string>>();
    std::sort(want.begin(), want.end());
    EXPECT_EQ(keys, want) << it.key() << " quantization=False";
  }
}

// DeepSeek-V3 goldens: tools/make_deepseek_goldens.py (Automodel 0.7.0's DeepSeekV3StateDictAdapter
// as DeepseekV3ForCausalLM builds it) on `synth --preset deepseek-v3-tiny[-q-proj] --seed 1`;
// Qwen3-MoE, GLM-4.5 and MiniMax-M2: tools/make_hf_moe_goldens.py (the adapter each family's
// Automodel model class builds) on `synth --preset qwen3-moe-tiny|glm4-moe-tiny|minimax-m2-tiny`.
INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenParity,
                         ::testing::Values("tiny", "ragged", "tiny_am06", "ragged_am06", "tiny_te",
                                           "deepseek_v3_tiny", "deepseek_v3_tiny_q_proj",
                                           "qwen3_moe_tiny", "glm4_moe_tiny", "minimax_m2_tiny"));

// Without a fused K/V scale layout to read differently, the default from-hf is Automodel's on
// every tensor and every EP rank (DeepSeek-V3: plain 128x128 grids, ragged blocks).
class GoldenParityDefaultMode : public GoldenParity {};

TEST_P(GoldenParityDefaultMode, FromHfEqualsAutomodelWhereNoLayoutDiffers) {
  for (int64_t w : ep_sizes())
    for (int64_t r = 0; r < w; ++r) {
      FromHfOptions o;
      o.ep_size = w;
      o.ep_rank = r;
      const auto dst = dir_ / fmt("default_ep{}_{}", w, r);
      from_hf_dir(hf_, dst, o);
      expect_matches(digest_checkpoint(dst), golden_["outputs"][fmt("from_hf_ep{}_rank{}", w, r)],
                     fmt("default from_hf ep {} rank {}", w, r));
    }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenParityDefaultMode,
                         ::testing::Values("deepseek_v3_tiny", "deepseek_v3_tiny_q_proj",
                                           "qwen3_moe_tiny", "glm4_moe_tiny", "minimax_m2_tiny",
                                           "gpt_oss_tiny"));

// BF16 inputs around the FP8 range limits (447..466, 480, +-inf, 2^-10, 1.5*2^-10, -0, NaN) cast
// exactly as torch 2.11 does.
TEST(GoldenParitySpecial, ToHfCastOfRangeLimitsIsByteIdentical) {
  auto golden = load_golden("ragged");
  test::TempDir dir;
  fs::create_directories(dir / "native");
  fs::copy_file(kData / "ragged" / "to_hf_special_input.safetensors",
                dir / "native" / kSingleFileName);
  fs::copy_file(kData / "ragged" / "hf" / "config.json", dir / "native" / "config.json");
  expect_matches(digest_checkpoint(dir / "native"), golden["outputs"]["to_hf_special_input"],
                 "input");
  ToHfOptions o;
  o.compat = Compat::kAutomodel07;
  to_hf_dirs({dir / "native"}, dir / "out", o, std::nullopt);
  expect_matches(digest_checkpoint(dir / "out"), golden["outputs"]["to_hf_special"],
                 "to_hf_special");
}

// The same range limits planted into DeepSeek-V3 tensors (a grouped expert tensor, q_b_proj or
// q_proj, o_proj, a dense down_proj) at the positions the goldens record, in our own from-hf
// output: the input equals Automodel's, and its cast gives Automodel's bytes. Qwen3-MoE and
// GLM-4.5 (a shared expert too): Automodel ignores quantization=True, the values pass through;
// MiniMax-M2 casts them.
TEST(GoldenParitySpecial, FamiliesToHfCastOfRangeLimitsIsByteIdentical) {
  for (const std::string name : {"deepseek_v3_tiny", "deepseek_v3_tiny_q_proj", "qwen3_moe_tiny",
                                 "glm4_moe_tiny", "minimax_m2_tiny"}) {
    SCOPED_TRACE(name);
    auto golden = load_golden(name);
    test::TempDir dir;
    SynthOptions so;
    so.seed = 1;
    so.preset = golden_preset(name);
    synthesize_checkpoint(dir / "hf", so);
    FromHfOptions fo;
    fo.compat = Compat::kAutomodel07;
    from_hf_dir(dir / "hf", dir / "native", fo);
    auto ck = Checkpoint::open(dir / "native");
    const json& special = golden["special"];
    std::vector<uint16_t> bits;
    for (const auto& b : special["bf16_bits"])
      bits.push_back(static_cast<uint16_t>(std::stoul(b.get<std::string>(), nullptr, 16)));
    std::vector<TensorSpec> specs;
    std::vector<std::vector<uint8_t>> data;
    for (auto it = special["tensors"].begin(); it != special["tensors"].end(); ++it) {
      const auto* e = ck.find(it.key());
      ASSERT_NE(e, nullptr) << it.key();
      specs.push_back({it.key(), e->info->dtype, e->info->shape});
      auto bytes = ck.read_all(*e);
      const auto idx = (*it)["flat_index"].get<std::vector<uint64_t>>();
      ASSERT_EQ(idx.size(), bits.size());
      for (size_t i = 0; i < idx.size(); ++i) std::memcpy(&bytes.at(2 * idx[i]), &bits[i], 2);
      data.push_back(std::move(bytes));
    }
    fs::create_directories(dir / "special");
    {
      CheckpointWriter w(dir / "special", specs,
                         {.max_shard_bytes = 1 << 30,
                          .metadata = {{"format", "pt"}},
                          .index_metadata = {},
                          .completed = {},
                          .on_shard_committed = {},
                          .file_of = {}});
      for (size_t i = 0; i < specs.size(); ++i) w.write(i, 0, data[i]);
      w.commit();
    }
    expect_matches(digest_checkpoint(dir / "special"), golden["outputs"]["to_hf_special_input"],
                   "input");
    ToHfOptions o;
    o.compat = Compat::kAutomodel07;
    o.require_all_experts = false;  // a few tensors, as the reference's per-tensor to_hf takes
    to_hf_dirs({dir / "special"}, dir / "out", o, dir / "hf" / "config.json");
    expect_matches(digest_checkpoint(dir / "out"), golden["outputs"]["to_hf_special"],
                   "to_hf_special");
  }
}

// Without NaN codes (the ragged fixture with its two NaN codes restored), the ragged checkpoint has
// no fused layout: default from-hf equals Automodel's on every tensor.
TEST(GoldenParityNoNan, DefaultFromHfEqualsCompatWithoutTheFusedLayout) {
  auto golden = load_golden("ragged_nonan");
  test::TempDir dir;
  fs::copy(kData / "ragged" / "hf", dir / "hf");
  {
    const fs::path shard = dir / "hf" / "model-00002-of-00002.safetensors";
    auto bytes = test::read_bytes(shard);
    ASSERT_EQ(bytes.at(383229), 0x7F);
    ASSERT_EQ(bytes.at(383230), 0xFF);
    bytes[383229] = 0x5D;
    bytes[383230] = 0xCD;
    fs::permissions(shard, fs::perms::owner_write, fs::perm_options::add);
    test::write_bytes(shard, bytes);
  }
  expect_matches(digest_checkpoint(dir / "hf"), golden["input"], "input");
  FromHfOptions compat;
  compat.compat = Compat::kAutomodel07;
  from_hf_dir(dir / "hf", dir / "compat", compat);
  from_hf_dir(dir / "hf", dir / "default", {});
  expect_matches(digest_checkpoint(dir / "compat"), golden["outputs"]["from_hf_ep1_rank0"],
                 "compat");
  expect_matches(digest_checkpoint(dir / "default"), golden["outputs"]["from_hf_ep1_rank0"],
                 "default");
}

}  // namespace
}  // namespace moeckpt

namespace moeckpt {
namespace {

// MiMo-V2.6 (tests/data/v26, tools/make_v26_fixture.py; goldens from tools/make_v26_goldens.py):
// fused QKV over checkpoint TP 2 and 4, MXFP4 experts, visual/audio towers.
// MiMo-V2.5-Pro ("v25": the same interleave over num_key_value_heads, FP8 experts, qkv_proj kept
// fused natively in canonical order; goldens from Automodel's mimo_v25 adapter).
class GoldenParityV26 : public ::testing::TestWithParam<std::string> {
 protected:
  fs::path hf() const {
    return GetParam() == "v25" ? kData / "v25" / "hf" : kData / "v26" / GetParam() / "hf";
  }
  json golden_ = load_golden(GetParam() == "v25" ? "v25" : "v26_" + GetParam());
  test::TempDir dir_;
};

TEST_P(GoldenParityV26, TheInputIsTheOneTheGoldensWereMadeFrom) {
  std::map<std::string, std::string> want;
  for (auto it = golden_["input"].begin(); it != golden_["input"].end(); ++it)
    want[it.key()] = (*it)["sha256"];
  std::map<std::string, std::string> got;
  for (const auto& [n, d] : digest_checkpoint(hf())) got[n] = std::get<2>(d);
  EXPECT_EQ(got, want);
}

TEST_P(GoldenParityV26, FromHfEveryEpRankAndCompatModeIsByteIdentical) {
  for (Compat c : {Compat::kNone, Compat::kAutomodel07}) {
    FromHfOptions o;
    o.compat = c;
    from_hf_dir(hf(), dir_ / "ep1", o);
    expect_matches(digest_checkpoint(dir_ / "ep1"), golden_["outputs"]["from_hf_ep1_rank0"], "ep1");
    fs::remove_all(dir_ / "ep1");
    for (int64_t r = 0; r < 3; ++r) {
      o.ep_size = 3;
      o.ep_rank = r;
      const auto d = dir_ / ("ep3_" + std::to_string(r));
      from_hf_dir(hf(), d, o);
      expect_matches(digest_checkpoint(d),
                     golden_["outputs"]["from_hf_ep3_rank" + std::to_string(r)], d.string());
      fs::remove_all(d);
    }
  }
}

TEST_P(GoldenParityV26, ToHfWithoutQuantizationIsByteIdentical) {
  from_hf_dir(hf(), dir_ / "native", {});
  for (Compat c : {Compat::kNone, Compat::kAutomodel07}) {
    ToHfOptions o;
    o.quant = QuantMode::kNone;
    o.compat = c;
    to_hf_dirs({dir_ / "native"}, dir_ / "noquant", o, std::nullopt);
    expect_matches(digest_checkpoint(dir_ / "noquant"), golden_["outputs"]["to_hf_noquant"],
                   "noquant");
    fs::remove_all(dir_ / "noquant");
  }
  EXPECT_NE(
      golden_["errors"]["to_hf"].get<std::string>().find(
          GetParam() == "v25" ? "FP8 export is unsupported" : "only supported for checkpoint"),
      std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(TpDegrees, GoldenParityV26, ::testing::Values("tp2", "tp4", "v25"));

// gpt-oss (tools/make_hf_moe_goldens.py on `synth --preset gpt-oss-tiny --seed 1`): Automodel's
// from_hf ignores the device mesh, so its EP goldens are its whole result sliced to the rank's
// experts (as DCP's load into the rank's shards does); its to_hf(quantization=True) writes all-ones
// MXFP4 placeholders, which the compat mode refuses, so the to_hf goldens compared are those of
// quantization=False (the HF BF16 layout under gate_up_proj / down_proj). The default mode's
// from_hf is checked with GoldenParityDefaultMode.
class GoldenParityGptOss : public GoldenParity {};

TEST_P(GoldenParityGptOss, FromHfEveryEpRankIsByteIdentical) {
  for (int64_t w : ep_sizes())
    for (int64_t r = 0; r < w; ++r)
      expect_matches(digest_checkpoint(from_hf(w, r)),
                     golden_["outputs"][fmt("from_hf_ep{}_rank{}", w, r)],
                     fmt("compat from_hf ep {} rank {}", w, r));
}

TEST_P(GoldenParityGptOss, ToHfWithoutQuantizationIsByteIdenticalAndTheCastIsRefused) {
  ToHfOptions o;
  o.compat = compat_;
  o.quant = QuantMode::kNone;
  to_hf_dirs({from_hf(1, 0)}, dir_ / "noquant", o, std::nullopt);
  expect_matches(digest_checkpoint(dir_ / "noquant"), golden_["outputs"]["to_hf_noquant"],
                 "noquant");
  to_hf_dirs({from_hf(3, 0), from_hf(3, 1), from_hf(3, 2)}, dir_ / "noquant_ranks", o,
             std::nullopt);
  expect_matches(digest_checkpoint(dir_ / "noquant_ranks"), golden_["outputs"]["to_hf_noquant"],
                 "noquant of 3 ranks");
  ToHfOptions plain;
  plain.quant = QuantMode::kNone;
  to_hf_dirs({from_hf(1, 0)}, dir_ / "noquant_default", plain, std::nullopt);
  expect_matches(digest_checkpoint(dir_ / "noquant_default"), golden_["outputs"]["to_hf_noquant"],
                 "noquant default mode");
  // Automodel's quantized export is placeholders (all ones, 90 groups): refused, saying so.
  ToHfOptions cast;
  cast.compat = compat_;
  try {
    to_hf_dirs({from_hf(1, 0)}, dir_ / "cast", cast, std::nullopt);
    ADD_FAILURE() << "the compat quantized export was not refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.info().kind, ErrorKind::kUnsupportedLayout);
    EXPECT_NE(std::string(e.what()).find("placeholders"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "cast" / kSingleFileName));
  // Its placeholder shape, as recorded: [E, out, 90, 16] whatever the input size.
  EXPECT_EQ(golden_["outputs"]["to_hf"]["model.layers.0.mlp.experts.gate_up_proj_blocks"]["shape"],
            json::parse("[8, 192, 90, 16]"));
}

TEST_P(GoldenParityGptOss, ExcludeGivesAutomodelsKeySet) {
  const json& cases = golden_["to_hf_exclude"];
  ASSERT_GE(cases.size(), 2u);
  CheckpointSource src({from_hf(1, 0)});
  for (auto it = cases.begin(); it != cases.end(); ++it) {
    ToHfOptions o;
    o.compat = compat_;
    o.quant = QuantMode::kNone;
    o.exclude_regex = it.key();
    std::vector<std::string> keys;
    for (const auto& spec : plan_to_hf(src, config_, o, {0}).outputs) keys.push_back(spec.name);
    std::sort(keys.begin(), keys.end());
    auto want = (*it)["quantization=False"].get<std::vector<std::string>>();
    std::sort(want.begin(), want.end());
    EXPECT_EQ(keys, want) << it.key();
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenParityGptOss, ::testing::Values("gpt_oss_tiny"));

}  // namespace
}  // namespace moeckpt
