// dequantize / quantize (HF -> HF in one pass) against their two-step definitions: from-hf then
// to-hf --quant none, and from-hf then to-hf --quant block|cast, tensor for tensor (names, dtypes,
// shapes, bytes), on the tiny preset (fused K/V scales), the micro preset (ragged blocks), the
// DeepSeek-V3 presets, the accepted corpus variants and several seeds and shard splits; plus their
// refusals and config.json.
#include <gtest/gtest.h>

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

const fs::path kData = MOECKPT_TEST_DATA_DIR;

void expect_same_tensors(const fs::path& a, const fs::path& b) {
  auto ca = Checkpoint::open(a), cb = Checkpoint::open(b);
  ASSERT_EQ(ca.names(), cb.names()) << a << " vs " << b;
  for (const auto& n : ca.names()) {
    EXPECT_EQ(ca.find(n)->info->dtype, cb.find(n)->info->dtype) << n;
    EXPECT_EQ(ca.find(n)->info->shape, cb.find(n)->info->shape) << n;
    EXPECT_EQ(ca.read_all(*ca.find(n)), cb.read_all(*cb.find(n))) << n;
  }
}

nlohmann::json config_of(const fs::path& dir) {
  std::ifstream f(dir / "config.json");
  return nlohmann::json::parse(f);
}

struct Inputs {
  test::TempDir dir;
  std::vector<fs::path> sources;
  Inputs() {
    for (uint64_t seed : {1u, 7u}) {
      SynthOptions o;
      o.seed = seed;
      const auto p = dir / ("tiny" + std::to_string(seed));
      synthesize_checkpoint(p, o);
      sources.push_back(p);
    }
    SynthOptions micro;  // hidden 136: ragged 128x128 blocks
    micro.preset = "micro";
    synthesize_checkpoint(dir / "micro", micro);
    sources.push_back(dir / "micro");
    // The DeepSeek-V3 format: latent attention, shared experts, an MTP layer with routed experts.
    for (const char* preset : {"deepseek-v3-tiny", "deepseek-v3-tiny-q-proj"}) {
      SynthOptions ds;
      ds.preset = preset;
      ds.seed = 3;
      synthesize_checkpoint(dir / preset, ds);
      sources.push_back(dir / preset);
    }
    // Valid variants: extra trailing scale rows and columns, BF16 scales, one file.
    for (const char* v : {"extra_scale_rows_and_columns", "bf16_scale", "single_file"})
      sources.push_back(kData / "accepted" / v);
  }
};

TEST(Dequantize, EqualsFromHfThenToHfNone) {
  Inputs in;
  ConvertOptions many;
  many.max_shard_bytes = 3 << 20;  // other shard splits than the two-step path
  for (size_t i = 0; i < in.sources.size(); ++i)
    for (Dtype dt : {Dtype::BF16, Dtype::F32}) {
      const std::string tag = std::to_string(i) + (dt == Dtype::F32 ? "f32" : "bf16");
      FromHfOptions o;
      o.dtype = dt;
      dequantize_dir(in.sources[i], in.dir / ("dq" + tag), o, many);
      from_hf_dir(in.sources[i], in.dir / ("n" + tag), o);
      ToHfOptions none;
      none.quant = QuantMode::kNone;
      to_hf_dirs({in.dir / ("n" + tag)}, in.dir / ("two" + tag), none, std::nullopt);
      expect_same_tensors(in.dir / ("dq" + tag), in.dir / ("two" + tag));
      EXPECT_FALSE(config_of(in.dir / ("dq" + tag)).contains("quantization_config"));
      EXPECT_EQ(config_of(in.dir / ("dq" + tag)), config_of(in.dir / ("two" + tag)));
      // No scale survives, and every FP8 weight became `dt`.
      auto ck = Checkpoint::open(in.dir / ("dq" + tag));
      for (const auto& n : ck.names()) {
        EXPECT_FALSE(n.ends_with("_scale_inv")) << n;
        EXPECT_NE(ck.find(n)->info->dtype, Dtype::F8_E4M3) << n;
      }
    }
}

