// The CLI under a low open-file limit (soft and hard, so its own raise cannot lift it): checkpoints
// of more shards than descriptors are read and written, a distributed run of more workers than
// descriptors is finalized, and running out of descriptors is reported as what it is.
#include <gtest/gtest.h>

#include <cstdlib>

#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kLimit = 64;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

class OpenFileLimit : public ::testing::Test {
 protected:
  void SetUp() override {
    // A shard per tensor: about 400 input shards.
    auto r = test::run_cli({"synth", hf().string(), "--experts", "16", "--shard-size", "1"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  fs::path hf() const { return dir_ / "hf"; }
  test::TempDir dir_;
};

TEST_F(OpenFileLimit, CheckpointsOfMoreShardsThanDescriptorsConvert) {
  const auto out = (dir_ / "out").string();
  for (const std::vector<std::string>& cmd :
       {std::vector<std::string>{"inspect", hf().string()},
        {"dequantize", hf().string(), out, "--shard-size", "1", "--quiet"},
        {"verify", hf().string(), hf().string()},
        {"from-hf", hf().string(), (dir_ / "native").string(), "--quiet"}}) {
    SCOPED_TRACE(cmd.front());
    auto r = test::run_cli_with_open_file_limit(cmd, kLimit);
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
  auto r = test::run_cli({"inspect", out});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST_F(OpenFileLimit, RunningOutOfDescriptorsSaysSo) {
#ifdef MOECKPT_UNDER_ASAN
  // The sanitizers' runtime needs descriptors of its own (a pipe to probe memory before it reads
  // it): at the limit it reports false errors of its own.
  GTEST_SKIP() << "the sanitizer runtime misreports at the descriptor limit";
#endif
  // A registry allowed more descriptors than the process has: the open that fails says why.
  ::setenv("MOECKPT_MAX_OPEN_FILES", "100000", 1);
  auto r = test::run_cli_with_open_file_limit({"inspect", hf().string()}, kLimit);
  ::unsetenv("MOECKPT_MAX_OPEN_FILES");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(contains(r.err, "too many open files: this process has reached its limit of 64"))
      << r.err;
  EXPECT_TRUE(contains(r.err, "ulimit -n")) << r.err;
}

TEST_F(OpenFileLimit, MoreWorkersThanDescriptorsAreFinalized) {
  const auto out = (dir_ / "dist").string();
  constexpr int kWorkers = 3 * kLimit / 2;
  auto worker = [&](int k) {
    return std::vector<std::string>{
        "dequantize", hf().string(),     out,         "--shard-size",
        "1",          "--quiet",         "--workers", std::to_string(kWorkers),
        "--worker",   std::to_string(k), "--wait",    "0"};
  };
  for (int k = 1; k < kWorkers; ++k) {
    auto r = test::run_cli_with_open_file_limit(worker(k), kLimit);
    ASSERT_EQ(r.exit_code, 0) << "worker " << k << ": " << r.err;
  }
  // Worker 0 last: it finalizes with every other worker done; no lock is held per worker.
  auto r = test::run_cli_with_open_file_limit(worker(0), kLimit);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(contains(r.err, "still running")) << r.err;
  EXPECT_TRUE(fs::exists(dir_ / "dist" / "model.safetensors.index.json"));
  const auto hidden = test::hidden_files(dir_ / "dist");
  EXPECT_TRUE(hidden.empty()) << hidden.front();
}

}  // namespace
}  // namespace moeckpt
