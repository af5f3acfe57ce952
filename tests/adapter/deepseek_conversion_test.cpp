// The DeepSeek-V3 format through the folder commands: from-hf (EP 1 and every rank of an uneven
// split), to-hf of one folder or of every rank's together, --quant none, verify of each result
// against the input (every value bitwise, every FP8 code), on both latent-attention variants.
// Layer roles: a config.json whose layer counts disagree with the checkpoint's decoder and MTP
// layers, an MTP tensor in a decoder layer, a layer the config implies but the files lack, each
// refused by every command with one line naming the file and tensor (MiMo's MTP layers too).
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>

#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/inspect.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/safetensors_writer.hpp"
#include "moeckpt/synth.hpp"
#include "moeckpt/verify.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

void expect_bitwise(const VerifyReport& r, bool fp8_codes) {
  EXPECT_TRUE(r.ok());
  EXPECT_TRUE(r.only_in_a.empty() && r.only_in_b.empty() && r.shape_mismatch.empty());
  uint64_t fp8 = 0;
  for (const auto& [name, f] : r.families) {
    EXPECT_EQ(f.bitwise_equal, f.elements) << name;
    EXPECT_EQ(f.fp8_equal, f.fp8_elements) << name;
    fp8 += f.fp8_elements;
  }
  if (fp8_codes) {
    EXPECT_GT(fp8, 0u);
  }
}

TEST(DeepSeekConversion, EveryCommandKeepsEveryValue) {
  for (const char* preset : {"deepseek-v3-tiny", "deepseek-v3-tiny-q-proj"}) {
    SCOPED_TRACE(preset);
    test::TempDir dir;
    SynthOptions o;
    o.preset = preset;
    o.seed = 5;
    synthesize_checkpoint(dir / "hf", o);
    from_hf_dir(dir / "hf", dir / "native", {});
    expect_bitwise(verify_checkpoints(dir / "hf", dir / "native", {}), false);
    std::vector<fs::path> ranks;
    for (int64_t r = 0; r < 3; ++r) {  // 8 experts over 3 ranks
      FromHfOptions ep;
      ep.ep_size = 3;
      ep.ep_rank = r;
      ranks.push_back(dir / ("ep" + std::to_string(r)));
      from_hf_dir(dir / "hf", ranks.back(), ep);
    }
    to_hf_dirs({dir / "native"}, dir / "back", {}, std::nullopt);
    to_hf_dirs(ranks, dir / "back_ranks", {}, std::nullopt);
    // The synthesized values are exact in FP8: the published layout comes back code for code.
    expect_bitwise(verify_checkpoints(dir / "hf", dir / "back", {}), true);
    auto a = Checkpoint::open(dir / "back"), b = Checkpoint::open(dir / "back_ranks");
    ASSERT_EQ(a.names(), b.names());
    for (const auto& n : a.names()) EXPECT_EQ(a.read_all(*a.find(n)), b.read_all(*b.find(n))) << n;
    ToHfOptions none;
    none.quant = QuantMode::kNone;
    to_hf_dirs({dir / "native"}, dir / "bf16", none, std::nullopt);
    expect_bitwise(verify_checkpoints(dir / "hf", dir / "bf16", {}), false);
    auto bf16 = Checkpoint::open(dir / "bf16");
    for (const auto& n : bf16.names()) {
      EXPECT_FALSE(n.ends_with("_scale_inv")) << n;
      EXPECT_NE(bf16.find(n)->info->dtype, Dtype::F8_E4M3) << n;
    }
  }
}

// --- Layer roles.

struct Tensor {
  Dtype dtype;
  std::vector<uint64_t> shape;
  std::vector<uint8_t> bytes;
};
using Tensors = std::map<std::string, Tensor>;
using Edit = std::function<void(Tensors&, json&)>;

// A copy of checkpoint folder `src` as one model.safetensors after `edit` (tensors, config.json).
// (A native folder keeps its moeckpt metadata.)
fs::path edited(const fs::path& src, const fs::path& dst, const Edit& edit) {
  auto ck = Checkpoint::open(src);
  const auto metadata = ck.shard(0).header().metadata();
  Tensors ts;
  for (const auto& n : ck.names()) {
    const auto* e = ck.find(n);
    ts[n] = {e->info->dtype, e->info->shape, ck.read_all(*e)};
  }
  const auto raw = test::read_bytes(src / "config.json");
  json config = json::parse(raw.begin(), raw.end());
  edit(ts, config);
  fs::create_directories(dst);
  test::write_text(dst / "config.json", config.dump(2));
  std::vector<TensorSpec> specs;
  for (const auto& [n, t] : ts) specs.push_back({n, t.dtype, t.shape});
  ShardWriter w(dst / kSingleFileName, specs, metadata);
  size_t i = 0;
  for (const auto& [n, t] : ts) w.write(i++, 0, t.bytes);
  w.commit();
  return dst;
}

