// Every command on every case of the hostile-input corpus (tests/data/malformed, made by
// tools/make_malformed_corpus.py): exit code 1 (not a signal, not a usage error), one line on
// stderr naming the file at fault and saying what is wrong, and no output left behind. The
// accepted variants (tests/data/accepted) convert and verify cleanly.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;
using test::run_cli;

const fs::path kData = MOECKPT_TEST_DATA_DIR;

std::vector<std::string> case_names(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_directory()) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Every regular file under `dir` (none may be left by a refused conversion, temporaries included).
std::vector<std::string> files_under(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return out;
  for (const auto& e : fs::recursive_directory_iterator(dir, ec))
    if (!e.is_directory()) out.push_back(e.path().string());
  return out;
}

void expect_refusal(const test::CommandResult& r, const std::string& fragment,
                    const std::string& path_at_fault) {
  EXPECT_EQ(r.exit_code, 1) << r.err;  // 2 is a usage error, > 128 a signal
  EXPECT_TRUE(r.err.starts_with("moeckpt: error: ")) << r.err;
  EXPECT_NE(r.err.find(fragment), std::string::npos) << "expected \"" << fragment << "\" in\n"
                                                     << r.err;
  EXPECT_NE(r.err.find(path_at_fault), std::string::npos)
      << "expected the path " << path_at_fault << " in\n"
      << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_TRUE(r.err.ends_with("\n")) << r.err;
}

class MalformedCorpus : public ::testing::TestWithParam<std::string> {};

