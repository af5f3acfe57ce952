// The MiMo-V2.6 layout (fused QKV interleaved over metadata.tp_size, MXFP4 experts): hostile and
// inconsistent variants of the committed fixture are refused with the right kind, naming the file
// or tensor; parity with Automodel 0.7.0 is in golden_parity_test.cpp.
#include <gtest/gtest.h>

#include <functional>
#include <nlohmann/json.hpp>

#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/safetensors_writer.hpp"
#include "moeckpt/verify.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kV26 = fs::path(MOECKPT_TEST_DATA_DIR) / "v26";

struct Tensor {
  Dtype dtype;
  std::vector<uint64_t> shape;
  std::vector<uint8_t> bytes;
};
using Tensors = std::map<std::string, Tensor>;

// The tensors of a checkpoint folder (names, dtypes, shapes, bytes), without metadata.
std::map<std::string, std::tuple<Dtype, std::vector<uint64_t>, std::vector<uint8_t>>> tensors_of(
    const fs::path& dir) {
  auto ck = Checkpoint::open(dir);
  std::map<std::string, std::tuple<Dtype, std::vector<uint64_t>, std::vector<uint8_t>>> out;
  for (const auto& n : ck.names()) {
    const auto* e = ck.find(n);
    out[n] = {e->info->dtype, e->info->shape, ck.read_all(*e)};
  }
  return out;
}

// A copy of fixture `tp` as one shard plus an index, after `edit` (tensors, index metadata).
fs::path variant(const fs::path& root, const std::string& tp,
                 const std::function<void(Tensors&, json&)>& edit) {
  const fs::path src = kV26 / tp / "hf";
  auto ck = Checkpoint::open(src);
  Tensors ts;
  for (const auto& n : ck.names()) {
    const auto* e = ck.find(n);
    ts[n] = {e->info->dtype, e->info->shape, ck.read_all(*e)};
  }
  auto raw = test::read_bytes(src / kIndexFileName);
  json index = json::parse(raw.begin(), raw.end());
  json md = index["metadata"];
  edit(ts, md);
  static int serial = 0;
  const fs::path dst = root / ("variant" + std::to_string(serial++));
  fs::create_directories(dst);
  fs::copy_file(src / "config.json", dst / "config.json");
  std::vector<TensorSpec> specs;
  for (const auto& [n, t] : ts) specs.push_back({n, t.dtype, t.shape});
  {
    ShardWriter w(dst / "model-00001-of-00001.safetensors", specs);
    size_t i = 0;
    for (const auto& [n, t] : ts) w.write(i++, 0, t.bytes);
    w.commit();
  }
  json wm = json::object();
  for (const auto& [n, t] : ts) wm[n] = "model-00001-of-00001.safetensors";
  md.erase("total_size");
  test::write_text(dst / kIndexFileName, json{{"metadata", md}, {"weight_map", wm}}.dump());
  return dst;
}

struct Refusal {
  ErrorKind kind;
  std::string message;
};

Refusal from_hf_refusal(const fs::path& src, const fs::path& dst, FromHfOptions o = {}) {
  try {
    from_hf_dir(src, dst, o);
  } catch (const Error& e) {
    EXPECT_FALSE(fs::exists(dst / kSingleFileName));
    return {e.kind(), e.what()};
  }
  ADD_FAILURE() << src << " was accepted";
  return {};
}

class MimoV26 : public ::testing::Test {
 protected:
  test::TempDir dir_;
};

TEST_F(MimoV26, TheFixtureConvertsInBothModesAndEveryTpDegree) {
  for (const char* tp : {"tp2", "tp4"}) {
    EXPECT_NO_THROW(from_hf_dir(kV26 / tp / "hf", dir_ / tp, {}));
    FromHfOptions compat;
    compat.compat = Compat::kAutomodel07;
    EXPECT_NO_THROW(from_hf_dir(kV26 / tp / "hf", dir_ / (std::string(tp) + "c"), compat));
  }
  // The same model at TP 2 and TP 4 (quantized over different shard grids): the same native
  // names, dtypes and shapes, and bit-equal tensors outside the attention projections.
  auto a = tensors_of(dir_ / "tp2"), b = tensors_of(dir_ / "tp4");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [n, t] : a) {
    ASSERT_TRUE(b.count(n)) << n;
    EXPECT_EQ(std::get<0>(t), std::get<0>(b[n])) << n;
    EXPECT_EQ(std::get<1>(t), std::get<1>(b[n])) << n;
    if (n.find("self_attn.") == std::string::npos || n.find("o_proj") != std::string::npos) {
      EXPECT_TRUE(std::get<2>(t) == std::get<2>(b[n])) << n;
    }
  }
}

