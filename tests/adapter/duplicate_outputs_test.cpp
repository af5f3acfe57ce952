// A to-hf plan whose output names collide is refused, naming both sources: a passthrough tensor
// named like a split expert, grouped tensors under two prefixes (default and compat), --prefix.
#include <gtest/gtest.h>

#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {
namespace fs = std::filesystem;

class DuplicateOutputs : public ::testing::Test {
 protected:
  void SetUp() override {
    SynthOptions o;
    o.preset = "micro";
    synthesize_checkpoint(dir_ / "hf", o);
    from_hf_dir(dir_ / "hf", dir_ / "native", {});
    config_ = ModelConfig::load(dir_ / "hf" / "config.json");
    auto ck = Checkpoint::open(dir_ / "native");
    for (const auto& n : ck.names()) {
      const auto* e = ck.find(n);
      names_.push_back(n);
      dtypes_.push_back(e->info->dtype);
      shapes_.push_back(e->info->shape);
      bytes_.push_back(ck.read_all(*e));
    }
  }
  // The native tensors, plus `extra` (name -> copy of an existing tensor `like`).
  std::string refusal(const std::vector<std::pair<std::string, std::string>>& extra,
                      ToHfOptions o) {
    std::vector<MemorySource::Entry> entries;
    for (size_t i = 0; i < names_.size(); ++i)
      entries.push_back({names_[i], dtypes_[i], shapes_[i], bytes_[i]});
    for (const auto& [name, like] : extra)
      for (size_t i = 0; i < names_.size(); ++i)
        if (names_[i] == like) entries.push_back({name, dtypes_[i], shapes_[i], bytes_[i]});
    MemorySource src(std::move(entries));
    o.require_all_experts = false;
    try {
      (void)plan_to_hf(src, config_, o, {0});
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
  test::TempDir dir_;
  ModelConfig config_;
  std::vector<std::string> names_;
  std::vector<Dtype> dtypes_;
  std::vector<std::vector<uint64_t>> shapes_;
  std::vector<std::vector<uint8_t>> bytes_;
};

TEST_F(DuplicateOutputs, APassthroughNamedLikeASplitExpert) {
  // A passthrough tensor (a prefix that is never grouped, so not a per-expert weight of this
  // layout) named as the split expert the --prefix choice produces. (A per-expert weight under
  // the grouped prefix is refused earlier: an HF tensor in a native folder.)
  auto ck = Checkpoint::open(dir_ / "hf");
  const std::string hf_key = "model.layers.1.mlp.experts.0.down_proj.weight";
  const std::string key = "foo.layers.1.mlp.experts.0.down_proj.weight";
  ASSERT_NE(ck.find(hf_key), nullptr);
  std::vector<MemorySource::Entry> entries;
  for (size_t i = 0; i < names_.size(); ++i)
    entries.push_back({names_[i], dtypes_[i], shapes_[i], bytes_[i]});
  std::vector<uint8_t> w(ck.find(hf_key)->info->nbytes() * 2);
  entries.push_back({key, Dtype::BF16, ck.find(hf_key)->info->shape, w});
  MemorySource src(std::move(entries));
  for (QuantMode q : {QuantMode::kBlock, QuantMode::kNone, QuantMode::kCast}) {
    ToHfOptions o;
    o.quant = q;
    o.prefix = "foo.";
    o.require_all_experts = false;
    try {
      (void)plan_to_hf(src, config_, o, {0});
      ADD_FAILURE() << "not refused";
    } catch (const Error& e) {
      const std::string m = e.what();
      SCOPED_TRACE(m);
      EXPECT_NE(m.find("'" + key + "': is produced twice"), std::string::npos) << m;
      EXPECT_NE(m.find("'model.layers.1.mlp.experts.down_projs' (expert slot 0)"),
                std::string::npos)
          << m;
      // Outputs are planned by name (ToHfOptions::Order::kByName): the passthrough "foo." tensor
      // comes first, whatever order the source lists it in.
      EXPECT_NE(m.find("from '" + key + "' and from "), std::string::npos) << m;
    }
  }
}

TEST_F(DuplicateOutputs, GroupedTensorsUnderTwoPrefixes) {
  const std::vector<std::pair<std::string, std::string>> extra{
      {"model.language_model.layers.1.mlp.experts.gate_and_up_projs",
       "model.layers.1.mlp.experts.gate_and_up_projs"},
      {"model.language_model.layers.1.mlp.experts.down_projs",
       "model.layers.1.mlp.experts.down_projs"}};
  // Default mode, own prefixes: distinct keys, accepted.
  EXPECT_EQ(refusal(extra, {}), "");
  // --prefix model.: both map to model.layers.1.mlp.experts.E.*
  ToHfOptions prefixed;
  prefixed.prefix = "model.";
  auto m = refusal(extra, prefixed);
  EXPECT_NE(m.find("is produced twice"), std::string::npos) << m;
  EXPECT_NE(m.find("model.language_model.layers.1.mlp.experts."), std::string::npos) << m;
  // Compat: Automodel writes every expert key under "model.".
  for (Compat c : {Compat::kAutomodel06, Compat::kAutomodel07}) {
    ToHfOptions compat;
    compat.compat = c;
    m = refusal(extra, compat);
    EXPECT_NE(m.find("is produced twice"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace moeckpt
