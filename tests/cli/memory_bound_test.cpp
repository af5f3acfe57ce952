// Peak resident set of the conversions, measured from outside (wait4 on the child), against the
// memory contract: at most --max-memory + 64 MiB, flat in the shard size and the expert count.
// Memory, not time: the figures do not depend on machine load. Skipped under sanitizers, whose
// shadow memory is part of the resident set.
#include <gtest/gtest.h>

#include <string>

#include "test_support.hpp"

namespace moeckpt {
namespace {

using test::run_cli;
using test::run_cli_measured;

constexpr uint64_t kMiB = 1ull << 20;

class MemoryBound : public ::testing::Test {
 protected:
  void SetUp() override {
#ifdef MOECKPT_UNDER_ASAN
    GTEST_SKIP() << "resident set includes the sanitizer's shadow memory";
#endif
  }
  // Real MiMo-V2-Flash layer dimensions (hidden 4096, expert width 2048, 64 q heads), trimmed.
  static void synth(const test::TempDir& dir, const std::string& name, int experts) {
    auto r = run_cli({"synth", (dir / name).string(), "--preset", "full", "--layers", "2",
                      "--experts", std::to_string(experts), "--vocab", "1024", "--mtp", "0"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  // The conversion's peak resident set; its output (args[2]) is removed unless `keep`: the fast
  // tier runs in memory (tmpfs), and these outputs are GBs.
  static uint64_t peak(const std::vector<std::string>& args, bool keep = false) {
    auto r = run_cli_measured(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    if (!keep) std::filesystem::remove_all(args.at(2));
    return r.peak_rss_bytes;
  }
};

TEST_F(MemoryBound, FromHfAndToHfStayWithinTheBudgetAndFlat) {
  test::TempDir dir;
  synth(dir, "hf8", 4);
  synth(dir, "hf4", 2);
  const auto hf8 = (dir / "hf8").string(), hf4 = (dir / "hf4").string();
  const auto n8 = (dir / "n8").string();
  const uint64_t from_default = peak({"from-hf", hf8, n8, "--quiet"}, /*keep=*/true);
  const uint64_t to_default = peak({"to-hf", n8, (dir / "b8").string(), "--quiet"});
  EXPECT_LE(from_default, 256 * kMiB);
  EXPECT_LE(to_default, 256 * kMiB);
  for (uint64_t budget : {64 * kMiB, 100 * kMiB}) {
    const auto b = std::to_string(budget);
    const auto tag = std::to_string(budget / kMiB);
    EXPECT_LE(peak({"from-hf", hf8, (dir / ("n" + tag)).string(), "--quiet", "--max-memory", b}),
              budget + 64 * kMiB)
        << "from-hf --max-memory " << b;
    EXPECT_LE(peak({"to-hf", n8, (dir / ("b" + tag)).string(), "--quiet", "--max-memory", b}),
              budget + 64 * kMiB)
        << "to-hf --max-memory " << b;
  }
  // verify streams too: a chunk of rows of each side at a time.
  auto v = run_cli_measured({"verify", hf8, n8});
  EXPECT_EQ(v.exit_code, 0) << v.err;
  EXPECT_LE(v.peak_rss_bytes, 256 * kMiB);
  // Not growing with the shard size (one 20 GB shard vs the default) ...
  const uint64_t big_shard =
      peak({"from-hf", hf8, (dir / "n8big").string(), "--quiet", "--shard-size", "20000000000"});
  EXPECT_LE(big_shard, from_default + from_default / 10);
  // ... nor with the expert count (4 vs 2 experts).
  const uint64_t four = peak({"from-hf", hf4, (dir / "n4").string(), "--quiet"});
  EXPECT_LE(from_default, four + four / 10);
}

TEST_F(MemoryBound, ABudgetBelowTheLargestTaskIsRefusedUpFront) {
  test::TempDir dir;
  synth(dir, "hf", 2);
  auto r = run_cli({"from-hf", (dir / "hf").string(), (dir / "n").string(), "--quiet",
                    "--max-memory", "4000000"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(
      r.err.find("that a memory budget of 4000000 bytes (3.81 MiB) leaves for tasks in flight"),
      std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("expected a memory budget of at least"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "n" / "model.safetensors"));
}

}  // namespace
}  // namespace moeckpt
