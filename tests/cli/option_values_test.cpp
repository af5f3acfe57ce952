// Option values are checked as what they are: no negative byte count wrapping to 2^64, no NaN
// tolerance that passes everything, no zero shard size, integer ranges shown as integers; and the
// small contracts around paths (a dangling-symlink destination, a non-UTF-8 path in JSON).
#include <gtest/gtest.h>

#include "moeckpt/error.hpp"
#include "moeckpt/synth.hpp"
#include "moeckpt/verify.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {
namespace fs = std::filesystem;
using test::run_cli;

struct Case {
  std::vector<std::string> args;
  std::string fragment;
};

TEST(OptionValues, OutOfRangeValuesAreUsageErrors) {
  test::TempDir dir;
  const auto d = dir.path().string();
  const std::vector<Case> cases{
      {{"synth", d + "/s", "--shard-size", "0"}, "--shard-size: must be a whole number from 1"},
      {{"synth", d + "/s", "--shard-size", "-1"}, "not '-1'"},
      {{"synth", d + "/s", "--experts", "0"}, "--experts: must be a whole number from 1 to 4096"},
      {{"synth", d + "/s", "--layers", "1.5"}, "not '1.5'"},
      {{"from-hf", d, d + "/o", "--shard-size", "-1"}, "--shard-size: must be a whole number"},
      {{"from-hf", d, d + "/o", "--max-memory", "-1"}, "--max-memory: must be a whole number"},
      {{"from-hf", d, d + "/o", "--max-memory", "18446744073709551616"}, "--max-memory"},
      {{"from-hf", d, d + "/o", "--ep-size", "0"}, "--ep-size: must be a whole number from 1 to"},
      {{"from-hf", d, d + "/o", "--ep-rank", "-2", "--ep-size", "2"}, "--ep-rank: must be"},
      {{"from-hf", d, d + "/o", "--threads", "-1"}, "--threads: must be a whole number from 0"},
      {{"to-hf", d, d + "/o", "--shard-size", "0x10"}, "not '0x10'"},
      {{"dequantize", d, d + "/o", "--max-memory", "1e9"}, "not '1e9'"},
      {{"verify", d, d, "--atol", "nan"}, "--atol: must be a finite number >= 0, not 'nan'"},
      {{"verify", d, d, "--rtol", "inf"}, "--rtol: must be a finite number >= 0"},
      {{"verify", d, d, "--rtol", "-0.5"}, "--rtol: must be a finite number >= 0"},
  };
  for (const auto& c : cases) {
    auto r = run_cli(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args[0] << " " << c.fragment << ": " << r.err;
    EXPECT_NE(r.err.find(c.fragment), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("e+308"), std::string::npos) << "a float range: " << r.err;
    EXPECT_FALSE(fs::exists(dir / "o"));
    EXPECT_FALSE(fs::exists(dir / "s"));
  }
}

TEST(OptionValues, TheLibraryRefusesNonFiniteTolerancesToo) {
  test::TempDir dir;
  SynthOptions o;
  o.preset = "micro";
  synthesize_checkpoint(dir / "hf", o);
  for (double bad : {std::nan(""), std::numeric_limits<double>::infinity(), -1.0}) {
    VerifyOptions v;
    v.atol = bad;
    EXPECT_THROW(verify_checkpoints(dir / "hf", dir / "hf", v), Error);
    v.atol = 0;
    v.rtol = bad;
    EXPECT_THROW(verify_checkpoints(dir / "hf", dir / "hf", v), Error);
  }
}

TEST(OptionValues, PathsThatUsedToGiveLibraryMessages) {
  test::TempDir dir;
  auto r = run_cli({"synth", (dir / "hf").string(), "--preset", "micro"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // A dangling symlink as the destination.
  fs::create_symlink(dir / "nowhere", dir / "dangling");
  r = run_cli({"from-hf", (dir / "hf").string(), (dir / "dangling").string(), "--quiet"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(
      r.err.find("is a symbolic link to " + (dir / "nowhere").string() + ", which does not exist"),
      std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find("File exists"), std::string::npos) << r.err;
  // A folder whose name is not UTF-8: inspect --json prints JSON, not a library exception.
  const fs::path odd = dir / std::string("bad\xff\xfe");
  fs::copy(dir / "hf", odd);
  r = run_cli({"inspect", odd.string(), "--json", "--headers-only"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"tensors\""), std::string::npos) << r.out;
  EXPECT_EQ(r.err.find("type_error"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace moeckpt

namespace moeckpt {
namespace {

TEST(OptionValues, SynthWithAZeroShardSizeWritesNothing) {
  test::TempDir dir;
  SynthOptions o;
  o.preset = "micro";
  o.max_shard_bytes = 0;
  EXPECT_THROW(synthesize_checkpoint(dir / "s", o), Error);
  EXPECT_FALSE(std::filesystem::exists(dir / "s"));
}

}  // namespace
}  // namespace moeckpt
