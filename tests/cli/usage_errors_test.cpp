// Usage errors the option parser cannot see alone (option combinations, values only the library
// can judge) exit 2 with one line, as the parser's own do (README: 2 is a usage error), and are
// found before anything is read or written.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;
using test::run_cli;

struct Case {
  std::vector<std::string> args;
  std::string fragment;
};

void expect_usage_error(const Case& c, const fs::path& dst) {
  const auto r = run_cli(c.args);
  std::string shown;
  for (const auto& a : c.args) shown += a + " ";
  EXPECT_EQ(r.exit_code, 2) << shown << ": " << r.err;
  EXPECT_NE(r.err.find(c.fragment), std::string::npos) << shown << ": " << r.err;
  // One line, the CLI's error prefix.
  EXPECT_TRUE(r.err.starts_with("moeckpt: error: ")) << shown << ": " << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << shown << ": " << r.err;
  EXPECT_FALSE(fs::exists(dst)) << shown;
}

TEST(UsageErrors, OptionCombinationsFoundAfterParsingExitTwo) {
  test::TempDir dir;
  const auto hf = (dir / "hf").string(), native = (dir / "native").string();
  ASSERT_EQ(run_cli({"synth", hf, "--preset", "micro"}).exit_code, 0);
  ASSERT_EQ(run_cli({"from-hf", hf, native, "--quiet"}).exit_code, 0);
  const auto dst = dir / "out";
  const auto out = dst.string();
  const std::vector<Case> cases{
      // The four of issue 27.
      {{"from-hf", hf, out, "--ep-rank", "1"}, "--ep-rank needs --ep-size"},
      {{"from-hf", hf, out, "--ep-size", "3", "--ep-rank", "3"},
       "--ep-rank 3 is not below the EP size 3 (expected an --ep-rank in [0, 3), or all)"},
      {{"to-hf", native, out, "--exclude", "(?=x)"},
       "regular expression \"(?=x)\" uses a construct the linear-time matcher does not support"},
      {{"synth", out, "--preset", "tiny", "--tp-size", "2"},
       "a TP degree (2) for the MiMo-V2-Flash layout"},
      // Their neighbours.
      {{"from-hf", hf, out, "--ep-size", "1", "--ep-rank", "all"},
       "--ep-rank all with an EP size of 1"},
      {{"to-hf", native, out, "--exclude", "("}, "regular expression \"(\" is invalid"},
      {{"to-hf", native, out, "--compat", "automodel-0.6", "--quant", "none"},
       "always quantizes as Automodel 0.6 does"},
      {{"to-hf", native, out, "--compat", "automodel", "--quant", "block"},
       "writes what Automodel 0.7 writes"},
      {{"from-hf", hf, out, "--workers", "2", "--worker", "2"},
       "--worker 2 is not below --workers 2"},
      {{"dequantize", hf, out, "--workers", "2", "--worker", "0", "--overwrite"},
       "--overwrite cannot be used by a distributed conversion"},
      {{"plan", hf, "--ep-size", "2", "--ep-rank", "2"}, "--ep-rank 2 is not below the EP size 2"},
      {{"plan", hf, "--ep-rank", "1"}, "--ep-rank 1 is not below the EP size 1"},
      {{"synth", out, "--preset", "v25-tiny", "--tp-size", "2"}, "the TP degree its config fixes"},
      {{"synth", out, "--preset", "v26-tiny", "--sparse"}, "sparse files of the"},
      {{"synth", out, "--preset", "deepseek-v3-tiny", "--mtp", "2"},
       "mtp = 2 MTP layers for a DeepSeek-V3 config that declares 1"},
  };
  for (const auto& c : cases) expect_usage_error(c, dst);
}

// Checked before any work: a source that does not exist is not even looked at.
TEST(UsageErrors, AreFoundBeforeTheSourceIsRead) {
  test::TempDir dir;
  const auto nowhere = (dir / "nowhere").string();
  const auto dst = dir / "out";
  const auto out = dst.string();
  expect_usage_error({{"from-hf", nowhere, out, "--ep-size", "3", "--ep-rank", "3"},
                      "--ep-rank 3 is not below the EP size 3"},
                     dst);
  expect_usage_error({{"to-hf", nowhere, out, "--exclude", "a(?!b)"}, "linear-time matcher"}, dst);
  expect_usage_error({{"plan", nowhere, "--ep-rank", "1"}, "--ep-rank 1 is not below"}, dst);
  // Not a usage error: the source itself.
  const auto r = run_cli({"from-hf", nowhere, out, "--ep-size", "3", "--ep-rank", "2"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
}

}  // namespace
}  // namespace moeckpt