TEST_F(MimoV26, TpSizeMustBeAPositiveIntegerThatFitsTheTensors) {
  for (json bad : {json("2"), json(2.0), json(true), json(0), json(-2), json(nullptr)}) {
    auto src = variant(dir_.path(), "tp2", [&](Tensors&, json& md) { md["tp_size"] = bad; });
    auto r = from_hf_refusal(src, dir_ / "out");
    EXPECT_EQ(r.kind, ErrorKind::kMalformedFile) << bad.dump() << r.message;
    EXPECT_NE(r.message.find("metadata.tp_size"), std::string::npos) << r.message;
    EXPECT_NE(r.message.find(kIndexFileName), std::string::npos) << r.message;
  }
  // 3 does not divide the heads; 1 (absent) and 2 give other scale grids than the TP-4 file has.
  auto three = variant(dir_.path(), "tp4", [](Tensors&, json& md) { md["tp_size"] = 3; });
  auto r = from_hf_refusal(three, dir_ / "out");
  EXPECT_EQ(r.kind, ErrorKind::kConfigMismatch);
  EXPECT_NE(r.message.find("does not divide"), std::string::npos) << r.message;
  for (auto edit : std::vector<std::function<void(Tensors&, json&)>>{
           [](Tensors&, json& md) { md.erase("tp_size"); },
           [](Tensors&, json& md) { md["tp_size"] = 2; }}) {
    auto src = variant(dir_.path(), "tp4", edit);
    r = from_hf_refusal(src, dir_ / "out");
    EXPECT_EQ(r.kind, ErrorKind::kConfigMismatch) << r.message;
    EXPECT_NE(r.message.find("qkv_proj.weight_scale_inv"), std::string::npos) << r.message;
    EXPECT_NE(r.message.find("TP shards"), std::string::npos) << r.message;
  }
}

TEST_F(MimoV26, InterleaveAndScaleShapesAreChecked) {
  const std::string qkv = "model.layers.0.self_attn.qkv_proj.weight";
  // A fused weight one shard-row short, a scale grid one row short or one column wide.
  auto short_rows = variant(dir_.path(), "tp2", [&](Tensors& ts, json&) {
    auto& t = ts[qkv];
    t.shape[0] -= 1;
    t.bytes.resize(t.bytes.size() - t.shape[1]);
  });
  auto r = from_hf_refusal(short_rows, dir_ / "out");
  EXPECT_EQ(r.kind, ErrorKind::kConfigMismatch);
  EXPECT_NE(r.message.find(qkv), std::string::npos) << r.message;
  for (int d : {-1, +1}) {
    auto src = variant(dir_.path(), "tp2", [&](Tensors& ts, json&) {
      auto& s = ts[qkv + "_scale_inv"];
      const uint64_t row = s.shape[1] * 4;
      s.shape[0] += d;
      s.bytes.resize(s.bytes.size() + d * static_cast<int64_t>(row), 0x3c);
    });
    r = from_hf_refusal(src, dir_ / "out");
    EXPECT_EQ(r.kind, ErrorKind::kConfigMismatch) << r.message;
    EXPECT_NE(r.message.find(qkv + "_scale_inv"), std::string::npos) << r.message;
  }
  // FP8 without its scale.
  auto no_scale =
      variant(dir_.path(), "tp2", [&](Tensors& ts, json&) { ts.erase(qkv + "_scale_inv"); });
  r = from_hf_refusal(no_scale, dir_ / "out");
  EXPECT_EQ(r.kind, ErrorKind::kMalformedFile);
  EXPECT_NE(r.message.find("_scale_inv"), std::string::npos) << r.message;
}