// Edits: tensor `from` (and its block scale, if any) copied as `to`; every tensor whose name
// starts with `prefix` dropped, or renamed to start with `with` instead.
Edit copy_as(std::string from, std::string to) {
  return [=](Tensors& ts, json&) {
    ts[to] = ts.at(from);
    if (ts.count(from + "_scale_inv")) ts[to + "_scale_inv"] = ts.at(from + "_scale_inv");
  };
}
Edit drop(std::string prefix) {
  return [=](Tensors& ts, json&) {
    std::erase_if(ts, [&](auto& t) { return t.first.starts_with(prefix); });
  };
}
Edit move_layer(std::string prefix, std::string with) {
  return [=](Tensors& ts, json&) {
    Tensors out;
    for (auto& [n, t] : ts)
      out[n.starts_with(prefix) ? with + n.substr(prefix.size()) : n] = std::move(t);
    ts = std::move(out);
  };
}
Edit set_config(std::function<void(json&)> f) {
  return [=](Tensors&, json& c) { f(c); };
}
Edit both(Edit a, Edit b) {
  return [=](Tensors& ts, json& c) {
    a(ts, c);
    b(ts, c);
  };
}

// Every command that validates `dir` (from-hf, inspect, verify) refuses it with one line (a
// config mismatch) holding every fragment.
void expect_refused(const fs::path& dir, const std::vector<std::string>& fragments) {
  std::string message;
  try {
    from_hf_dir(dir, dir.parent_path() / (dir.filename().string() + "_out"), {});
    ADD_FAILURE() << dir << " was accepted by from-hf";
    return;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfigMismatch) << e.what();
    message = e.what();
  }
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  for (const auto& f : fragments) EXPECT_NE(message.find(f), std::string::npos) << message;
  const auto r = inspect_checkpoint(dir);
  ASSERT_EQ(r.problems.size(), 1u) << dir << " was accepted by inspect";
  for (const auto& f : fragments) EXPECT_NE(r.problems.front().find(f), std::string::npos);
  try {
    verify_checkpoints(dir, dir, {});
    ADD_FAILURE() << dir << " was accepted by verify";
  } catch (const Error& e) {
    for (const auto& f : fragments) EXPECT_NE(std::string(e.what()).find(f), std::string::npos);
  }
}

class LayerRoles : public ::testing::Test {
 protected:
  // deepseek-v3-tiny: decoder layers 0 (dense), 1, 2 (MoE), the MTP layer 3 with its experts,
  // embed_tokens, enorm, hnorm, eh_proj, shared_head.{norm,head}. MiMo's tiny: decoder layers
  // 0..3 (0 dense), MTP layers mtp.layers.0..2 (dense, enorm, hnorm, eh_proj, pre_mlp_layernorm,
  // final_layernorm).
  static void SetUpTestSuite() {
    dir_ = new test::TempDir;
    SynthOptions o;
    o.preset = "deepseek-v3-tiny";
    synthesize_checkpoint(*dir_ / "ds", o);
    o.preset = "tiny";
    synthesize_checkpoint(*dir_ / "mimo", o);
  }
  static void TearDownTestSuite() { delete dir_; }
  fs::path ds(const std::string& name, const Edit& e) {
    return edited(*dir_ / "ds", tmp_ / name, e);
  }
  fs::path mimo(const std::string& name, const Edit& e) {
    return edited(*dir_ / "mimo", tmp_ / name, e);
  }
  static inline test::TempDir* dir_ = nullptr;
  test::TempDir tmp_;
};

