// Lines the CLI prints that must say what is true: inspect's attention kind per layer, the memory
// budget refusal's figures, an idle distributed worker's closing line, shards kept by a resume, and
// the flags a refusal suggests.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;
using test::run_cli;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

class CliMessages : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(run_cli({"synth", hf(), "--preset", "tiny"}).exit_code, 0); }
  std::string hf() const { return (dir_ / "hf").string(); }
  std::string at(const std::string& name) const { return (dir_ / name).string(); }
  test::TempDir dir_;
};

// The tiny preset's layers 0 and 3 are full attention (hybrid_layer_pattern), 1 and 2 and the MTP
// layers sliding window: the per-layer list agrees with the summary line above it.
TEST_F(CliMessages, InspectNamesEachLayersAttentionKind) {
  auto r = run_cli({"inspect", hf()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "(2 full attention, 2 sliding window;")) << r.out;
  EXPECT_TRUE(contains(r.out, "  layer 0      full            k scale [8, 2]     fused_kv_t4"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "  layer 1      sliding_window  k scale [12, 2]    plain")) << r.out;
  EXPECT_TRUE(contains(r.out, "  layer 2      sliding_window")) << r.out;
  EXPECT_TRUE(contains(r.out, "  layer 3      full            k scale [8, 2]     fused_kv_t4"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "  layer mtp.0  sliding_window")) << r.out;

  r = run_cli({"inspect", hf(), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  std::map<std::string, std::string> kinds;
  for (const auto& a : j.at("attention_scale_layouts"))
    kinds[a.at("layer").get<std::string>()] = a.at("kind").get<std::string>();
  const std::map<std::string, std::string> want{{"0", "full"},
                                                {"1", "sliding_window"},
                                                {"2", "sliding_window"},
                                                {"3", "full"},
                                                {"mtp.0", "sliding_window"},
                                                {"mtp.1", "sliding_window"},
                                                {"mtp.2", "sliding_window"}};
  EXPECT_EQ(kinds, want);
  EXPECT_EQ(j.at("layers").at("full_attention"), 2);
}

// The refusal compares the task with the budget's in-flight share and says so, in bytes: never
// "holds 2.1 MiB ... more than a budget of 2.8 MiB".
TEST_F(CliMessages, ABudgetRefusalNamesTheShareItComparedWith) {
  auto r =
      run_cli({"from-hf", hf(), at("n"), "--quiet", "--threads", "1", "--max-memory", "3000000"});
  ASSERT_EQ(r.exit_code, 1) << r.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      r.err, m,
      std::regex("holds (\\d+) bytes \\([0-9.]+ MiB\\) of buffers at once, more than the (\\d+) "
                 "bytes \\([0-9.]+ MiB\\) that a memory budget of 3000000 bytes \\(2.86 MiB\\) "
                 "leaves for tasks in flight")))
      << r.err;
  const uint64_t need = std::stoull(m[1]), in_flight = std::stoull(m[2]);
  EXPECT_GT(need, in_flight) << r.err;
  EXPECT_LT(in_flight, 3000000u) << r.err;
  EXPECT_TRUE(contains(r.err, "expected a memory budget of at least")) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "n" / "model.safetensors"));
}

// A worker that owns no shard of the plan says so, instead of "wrote DST: 86 tensors, 0 bytes".
TEST_F(CliMessages, AnIdleWorkerSaysItHadNoShards) {
  // One output shard (the default size): workers 1..7 of 8 own none.
  auto r = run_cli({"from-hf", hf(), at("w"), "--quiet", "--workers", "8", "--worker", "5"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "from-hf: worker 5 of 8 had no shards to write: the 1 shard of " +
                                  at("w") + " belongs to other workers"))
      << r.out;
  EXPECT_FALSE(contains(r.out, "tensors")) << r.out;
  EXPECT_FALSE(contains(r.out, "0 bytes")) << r.out;
  EXPECT_FALSE(fs::exists(at("w") + "/model.safetensors")) << "worker 0 has not run";
  // Worker 0 completes the folder alone.
  r = run_cli({"from-hf", hf(), at("w"), "--quiet", "--workers", "8", "--worker", "0"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out,
                       "worker 0 of 8 wrote 1 of the 1 shards; every worker's shards "
                       "verified, the folder is complete"))
      << r.out;
}