TEST_F(MimoV26, Mxfp4ExpertsAreChecked) {
  const std::string w = "model.layers.1.mlp.experts.2.down_proj.weight";
  // The E8M0 NaN code: refused by default (numeric), reproduced in compat (torch's 2^128 = inf).
  auto nan_scale =
      variant(dir_.path(), "tp2", [&](Tensors& ts, json&) { ts[w + "_scale"].bytes[5] = 0xFF; });
  auto r = from_hf_refusal(nan_scale, dir_ / "out");
  EXPECT_EQ(r.kind, ErrorKind::kNumeric);
  EXPECT_NE(r.message.find(w + "_scale"), std::string::npos) << r.message;
  EXPECT_NE(r.message.find("0xFF"), std::string::npos) << r.message;
  FromHfOptions compat;
  compat.compat = Compat::kAutomodel07;
  EXPECT_NO_THROW(from_hf_dir(nan_scale, dir_ / "compat", compat));
  // A scale so large the product overflows float32.
  auto huge = variant(dir_.path(), "tp2", [&](Tensors& ts, json&) {
    for (auto& b : ts[w + "_scale"].bytes) b = 254;
  });
  r = from_hf_refusal(huge, dir_ / "out");
  EXPECT_EQ(r.kind, ErrorKind::kNumeric);
  EXPECT_NE(r.message.find("overflows"), std::string::npos) << r.message;
  // A packed weight of the wrong width, a scale of the wrong shape or dtype, a missing scale, an
  // orphan scale.
  std::vector<std::function<void(Tensors&, json&)>> edits{
      [&](Tensors& ts, json&) {
        auto& t = ts[w];
        t.shape[1] -= 1;
        t.bytes.resize(t.shape[0] * t.shape[1]);
      },
      [&](Tensors& ts, json&) {
        auto& s = ts[w + "_scale"];
        s.shape[1] += 1;
        s.bytes.resize(s.shape[0] * s.shape[1], 120);
      },
      [&](Tensors& ts, json&) { ts[w + "_scale"].dtype = Dtype::I8; },
      [&](Tensors& ts, json&) { ts.erase(w + "_scale"); },
      [&](Tensors& ts, json&) { ts.erase(w); },
  };
  for (const auto& edit : edits) {
    auto src = variant(dir_.path(), "tp2", edit);
    r = from_hf_refusal(src, dir_ / "out");
    EXPECT_TRUE(r.kind == ErrorKind::kMalformedFile || r.kind == ErrorKind::kConfigMismatch)
        << r.message;
    EXPECT_NE(r.message.find("model.layers.1.mlp.experts.2.down_proj"), std::string::npos)
        << r.message;
  }
}

TEST_F(MimoV26, CompatQuantizedExportIsRefusedWithTheReasonAndNoneWritesASplitConfig) {
  from_hf_dir(kV26 / "tp2" / "hf", dir_ / "native", {});
  for (auto [c, q] : {std::pair{Compat::kAutomodel07, QuantMode::kCast},
                      std::pair{Compat::kNone, QuantMode::kCast}}) {
    ToHfOptions o;
    o.compat = c;
    o.quant = q;
    try {
      to_hf_dirs({dir_ / "native"}, dir_ / "quant", o, std::nullopt);
      ADD_FAILURE() << "quantized export accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUnsupportedLayout);
      if (c == Compat::kAutomodel07) {
        EXPECT_NE(std::string(e.what()).find("only supported for checkpoint loading"),
                  std::string::npos);
      }
    }
    EXPECT_FALSE(fs::exists(dir_ / "quant" / kSingleFileName));
  }
  ToHfOptions none;
  none.quant = QuantMode::kNone;
  to_hf_dirs({dir_ / "native"}, dir_ / "bf16", none, std::nullopt);
  auto raw = test::read_bytes(dir_ / "bf16" / "config.json");
  auto cfg = json::parse(raw.begin(), raw.end());
  EXPECT_EQ(cfg["attention_projection_layout"], "split");
  EXPECT_FALSE(cfg.contains("quantization_config"));
  // The split BF16 folder converts back to the same native checkpoint.
  from_hf_dir(dir_ / "bf16", dir_ / "again", {});
  EXPECT_EQ(tensors_of(dir_ / "native"), tensors_of(dir_ / "again"));
}

