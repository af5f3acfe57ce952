// from-hf / to-hf / verify through the CLI: progress lines, closing summary, exit codes.
#include <gtest/gtest.h>

#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

using test::run_cli;

TEST(ConvertCli, ReportsProgressPerShardAndASummary) {
  test::TempDir dir;
  synthesize_checkpoint(dir / "hf", {});
  // stderr is not a terminal here: one line per finished shard.
  auto r = run_cli({"from-hf", (dir / "hf").string(), (dir / "native").string(), "--shard-size",
                    "8000000", "--threads", "2", "--max-memory", "4000000"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("shard 1/4 model-00001-of-00004.safetensors done"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("shard 4/4 model-00004-of-00004.safetensors done"), std::string::npos)
      << r.err;
  EXPECT_NE(r.out.find("from-hf: wrote"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("86 tensors, 26251440 bytes, 4 shards"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("peak RSS"), std::string::npos) << r.out;

  auto q = run_cli({"to-hf", (dir / "native").string(), (dir / "back").string(), "--quiet"});
  ASSERT_EQ(q.exit_code, 0) << q.err;
  EXPECT_TRUE(q.err.empty()) << q.err;
  auto v = run_cli({"verify", (dir / "hf").string(), (dir / "back").string()});
  EXPECT_EQ(v.exit_code, 0) << v.err;
  EXPECT_NE(v.out.find("; OK"), std::string::npos) << v.out;

  auto am = run_cli({"from-hf", (dir / "hf").string(), (dir / "am").string(), "--compat",
                     "automodel", "--quiet"});
  ASSERT_EQ(am.exit_code, 0) << am.err;
  auto diff = run_cli({"verify", (dir / "hf").string(), (dir / "am").string()});
  EXPECT_EQ(diff.exit_code, 1);  // the plain grid misreads the fused K/V rows
  EXPECT_NE(diff.err.find("differ beyond the tolerance"), std::string::npos) << diff.err;
}

TEST(ConvertCli, RefusesBadArguments) {
  test::TempDir dir;
  synthesize_checkpoint(dir / "hf", {});
  // Bad option combinations are usage errors (tests/cli/usage_errors_test.cpp has the rest).
  auto r = run_cli({"from-hf", (dir / "hf").string(), (dir / "x").string(), "--ep-rank", "1"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--ep-rank needs --ep-size"), std::string::npos) << r.err;
  r = run_cli(
      {"from-hf", (dir / "hf").string(), (dir / "x").string(), "--ep-size", "2", "--ep-rank", "2"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--ep-rank 2 is not below the EP size 2"), std::string::npos) << r.err;
  r = run_cli({"to-hf", (dir / "hf").string()});
  EXPECT_EQ(r.exit_code, 2);  // needs a destination
  r = run_cli({"from-hf", (dir / "hf").string(), (dir / "hf" / "inside").string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("inside it"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace moeckpt

namespace moeckpt {
namespace {

// --compat names the Automodel version; each version's to-hf rules.
TEST(CompatCli, VersionsAndTheirQuantizationRules) {
  test::TempDir dir;
  ASSERT_EQ(test::run_cli({"synth", (dir / "hf").string(), "--preset", "micro"}).exit_code, 0);
  ASSERT_EQ(test::run_cli({"from-hf", (dir / "hf").string(), (dir / "n").string(), "--quiet",
                           "--compat", "automodel-0.6"})
                .exit_code,
            0);
  auto r = test::run_cli({"to-hf", (dir / "n").string(), (dir / "x").string(), "--compat",
                          "automodel-0.6", "--quant", "none"});
  EXPECT_EQ(r.exit_code, 2);  // a usage error
  EXPECT_NE(r.err.find("always quantizes as Automodel 0.6 does"), std::string::npos) << r.err;
  r = test::run_cli({"to-hf", (dir / "n").string(), (dir / "x").string(), "--compat",
                     "automodel-0.7", "--quant", "block"});
  EXPECT_EQ(r.exit_code, 2);
  r = test::run_cli({"to-hf", (dir / "n").string(), (dir / "bf16").string(), "--quiet", "--compat",
                     "automodel-0.7", "--quant", "none"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  for (const char* v : {"automodel", "automodel-0.6", "automodel-0.7"}) {
    r = test::run_cli({"to-hf", (dir / "n").string(), (dir / (std::string("c") + v)).string(),
                       "--quiet", "--compat", v});
    EXPECT_EQ(r.exit_code, 0) << v << r.err;
  }
  // 0.6 and 0.7 casts agree on a checkpoint without visual./audio. keys; "automodel" is 0.7.
  EXPECT_EQ(test::read_bytes(dir / "cautomodel-0.6" / "model.safetensors"),
            test::read_bytes(dir / "cautomodel-0.7" / "model.safetensors"));
  EXPECT_EQ(test::read_bytes(dir / "cautomodel" / "model.safetensors"),
            test::read_bytes(dir / "cautomodel-0.7" / "model.safetensors"));
  r = test::run_cli(
      {"from-hf", (dir / "hf").string(), (dir / "y").string(), "--compat", "automodel-0.5"});
  EXPECT_EQ(r.exit_code, 2);  // a usage error
}

}  // namespace
}  // namespace moeckpt