// A worker relaunched with --resume after it finished (never interrupted) keeps its recorded
// shards: the line says they were finished by an earlier run, not "kept from the interrupted run".
TEST_F(CliMessages, KeptShardsOfAResumeAreNamedNeutrally) {
  const std::vector<std::string> w1{"from-hf", hf(),        at("d"), "--quiet",  "--shard-size",
                                    "3000000", "--workers", "2",     "--worker", "1"};
  auto r = run_cli(w1);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(contains(r.out, "kept")) << r.out;
  // Its own share: the tensors of the shards it wrote, not the plan's 86.
  std::smatch m;
  ASSERT_TRUE(
      std::regex_search(r.out, m, std::regex("wrote [^\n]*: (\\d+) tensors, (\\d+) bytes in")))
      << r.out;
  EXPECT_GT(std::stoi(m[1]), 0) << r.out;
  EXPECT_LT(std::stoi(m[1]), 86) << r.out;
  auto again = w1;
  again.push_back("--resume");
  r = run_cli(again);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(contains(r.out, "interrupted")) << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex("wrote [^\n]*: 0 tensors, 0 bytes in"))) << r.out;
  EXPECT_TRUE(std::regex_search(
      r.out, std::regex("worker 1 of 2 wrote 0 of the \\d+ shards and kept \\d+ \\(finished by an "
                        "earlier run and verified\\); .* is not complete yet")))
      << r.out;
  // The folder completes as usual.
  r = run_cli({"from-hf", hf(), at("d"), "--quiet", "--shard-size", "3000000", "--workers", "2",
               "--worker", "0", "--resume", "--wait", "60"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir_ / "d" / "model.safetensors.index.json"));
}

// The library names the option a refusal suggests by tag; the CLI spells it as its flag (Python
// as its keyword: tests/python/test_option_words.py), with the budget that works.
TEST_F(CliMessages, RefusalsNameTheFlagThatHelps) {
  ASSERT_EQ(run_cli({"dequantize", hf(), at("out"), "--quiet"}).exit_code, 0);
  auto r = run_cli({"dequantize", hf(), at("out"), "--quiet"});
  ASSERT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(contains(r.err,
                       "destination already holds a checkpoint (expected an empty folder, "
                       "or --overwrite to replace it)"))
      << r.err;
  r = run_cli({"dequantize", hf(), at("out"), "--quiet", "--resume"});
  ASSERT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(contains(r.err, "nothing to resume (expected --overwrite to replace it)")) << r.err;

  // What a killed conversion leaves: its manifest (refused before it is read).
  fs::create_directories(dir_ / "unfinished");
  test::write_text(dir_ / "unfinished" / ".moeckpt-manifest.json", "{}");
  r = run_cli({"dequantize", hf(), at("unfinished"), "--quiet"});
  ASSERT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(contains(r.err,
                       "holds an unfinished conversion (expected --resume to continue it, "
                       "or --overwrite to start over)"))
      << r.err;

  r = run_cli({"from-hf", hf(), at("n"), "--quiet", "--max-memory", "1000"});
  ASSERT_EQ(r.exit_code, 1) << r.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      r.err, m,
      std::regex("expected a memory budget of at least (\\d+) bytes: --max-memory (\\d+)\\)")))
      << r.err;
  EXPECT_EQ(m[1].str(), m[2].str()) << r.err;
  for (const auto* neutral : {"the overwrite option", "the resume option", "memory budget option"})
    EXPECT_FALSE(contains(r.err, neutral)) << r.err;
}

}  // namespace
}  // namespace moeckpt