// The default to-hf writes the published layout back: fused qkv_proj over the recorded TP degree
// with a block grid per shard, MXFP4 experts, an index with metadata.tp_size (one shard too).
TEST_F(MimoV26, DefaultExportWritesThePublishedLayoutBack) {
  for (const char* tp : {"tp2", "tp4"}) {
    SCOPED_TRACE(tp);
    const auto src = kV26 / tp / "hf";
    const auto native = dir_ / (std::string(tp) + "_native");
    const auto out = dir_ / (std::string(tp) + "_hf");
    from_hf_dir(src, native, {});
    to_hf_dirs({native}, out, {}, std::nullopt);
    auto raw = test::read_bytes(out / kIndexFileName);
    auto index = json::parse(raw.begin(), raw.end());
    EXPECT_EQ(index["metadata"]["tp_size"], std::stoi(std::string(tp).substr(2)));
    EXPECT_TRUE(fs::exists(out / kSingleFileName));
    auto a = tensors_of(src), b = tensors_of(out);
    uint64_t e2m1 = 0, e2m1_equal = 0, e8m0 = 0, e8m0_equal = 0;
    for (const auto& [n, t] : a) {
      if (n.starts_with("visual.blocks.0.mlp.fc1.")) continue;  // FP8 in this fixture, BF16 out
      ASSERT_TRUE(b.count(n)) << n;
      const auto& u = b[n];
      EXPECT_EQ(std::get<0>(t), std::get<0>(u)) << n;
      EXPECT_EQ(std::get<1>(t), std::get<1>(u)) << n;
      const auto& x = std::get<2>(t);
      const auto& y = std::get<2>(u);
      if (n.find("mlp.experts.") != std::string::npos) {
        const bool scale = n.ends_with("_scale");
        for (size_t i = 0; i < x.size(); ++i) {
          if (scale) {
            ++e8m0;
            e8m0_equal += x[i] == y[i];
          } else {
            e2m1 += 2;
            e2m1_equal += ((x[i] & 0xF) == (y[i] & 0xF)) + ((x[i] >> 4) == (y[i] >> 4));
          }
        }
      } else {
        EXPECT_TRUE(x == y) << n;  // FP8 blocks at the amax reproduce codes and scales exactly
      }
    }
    EXPECT_GE(static_cast<double>(e2m1_equal), 0.999 * static_cast<double>(e2m1));
    EXPECT_GE(static_cast<double>(e8m0_equal), 0.999 * static_cast<double>(e8m0));
    // Same values: every MXFP4 block comes back exactly (a block whose largest magnitude is below
    // 4 gets a smaller exponent and doubled codes).
    auto report = verify_checkpoints(src, out, {});
    EXPECT_TRUE(report.ok()) << to_text(report, {});
    for (const auto& [family, f] : report.families)
      EXPECT_EQ(f.bitwise_equal, f.elements) << family;
  }
}

TEST_F(MimoV26, TheTpDegreeCanBeChangedOnExport) {
  from_hf_dir(kV26 / "tp2" / "hf", dir_ / "native", {});
  ToHfOptions o;
  o.tp_size = 4;
  to_hf_dirs({dir_ / "native"}, dir_ / "tp4", o, std::nullopt);
  auto raw = test::read_bytes(dir_ / "tp4" / kIndexFileName);
  EXPECT_EQ(json::parse(raw.begin(), raw.end())["metadata"]["tp_size"], 4);
  // The TP-4 folder has the TP-4 fixture's shapes, and reads back within one FP8 step.
  auto got = tensors_of(dir_ / "tp4"), want = tensors_of(kV26 / "tp4" / "hf");
  for (const auto& [n, t] : want)
    if (n.find("qkv_proj") != std::string::npos) {
      EXPECT_EQ(std::get<1>(got.at(n)), std::get<1>(t)) << n;
    }
  from_hf_dir(dir_ / "tp4", dir_ / "back", {});
  VerifyOptions v;
  v.rtol = 0.07;  // one E4M3 step (3 mantissa bits) of a re-quantized value
  v.atol = 1e-6;
  EXPECT_TRUE(verify_checkpoints(dir_ / "native", dir_ / "back", v).ok());
  o.tp_size = 3;  // does not divide the heads
  try {
    to_hf_dirs({dir_ / "native"}, dir_ / "tp3", o, std::nullopt);
    ADD_FAILURE() << "TP 3 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfigMismatch);
  }
}