TEST_F(LayerRoles, AConfigCountingTheMtpLayerAsADecoderLayerIsRefused) {
  // num_hidden_layers + 1: layer 3 holds a whole MoE decoder layer, and the MTP layer's own
  // tensors besides; with or without num_nextn_predict_layers lowered to match.
  expect_refused(ds("plus1", set_config([](json& c) { c["num_hidden_layers"] = 4; })),
                 {"model.safetensors: tensor 'model.layers.3.",
                  "is an MTP layer's tensor, but config.json makes layer 3 a decoder layer",
                  "num_hidden_layers = 4, num_nextn_predict_layers = 1: MTP layer 4"});
  expect_refused(ds("plus1_no_mtp", set_config([](json& c) {
                      c["num_hidden_layers"] = 4;
                      c["num_nextn_predict_layers"] = 0;
                    })),
                 {"model.safetensors: tensor 'model.layers.3.",
                  "is an MTP layer's tensor, but config.json makes layer 3 a decoder layer",
                  "num_nextn_predict_layers = 0: no MTP layer"});
  // Native: the from-hf output read with the edited config.
  const auto native = tmp_ / "native";
  from_hf_dir(*dir_ / "ds", native, {});
  auto edited_native = edited(native, tmp_ / "native_plus1",
                              set_config([](json& c) { c["num_hidden_layers"] = 4; }));
  try {
    to_hf_dirs({edited_native}, tmp_ / "back", {}, std::nullopt);
    ADD_FAILURE() << "to-hf accepted a native folder with the MTP layer counted as a decoder layer";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is an MTP layer's tensor"), std::string::npos)
        << e.what();
  }
}

TEST_F(LayerRoles, AConfigShortOfTheCheckpointsLayersNamesBothCounts) {
  // One decoder layer fewer: layer 2 is taken for the MTP layer, layer 3 is past both counts.
  expect_refused(ds("minus1", set_config([](json& c) { c["num_hidden_layers"] = 2; })),
                 {"tensor 'model.layers.3.",
                  "layer 3 is not below num_hidden_layers = 2 + num_nextn_predict_layers = 1 of "
                  "config.json",
                  "decoder layers 0..1, then MTP layer 2"});
  // The MTP layer the config does not declare.
  expect_refused(ds("no_nextn", set_config([](json& c) { c["num_nextn_predict_layers"] = 0; })),
                 {"tensor 'model.layers.3.",
                  "layer 3 is not below num_hidden_layers = 3 + num_nextn_predict_layers = 0",
                  "decoder layers 0..2 and no MTP layer"});
}

TEST_F(LayerRoles, MtpTensorsInADecoderLayerAreRefused) {
  for (const char* rest : {"eh_proj.weight", "enorm.weight", "hnorm.weight", "embed_tokens.weight",
                           "shared_head.norm.weight", "shared_head.head.weight"}) {
    SCOPED_TRACE(rest);
    const std::string to = std::string("model.layers.1.") + rest;
    expect_refused(
        ds(std::string("mtp_in_1_") + rest, copy_as(std::string("model.layers.3.") + rest, to)),
        {"tensor '" + to + "'", std::string(rest) + " is an MTP layer's tensor",
         "makes layer 1 a decoder layer"});
  }
}

TEST_F(LayerRoles, LayersTheConfigImpliesMustBeThere) {
  // A whole decoder layer; the MTP layer's own tensors beside its decoder part; a dense MLP where
  // the MTP layer has routed experts (these were refused before too).
  expect_refused(ds("no_layer_2", drop("model.layers.2.")),
                 {"tensor 'model.layers.2.input_layernorm.weight': missing: layer 2 (MoE)"});
  expect_refused(ds("mtp_head_only", drop("model.layers.3.shared_head.")),
                 {"tensor 'model.layers.3.shared_head.norm.weight': missing: MTP layer 3"});
  expect_refused(ds("dense_mlp_in_mtp", copy_as("model.layers.0.mlp.up_proj.weight",
                                                "model.layers.3.mlp.up_proj.weight")),
                 {"MTP layer 3 is a MoE layer in config.json"});
  // MTP layers may be left out, the last first: none, or the second of two declared (inspect
  // says so) ...
  SynthOptions o;
  o.preset = "deepseek-v3-tiny";
  o.mtp_layers = 0;
  synthesize_checkpoint(tmp_ / "no_mtp", o);
  EXPECT_NO_THROW(from_hf_dir(tmp_ / "no_mtp", tmp_ / "no_mtp_out", {}));
  const auto two = ds("nextn2", set_config([](json& c) { c["num_nextn_predict_layers"] = 2; }));
  EXPECT_NO_THROW(from_hf_dir(two, tmp_ / "nextn2_out", {}));
  const auto r = inspect_checkpoint(two);
  EXPECT_TRUE(r.problems.empty()) << r.problems.front();
  EXPECT_TRUE(std::any_of(r.notes.begin(), r.notes.end(), [](const std::string& n) {
    return n.find(
               "config.json declares 2 MTP layer(s) (num_nextn_predict_layers); the "
               "checkpoint holds 1") != std::string::npos;
  }));
  // ... but not the first of two while the second is there.
  expect_refused(ds("mtp_gap", both(set_config([](json& c) { c["num_nextn_predict_layers"] = 2; }),
                                    move_layer("model.layers.3.", "model.layers.4."))),
                 {"tensor 'model.layers.3.input_layernorm.weight': missing: MTP layer 3 needs it",
                  "MTP layer 4 is there"});
}