TEST_P(MalformedCorpus, EveryCommandRefusesWithOneClearLine) {
  const fs::path dir = kData / "malformed" / GetParam();
  nlohmann::json expect;
  std::ifstream(dir / "expect.json") >> expect;
  const bool native = expect["layout"] == "native";
  const bool ranks = expect["ranks"].get<bool>();
  const fs::path good = kData / "corpus_base" / (native ? "native" : "hf");
  std::vector<std::string> inputs{dir.string()};
  if (ranks) inputs = {(dir / "rank0").string(), (dir / "rank1").string()};
  ASSERT_FALSE(expect["commands"].empty());
  test::TempDir tmp;
  for (const auto& [command, what] : expect["commands"].items()) {
    const auto fragment = what["error"].get<std::string>();
    const std::string at_fault =
        what["file"].is_null() ? dir.string() : (dir / what["file"].get<std::string>()).string();
    const fs::path dst = tmp / (command + "_out");
    std::vector<std::vector<std::string>> runs;
    if (command == "inspect") {
      runs = {{"inspect", inputs[0]}, {"inspect", inputs[0], "--json"}};
    } else if (command == "verify") {
      runs = {{"verify", inputs[0], good.string()}};
    } else if (command == "from-hf") {
      runs = {{"from-hf", inputs[0], dst.string(), "--quiet"}};
    } else {
      ASSERT_EQ(command, "to-hf");
      std::vector<std::string> args{"to-hf"};
      args.insert(args.end(), inputs.begin(), inputs.end());
      args.push_back(dst.string());
      args.push_back("--quiet");
      runs = {args};
    }
    for (const auto& args : runs) {
      SCOPED_TRACE(GetParam() + ": moeckpt " + args[0] +
                   (args.back() == "--json" ? " --json" : ""));
      auto r = run_cli(args);
      expect_refusal(r, fragment, at_fault);
      EXPECT_EQ(files_under(dst), std::vector<std::string>{}) << "left behind by " << command;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, MalformedCorpus,
                         ::testing::ValuesIn(case_names(kData / "malformed")),
                         [](const auto& info) { return info.param; });

TEST(MalformedCorpusSize, HoldsAtLeastSixtyCasesCoveringEveryCommand) {
  const auto names = case_names(kData / "malformed");
  EXPECT_GE(names.size(), 60u);
  std::map<std::string, size_t> per_command;
  for (const auto& n : names) {
    nlohmann::json expect;
    std::ifstream(kData / "malformed" / n / "expect.json") >> expect;
    for (const auto& [command, _] : expect["commands"].items()) per_command[command]++;
  }
  for (const char* c : {"inspect", "from-hf", "to-hf", "verify"})
    EXPECT_GE(per_command[c], 30u) << c;
}

class AcceptedCorpus : public ::testing::TestWithParam<std::string> {};

TEST_P(AcceptedCorpus, EveryCommandSucceeds) {
  const fs::path dir = kData / "accepted" / GetParam();
  test::TempDir tmp;
  auto ok = [](const test::CommandResult& r) {
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
  };
  ok(run_cli({"inspect", dir.string()}));
  ok(run_cli({"from-hf", dir.string(), (tmp / "native").string(), "--quiet"}));
  ok(run_cli({"from-hf", dir.string(), (tmp / "rank1").string(), "--ep-size", "2", "--ep-rank", "1",
              "--quiet"}));
  ok(run_cli({"from-hf", dir.string(), (tmp / "am").string(), "--compat", "automodel", "--quiet"}));
  // HF vs its own conversion: exact (the dequantized values are what from-hf wrote).
  ok(run_cli({"verify", dir.string(), (tmp / "native").string()}));
  ok(run_cli({"inspect", (tmp / "native").string()}));
  ok(run_cli({"to-hf", (tmp / "native").string(), (tmp / "back").string(), "--quiet"}));
  ok(run_cli({"verify", (tmp / "back").string(), (tmp / "native").string(), "--rtol", "0.07"}));
  ok(run_cli({"inspect", (tmp / "back").string()}));
}

INSTANTIATE_TEST_SUITE_P(Cases, AcceptedCorpus, ::testing::ValuesIn(case_names(kData / "accepted")),
                         [](const auto& info) { return info.param; });

TEST(AcceptedCorpusSize, HasTheExtraScaleRowsAndColumnsCases) {
  const auto names = case_names(kData / "accepted");
  for (const char* n : {"extra_scale_rows", "extra_scale_columns", "extra_scale_rows_and_columns"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
}

// The committed base is what `synth --preset micro --seed 1` writes today (the corpus can be
// regenerated), and it converts cleanly in every mode.
TEST(MicroPreset, MatchesTheCorpusBaseAndConvertsInEveryMode) {
  test::TempDir tmp;
  const fs::path hf = tmp / "hf";
  auto ok = [](const test::CommandResult& r) { ASSERT_EQ(r.exit_code, 0) << r.err; };
  ok(run_cli({"synth", hf.string(), "--preset", "micro", "--seed", "1"}));
  for (const auto& e : fs::directory_iterator(kData / "corpus_base" / "hf"))
    EXPECT_EQ(test::read_bytes(e.path()), test::read_bytes(hf / e.path().filename()))
        << e.path().filename();
  auto inspect = run_cli({"inspect", hf.string(), "--json"});
  ok(inspect);
  auto j = nlohmann::json::parse(inspect.out);
  EXPECT_EQ(j["problems"].size(), 0u);
  EXPECT_EQ(j["experts_per_layer"]["1"], 4);
  EXPECT_GE(j["shards"].get<int>(), 3);
  EXPECT_LT(j["total_bytes"].get<uint64_t>(), 200'000u);
  ok(run_cli({"from-hf", hf.string(), (tmp / "n").string(), "--quiet"}));
  ok(run_cli({"to-hf", (tmp / "n").string(), (tmp / "back").string(), "--quiet"}));
  auto v = run_cli({"verify", hf.string(), (tmp / "back").string()});
  ok(v);
  EXPECT_NE(v.out.find("OK"), std::string::npos) << v.out;
  ok(run_cli({"verify", hf.string(), (tmp / "n").string()}));
  ok(run_cli({"from-hf", hf.string(), (tmp / "am").string(), "--compat", "automodel", "--quiet"}));
  ok(run_cli({"to-hf", (tmp / "am").string(), (tmp / "amback").string(), "--compat", "automodel",
              "--quiet"}));
  ok(run_cli(
      {"to-hf", (tmp / "n").string(), (tmp / "bf16").string(), "--quant", "none", "--quiet"}));
  ok(run_cli({"verify", (tmp / "bf16").string(), (tmp / "n").string()}));
  for (int w : {2, 3}) {
    std::vector<std::string> args{"to-hf"};
    for (int r = 0; r < w; ++r) {
      const auto out = (tmp / ("ep" + std::to_string(w) + "_" + std::to_string(r))).string();
      ok(run_cli({"from-hf", hf.string(), out, "--ep-size", std::to_string(w), "--ep-rank",
                  std::to_string(r), "--quiet"}));
      ok(run_cli({"inspect", out}));
      args.push_back(out);
    }
    const auto back = (tmp / ("back" + std::to_string(w))).string();
    args.push_back(back);
    args.push_back("--quiet");
    ok(run_cli(args));
    ok(run_cli({"verify", hf.string(), back}));
  }
}

// inspect's data scan can be skipped: the headers and config then pass, the NaN code is not seen.
TEST(InspectCli, HeadersOnlySkipsTheDataScan) {
  const auto nan_case = (kData / "malformed" / "expert_fp8_nan_7f").string();
  EXPECT_EQ(run_cli({"inspect", nan_case}).exit_code, 1);
  auto r = run_cli({"inspect", nan_case, "--headers-only"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const auto no_config = (kData / "malformed" / "config_missing").string();
  r = run_cli({"inspect", no_config, "--headers-only"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("no config.json"), std::string::npos) << r.out;
}

TEST(InspectCli, JsonOnTheTinyPresetReportsTheRecipeCounts) {
  test::TempDir dir;
  auto synth = run_cli({"synth", (dir / "tiny").string(), "--preset", "tiny", "--seed", "3"});
  ASSERT_EQ(synth.exit_code, 0) << synth.err;
  auto r = run_cli({"inspect", (dir / "tiny").string(), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["tensors"], 257);
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

}  // namespace
}  // namespace moeckpt