// Automodel 0.7.0's convert_single_tensor_to_hf casts one V2.6 tensor on its own (with ones
// scales, the full-attention k scale padded to 8 rows), though its to_hf refuses to quantize.
TEST_F(MimoV26, CompatSingleTensorsAreCast) {
  from_hf_dir(kV26 / "tp2" / "hf", dir_ / "native", {});
  auto native = tensors_of(dir_ / "native");
  auto config = ModelConfig::load(kV26 / "tp2" / "hf" / "config.json");
  ToHfOptions o;
  o.compat = Compat::kAutomodel07;
  o.quant = QuantMode::kCast;
  for (const char* name :
       {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"}) {
    const auto& [dt, shape, bytes] = native.at(name);
    auto out = convert_single_tensor_to_hf(name, dt, shape, bytes, config, o, 0);
    ASSERT_EQ(out.size(), 2u) << name;
    EXPECT_EQ(out[0].dtype, Dtype::F8_E4M3);
    EXPECT_EQ(out[1].name, std::string(name) + "_scale_inv");
    const uint64_t want_rows = std::string(name).find("k_proj") != std::string::npos ? 8 : 3;
    EXPECT_EQ(out[1].shape, (std::vector<uint64_t>{want_rows, 1})) << name;
  }
  o.compat = Compat::kNone;  // the default mode writes whole layers in the published layout only
  o.quant = QuantMode::kBlock;
  const auto& [dt, shape, bytes] = native.at("model.layers.0.self_attn.q_proj.weight");
  EXPECT_THROW(convert_single_tensor_to_hf("model.layers.0.self_attn.q_proj.weight", dt, shape,
                                           bytes, config, o, 0),
               Error);
}

// MiMo-V2.5-Pro: qkv_proj stays fused natively (canonical [Q, K, V]); the default export
// re-interleaves it over num_key_value_heads with a grid per shard, exactly; no quantization keeps
// the fused layout in the config; Automodel's refusal of a quantized export in compat mode.
TEST_F(MimoV26, V25ProRoundTripsExactlyAndKeepsItsLayout) {
  const auto src = fs::path(MOECKPT_TEST_DATA_DIR) / "v25" / "hf";
  from_hf_dir(src, dir_ / "native", {});
  auto native = tensors_of(dir_ / "native");
  EXPECT_TRUE(native.count("model.layers.0.self_attn.qkv_proj.weight"));
  EXPECT_FALSE(native.count("model.layers.0.self_attn.q_proj.weight"));
  to_hf_dirs({dir_ / "native"}, dir_ / "hf", {}, std::nullopt);
  auto a = tensors_of(src), b = tensors_of(dir_ / "hf");
  EXPECT_EQ(a.size(), b.size() + 1);  // the visual FP8 weight comes back BF16, without its scale
  for (const auto& [n, t] : a) {
    if (!n.starts_with("visual.blocks.0.mlp.fc1.")) {
      EXPECT_TRUE(b.count(n) && t == b[n]) << n;
    }
  }
  ToHfOptions none;
  none.quant = QuantMode::kNone;
  to_hf_dirs({dir_ / "native"}, dir_ / "bf16", none, std::nullopt);
  auto raw = test::read_bytes(dir_ / "bf16" / "config.json");
  EXPECT_EQ(json::parse(raw.begin(), raw.end())["attention_projection_layout"], "fused_qkv");
  from_hf_dir(dir_ / "bf16", dir_ / "again", {});
  EXPECT_EQ(tensors_of(dir_ / "again"), native);
  ToHfOptions compat;
  compat.compat = Compat::kAutomodel07;
  try {
    to_hf_dirs({dir_ / "native"}, dir_ / "compat", compat, std::nullopt);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupportedLayout);
    EXPECT_NE(std::string(e.what()).find("MiMo-V2.5-Pro FP8 export is unsupported"),
              std::string::npos);
  }
}

}  // namespace
}  // namespace moeckpt