TEST_F(LayerRoles, MimoMtpLayersKeepTheirRoles) {
  // An MTP layer's own tensors in a decoder layer.
  for (const char* rest : {"eh_proj.weight", "enorm.weight", "hnorm.weight",
                           "pre_mlp_layernorm.weight", "final_layernorm.weight"}) {
    SCOPED_TRACE(rest);
    const std::string to = std::string("model.layers.2.") + rest;
    expect_refused(mimo(std::string("mtp_in_2_") + rest,
                        copy_as(std::string("model.mtp.layers.0.") + rest, to)),
                   {"tensor '" + to + "'", std::string(rest) + " is an MTP layer's tensor",
                    "model.mtp.layers.<i>." + std::string(rest), "not decoder layer 2's"});
  }
  // A decoder layer's router, experts or post-attention norm in an MTP layer (MTP layers are
  // dense).
  expect_refused(mimo("router_in_mtp", copy_as("model.layers.1.mlp.gate.weight",
                                               "model.mtp.layers.0.mlp.gate.weight")),
                 {"tensor 'model.mtp.layers.0.mlp.gate.weight'", "MTP layer 0 is a dense layer"});
  expect_refused(
      mimo("expert_in_mtp", copy_as("model.layers.1.mlp.experts.0.up_proj.weight",
                                    "model.mtp.layers.1.mlp.experts.0.up_proj.weight")),
      {"tensor 'model.mtp.layers.1.mlp.experts.0.up_proj.weight'", "MTP layer 1 is a dense layer"});
  expect_refused(
      mimo("post_attn_in_mtp", copy_as("model.layers.1.post_attention_layernorm.weight",
                                       "model.mtp.layers.2.post_attention_layernorm.weight")),
      {"MTP layer 2 has pre_mlp_layernorm, not post_attention_layernorm"});
  // The other MLP kind in a decoder layer.
  expect_refused(mimo("router_in_dense",
                      copy_as("model.layers.1.mlp.gate.weight", "model.layers.0.mlp.gate.weight")),
                 {"tensor 'model.layers.0.mlp.gate.weight'", "is a dense layer in config.json"});
  expect_refused(mimo("dense_mlp_in_moe", copy_as("model.layers.0.mlp.up_proj.weight",
                                                  "model.layers.1.mlp.up_proj.weight")),
                 {"tensor 'model.layers.1.mlp.up_proj.weight'", "is a MoE layer in config.json"});
  // A sink where the layer's attention kind has none (layer 0: full attention).
  expect_refused(mimo("sink_on_full", copy_as("model.layers.1.self_attn.attention_sink_bias",
                                              "model.layers.0.self_attn.attention_sink_bias")),
                 {"tensor 'model.layers.0.self_attn.attention_sink_bias'",
                  "has no attention sink in config.json (add_full_attention_sink_bias is false)"});
  // MTP layers left out from the last are fine; a gap is not.
  EXPECT_NO_THROW(from_hf_dir(mimo("no_mtp", drop("model.mtp.")), tmp_ / "no_mtp_out", {}));
  EXPECT_NO_THROW(
      from_hf_dir(mimo("two_mtp", drop("model.mtp.layers.2.")), tmp_ / "two_mtp_out", {}));
  expect_refused(
      mimo("mtp_gap", drop("model.mtp.layers.1.")),
      {"tensor 'model.mtp.layers.1.", "missing: MTP layer 1 needs it", "MTP layer 2 is there"});
  // A config one layer short: the layer past it is named as such, not as a dense layer.
  expect_refused(
      mimo("minus1", set_config([](json& c) {
             c["num_hidden_layers"] = 3;
             c["hybrid_layer_pattern"] = {0, 1, 1};
             c["moe_layer_freq"] = {0, 1, 1};
           })),
      {"tensor 'model.layers.3.", "layer 3 is not below num_hidden_layers = 3 of config.json",
       "decoder layers 0..2"});
}

}  // namespace
}  // namespace moeckpt