TEST(Quantize, EqualsFromHfThenToHf) {
  Inputs in;
  for (size_t i = 0; i < in.sources.size(); ++i) {
    // The unquantized HF inputs: BF16 (what a fine-tuning run saves) and F32.
    for (Dtype dt : {Dtype::BF16, Dtype::F32}) {
      const std::string tag = std::to_string(i) + (dt == Dtype::F32 ? "f32" : "bf16");
      FromHfOptions deq;
      deq.dtype = dt;
      const auto src = in.dir / ("src" + tag);
      dequantize_dir(in.sources[i], src, deq);
      // The two-step path keeps the source's precision: from-hf in that dtype.
      from_hf_dir(src, in.dir / ("n" + tag), deq);
      for (QuantMode q : {QuantMode::kBlock, QuantMode::kCast}) {
        const std::string qt = tag + (q == QuantMode::kBlock ? "block" : "cast");
        ToHfOptions o;
        o.quant = q;
        ConvertOptions many;
        many.max_shard_bytes = 2 << 20;
        quantize_dir(src, in.dir / ("q" + qt), o, many);
        to_hf_dirs({in.dir / ("n" + tag)}, in.dir / ("two" + qt), o, std::nullopt);
        expect_same_tensors(in.dir / ("q" + qt), in.dir / ("two" + qt));
        EXPECT_TRUE(config_of(in.dir / ("q" + qt)).contains("quantization_config"));
      }
    }
  }
  // Block quantization of a dequantized checkpoint gives back the published codes and scales.
  ToHfOptions block;
  quantize_dir(in.dir / "src0bf16", in.dir / "again", block);
  expect_same_tensors(in.dir / "again", in.sources[0]);
}

TEST(HfToHf, WrongLayoutsAreRefusedAndLeaveNothing) {
  Inputs in;
  from_hf_dir(in.sources[0], in.dir / "native", {});
  auto expect_refused = [&](auto&& call, const std::string& fragment) {
    try {
      call();
      ADD_FAILURE() << "not refused: " << fragment;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(in.dir / "out"));
  };
  expect_refused([&] { quantize_dir(in.sources[0], in.dir / "out", {}); },
                 "is already FP8: the checkpoint is quantized");
  expect_refused([&] { quantize_dir(in.dir / "native", in.dir / "out", {}); },
                 "this folder holds the native layout");
  expect_refused([&] { dequantize_dir(in.dir / "native", in.dir / "out", {}); },
                 "this folder holds the native layout");
  ToHfOptions none;
  none.quant = QuantMode::kNone;
  dequantize_dir(in.sources[0], in.dir / "bf16", {});
  expect_refused([&] { quantize_dir(in.dir / "bf16", in.dir / "out", none); },
                 "quantize needs a quantization mode");
}

TEST(HfToHf, TheJobLayerGuardsTheDestination) {
  Inputs in;
  dequantize_dir(in.sources[0], in.dir / "dq", {});
  EXPECT_THROW(dequantize_dir(in.sources[1], in.dir / "dq", {}), Error);  // holds a checkpoint
  expect_same_tensors(in.dir / "dq", in.dir / "dq");
  ConvertOptions overwrite;
  overwrite.existing = ExistingOutput::kOverwrite;
  dequantize_dir(in.sources[1], in.dir / "dq", {}, overwrite);
  dequantize_dir(in.sources[1], in.dir / "dq1", {});
  expect_same_tensors(in.dir / "dq", in.dir / "dq1");
  // A destination inside the source is refused before anything is written.
  EXPECT_THROW(dequantize_dir(in.dir / "dq1", in.dir / "dq1" / "sub", {}), Error);
  EXPECT_FALSE(fs::exists(in.dir / "dq1" / "sub"));
}

}  // namespace
}  // namespace moeckpt
