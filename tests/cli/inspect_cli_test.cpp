// The CLI on good and malformed checkpoints: one clear line on stderr, a non-zero exit, no crash.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "moeckpt/safetensors_writer.hpp"
#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;
using test::run_cli;

std::string read_expect(const fs::path& dir) {
  std::ifstream f(dir / "expect.txt");
  std::string line;
  std::getline(f, line);
  return line;
}

TEST(InspectCli, RefusesEveryCaseOfTheMalformedCorpus) {
  const fs::path corpus = fs::path(MOECKPT_TEST_DATA_DIR) / "malformed";
  size_t cases = 0;
  for (const auto& entry : fs::directory_iterator(corpus)) {
    const auto expect = read_expect(entry.path());
    for (bool json : {false, true}) {
      std::vector<std::string> args{"inspect", entry.path().string()};
      if (json) args.push_back("--json");
      auto r = run_cli(args);
      SCOPED_TRACE(entry.path().filename().string() + (json ? " --json" : ""));
      EXPECT_EQ(r.exit_code, 1) << r.err;
      EXPECT_TRUE(r.err.starts_with("moeckpt: error: ")) << r.err;
      EXPECT_NE(r.err.find(expect), std::string::npos) << r.err;
      EXPECT_NE(r.err.find(entry.path().string()), std::string::npos) << "names no file: " << r.err;
      EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
      EXPECT_TRUE(r.out.empty()) << r.out;
    }
    ++cases;
  }
  EXPECT_GE(cases, 30u);
}

TEST(InspectCli, JsonOnTheTinyPresetReportsTheRecipeCounts) {
  test::TempDir dir;
  auto synth = run_cli({"synth", (dir / "tiny").string(), "--preset", "tiny", "--seed", "3"});
  ASSERT_EQ(synth.exit_code, 0) << synth.err;
  auto r = run_cli({"inspect", (dir / "tiny").string(), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["tensors"], 257);
  // 257 tensors; bytes from the recipe (see synth test): checked against the file sizes here.
  uint64_t file_bytes = 0, header_bytes = 0;
  for (const auto& e : fs::directory_iterator(dir / "tiny")) {
    if (e.path().extension() != ".safetensors") continue;
    file_bytes += fs::file_size(e.path());
    auto b = test::read_bytes(e.path());
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | b[static_cast<size_t>(i)];
    header_bytes += 8 + n;
  }
  EXPECT_EQ(j["total_bytes"].get<uint64_t>(), file_bytes - header_bytes);
  EXPECT_EQ(j["layers"]["mtp"], 3);
  EXPECT_EQ(j["experts_per_layer"]["1"], 8);
  EXPECT_EQ(j["problems"].size(), 0u);
  auto text = run_cli({"inspect", (dir / "tiny").string()});
  EXPECT_EQ(text.exit_code, 0);
  EXPECT_NE(text.out.find("tensors: 257"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("fused_kv_t4"), std::string::npos) << text.out;
}

TEST(InspectCli, UsageErrorsExitWithTwo) {
  EXPECT_EQ(run_cli({}).exit_code, 2);
  EXPECT_EQ(run_cli({"inspect"}).exit_code, 2);
  EXPECT_EQ(run_cli({"synth", "x", "--preset", "medium"}).exit_code, 2);
  EXPECT_EQ(run_cli({"frobnicate"}).exit_code, 2);
}

// Semantic problems: a tiny-config checkpoint with one defect each.
class SemanticCase {
 public:
  explicit SemanticCase(const fs::path& dir) : dir_(dir) {
    fs::create_directories(dir);
    std::ofstream(dir / "config.json") << synth_config({}).dump();
  }
  void add(std::string name, Dtype dt, std::vector<uint64_t> shape) {
    specs_.push_back({std::move(name), dt, std::move(shape)});
  }
  void write() {
    CheckpointWriter w(dir_, specs_);
    for (size_t i = 0; i < specs_.size(); ++i) {
      std::vector<uint8_t> bytes(specs_[i].nbytes(), 0);
      if (specs_[i].dtype == Dtype::F32)  // scales of 1.0
        for (size_t k = 0; k + 3 < bytes.size(); k += 4) bytes[k + 2] = 0x80, bytes[k + 3] = 0x3F;
      w.write(i, 0, bytes);
    }
    w.commit();
  }

 private:
  fs::path dir_;
  std::vector<TensorSpec> specs_;
};

TEST(InspectCli, ReportsSemanticProblems) {
  test::TempDir dir;
  struct Case {
    std::string name;
    std::function<void(SemanticCase&)> build;
    std::string fragment;
  };
  const std::string e0 = "model.layers.1.mlp.experts.0.";
  const Case cases[] = {
      {"fp8_without_scale",
       [&](SemanticCase& c) {
         c.add(e0 + "gate_proj.weight", Dtype::F8_E4M3, {128, 256});
       },
       "FP8 weight without a '_scale_inv' companion"},
      {"scale_too_small",
       [&](SemanticCase& c) {
         c.add(e0 + "down_proj.weight", Dtype::F8_E4M3, {256, 128});
         c.add(e0 + "down_proj.weight_scale_inv", Dtype::F32, {1, 1});
       },
       "is too small"},
      {"orphan_scale",
       [&](SemanticCase& c) {
         c.add(e0 + "up_proj.weight_scale_inv", Dtype::F32, {1, 2});
       },
       "scale without its weight"},
      {"scale_not_2d",
       [&](SemanticCase& c) {
         c.add("model.layers.0.mlp.up_proj.weight", Dtype::F8_E4M3, {512 * 256});
         c.add("model.layers.0.mlp.up_proj.weight_scale_inv", Dtype::F32, {4, 2});
       },
       "must be 2-D"},
      {"missing_expert_projection",
       [&](SemanticCase& c) {
         c.add(e0 + "gate_proj.weight", Dtype::BF16, {128, 256});
         c.add(e0 + "up_proj.weight", Dtype::BF16, {128, 256});
       },
       "missing down_proj"},
      {"shape_disagrees_with_config",
       [&](SemanticCase& c) {
         c.add("model.layers.1.self_attn.o_proj.weight", Dtype::BF16, {256, 512});
       },
       "disagrees with config.json (expected [256, 1024])"},
      {"expert_id_out_of_range",
       [&](SemanticCase& c) {
         c.add("model.layers.1.mlp.experts.8.up_proj.weight", Dtype::BF16, {128, 256});
       },
       "expert id 8 is not below n_routed_experts = 8"},
  };
  for (const auto& c : cases) {
    SemanticCase sc(dir / c.name);
    c.build(sc);
    sc.write();
    auto r = run_cli({"inspect", (dir / c.name).string()});
    SCOPED_TRACE(c.name);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find(c.fragment), std::string::npos) << r.err;
    EXPECT_NE(r.out.find("problem: "), std::string::npos) << r.out;
  }
  // config.json problems stop inspect with the config's file name.
  fs::create_directories(dir / "bad_config");
  SemanticCase ok(dir / "bad_config");
  ok.add("lm_head.weight", Dtype::BF16, {512, 256});
  ok.write();
  std::ofstream(dir / "bad_config" / "config.json") << "{\"hidden_size\": 256,";
  auto r = run_cli({"inspect", (dir / "bad_config").string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("config.json: config is not valid JSON"), std::string::npos) << r.err;
  std::ofstream(dir / "bad_config" / "config.json") << "{\"hidden_size\": 256}";
  r = run_cli({"inspect", (dir / "bad_config").string()});
  EXPECT_NE(r.err.find("config has no \"intermediate_size\""), std::string::npos) << r.err;
}

}  // namespace
}  // namespace moeckpt
