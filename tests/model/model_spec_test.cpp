// The registry and the spec interface: a config's model_type picks the family; the spec's
// names read back through its own grammar; what it requires is exactly what a synthesized
// checkpoint of the family holds.
#include <gtest/gtest.h>

#include <set>

#include "moeckpt/error.hpp"
#include "moeckpt/model_spec.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

ModelConfig config_of(const std::string& preset) {
  SynthOptions o;
  o.preset = preset;
  return ModelConfig::parse(synth_config(o), "config.json");
}

TEST(ModelSpecRegistry, ModelTypeAndLayoutFieldsPickTheSpec) {
  EXPECT_EQ(model_spec_for(config_of("tiny"))->layout_name(), "MiMo-V2-Flash");
  EXPECT_EQ(model_spec_for(config_of("v26-tiny"))->layout_name(), "MiMo-V2.6");
  EXPECT_EQ(model_spec_for(config_of("v25-tiny"))->layout_name(), "MiMo-V2.5-Pro");
  auto doc = synth_config({});
  doc.erase("model_type");  // the reference family
  EXPECT_EQ(model_spec_for(ModelConfig::parse(doc, "c"))->layout_name(), "MiMo-V2-Flash");
}

TEST(ModelSpecRegistry, UnknownFamiliesAndPresetsAreRefused) {
  auto doc = synth_config({});
  doc["model_type"] = "llama";
  try {
    ModelConfig::parse(doc, "config.json");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupportedLayout);
    EXPECT_NE(std::string(e.what()).find("mimo_v2_flash"), std::string::npos) << e.what();
  }
  doc["model_type"] = 3;
  try {
    ModelConfig::parse(doc, "config.json");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kMalformedFile);
  }
  try {
    model_preset("huge");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("v26-tiny"), std::string::npos) << e.what();
  }
  const auto names = model_preset_names();
  for (const char* n : {"tiny", "micro", "full", "v26-tiny", "v26-full", "v25-tiny", "v25-full"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
}

// Every name the spec formats, its grammar classifies back to what it was made from.
TEST(ModelSpecNames, FormattedNamesClassifyBack) {
  for (const char* preset : {"tiny", "v26-tiny", "v25-tiny"}) {
    const auto spec = model_spec_for(config_of(preset));
    for (const std::string prefix : {"", "model.", "model.language_model."})
      for (const auto& g : spec->expert_groupings()) {
        const auto grouped = spec->classify(spec->grouped_experts_name(prefix, 3, g.grouped));
        EXPECT_EQ(grouped.kind, TensorKind::kGroupedExperts);
        EXPECT_EQ(grouped.projection, g.grouped);
        EXPECT_EQ(grouped.layer, 3);
        EXPECT_EQ(grouped.prefix, prefix);
        for (Projection p : g.parts) {
          const auto name = spec->expert_weight_name(prefix, 3, 17, p);
          const auto k = spec->classify(name);
          EXPECT_EQ(k.kind, TensorKind::kExpertProj) << name;
          EXPECT_EQ(k.projection, p);
          EXPECT_EQ(k.expert, 17);
          EXPECT_TRUE(spec->is_grouped_expert(k));
          const auto scale = spec->block_scale_name(name);
          ASSERT_TRUE(scale);
          EXPECT_TRUE(spec->is_block_scale(*scale));
          EXPECT_EQ(spec->classify(*scale).weight_name, name);
          EXPECT_TRUE(spec->classify(spec->mx_scale_name(name)).is_mx_scale);
          EXPECT_EQ(spec->expert_hf_shape(p), spec->expected_hf_shape(k));
        }
      }
    const std::string q = "model.layers.1.self_attn.q_proj.weight";
    for (Projection p :
         {Projection::kQ, Projection::kK, Projection::kV, Projection::kO, Projection::kQkv}) {
      const auto k = spec->classify(spec->attention_weight_name(q, p));
      EXPECT_EQ(k.kind, TensorKind::kAttentionProj);
      EXPECT_EQ(k.projection, p);
      EXPECT_EQ(spec->attention_prefix(spec->attention_weight_name(q, p)),
                "model.layers.1.self_attn.");
    }
  }
}

// required_tensors plus the routed experts (and their scale companions) are exactly the
// tensors of a synthesized checkpoint of the family.
TEST(ModelSpecNames, RequiredTensorsAreTheCheckpointsTensors) {
  for (const char* preset : {"tiny", "v26-tiny", "v25-tiny"}) {
    test::TempDir dir;
    SynthOptions o;
    o.preset = preset;
    o.mtp_layers = 2;
    synthesize_checkpoint(dir / "hf", o);
    Checkpoint ck = Checkpoint::open(dir / "hf");
    const auto spec = model_spec_for(ModelConfig::load(dir / "hf" / "config.json"));
    std::set<std::string> have(ck.names().begin(), ck.names().end()), want;
    for (const auto& r : spec->required_tensors("model.", {0, 1}, false)) want.insert(r.name);
    for (const auto& name : have) {
      const auto k = spec->classify(name);
      if (k.is_scale || k.kind == TensorKind::kExpertProj || spec->is_passthrough(name)) continue;
      EXPECT_TRUE(want.contains(name)) << preset << ": " << name << " is not required";
    }
    for (const auto& name : want) EXPECT_TRUE(have.contains(name)) << preset << ": " << name;
  }
}

}  // namespace
}  // namespace moeckpt
