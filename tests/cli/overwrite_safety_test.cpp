// --overwrite never loses data: the destination is told apart from the sources by device and
// inode (a symlink, "..", a bind mount), only verifiable safetensors shards of the old checkpoint
// are removed or replaced (never what a hostile index names, never a user's file under a shard
// name, never an input), and the old checkpoint stays intact until the new one is complete (a full
// disk or a kill during an overwrite leaves it as it was).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;
using test::final_files;
using test::hidden_files;
using test::run_cli;

class OverwriteSafety : public ::testing::Test {
 protected:
  void SetUp() override {
    SynthOptions a, b;
    a.seed = 1;
    b.seed = 2;
    synthesize_checkpoint(dir_ / "hf", a);
    synthesize_checkpoint(dir_ / "hf2", b);
    // The destination holds a converted checkpoint (several shards) and the user's own files.
    ASSERT_EQ(run_cli({"from-hf", src(), out(), "--shard-size", "8000000", "--quiet"}).exit_code,
              0);
    test::write_text(dir_ / "out" / "README.md", "my notes\n");
    test::write_text(dir_ / "out" / "tokenizer.json", "{\"keep\": true}\n");
    before_ = final_files(dir_ / "out");
    src_before_ = final_files(dir_ / "hf");
  }
  std::string src() const { return (dir_ / "hf").string(); }
  std::string out() const { return (dir_ / "out").string(); }
  void expect_old_intact() {
    EXPECT_EQ(final_files(dir_ / "out"), before_);
    EXPECT_EQ(final_files(dir_ / "hf"), src_before_);
  }
  test::TempDir dir_;
  std::map<std::string, std::vector<uint8_t>> before_, src_before_;
};

TEST_F(OverwriteSafety, TheSourceByAnotherPathIsRefused) {
  fs::create_symlink(dir_ / "hf", dir_ / "link");
  fs::create_directories(dir_ / "x");
  for (const auto& dst : {(dir_ / "link").string(), (dir_ / "x" / ".." / "hf").string(),
                          (dir_ / "link" / "sub").string()}) {
    auto r = run_cli({"from-hf", src(), dst, "--overwrite", "--quiet"});
    EXPECT_EQ(r.exit_code, 1) << dst;
    EXPECT_NE(r.err.find("by device and inode"), std::string::npos) << r.err;
  }
  // A bind mount of the source: another path, another mount, the same inodes.
  fs::create_directories(dir_ / "bind");
  if (::mount(src().c_str(), (dir_ / "bind").c_str(), nullptr, MS_BIND, nullptr) != 0)
    GTEST_SKIP() << "bind mounts are not permitted here; symlink and '..' paths were checked";
  struct Unmount {
    fs::path p;
    ~Unmount() { ::umount(p.c_str()); }
  } unmount{dir_ / "bind"};
  auto r = run_cli({"from-hf", src(), (dir_ / "bind").string(), "--overwrite", "--quiet"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("by device and inode"), std::string::npos) << r.err;
  r = run_cli({"dequantize", (dir_ / "bind").string(), src(), "--overwrite", "--quiet"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(final_files(dir_ / "hf"), src_before_);
}

TEST_F(OverwriteSafety, AHostileIndexCannotDeleteOtherFiles) {
  // The old index names the user's files as shards.
  auto idx = nlohmann::json::parse(test::read_bytes(dir_ / "out" / "model.safetensors.index.json"));
  idx["weight_map"]["evil.a"] = "README.md";
  idx["weight_map"]["evil.b"] = "tokenizer.json";
  idx["weight_map"]["evil.c"] = "../hf/model-00001-of-00004.safetensors";
  test::write_text(dir_ / "out" / "model.safetensors.index.json", idx.dump());
  auto r = run_cli({"from-hf", (dir_ / "hf2").string(), out(), "--overwrite", "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(test::read_bytes(dir_ / "out" / "README.md"), before_.at("README.md"));
  EXPECT_EQ(test::read_bytes(dir_ / "out" / "tokenizer.json"), before_.at("tokenizer.json"));
  EXPECT_EQ(final_files(dir_ / "hf"), src_before_);
  EXPECT_TRUE(hidden_files(dir_ / "out").empty());
  // The old shards are gone; the new checkpoint is complete.
  EXPECT_EQ(run_cli({"inspect", out(), "--headers-only"}).exit_code, 0);
}

TEST_F(OverwriteSafety, AUserFileUnderANewShardNameIsNeverReplaced) {
  // A text file where the new (single-shard) checkpoint's file would go, and a hard link of an
  // input file under another shard name.
  test::write_text(dir_ / "out" / "model.safetensors", "not a checkpoint\n");
  auto r = run_cli({"from-hf", (dir_ / "hf2").string(), out(), "--overwrite", "--quiet"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("is not a safetensors shard this conversion may replace"), std::string::npos)
      << r.err;
  EXPECT_EQ(test::read_bytes(dir_ / "out" / "model.safetensors"),
            std::vector<uint8_t>({'n', 'o', 't', ' ', 'a', ' ', 'c', 'h', 'e', 'c', 'k', 'p', 'o',
                                  'i', 'n', 't', '\n'}));
  fs::remove(dir_ / "out" / "model.safetensors");
  std::string shard;  // a shard name the new checkpoint takes (the same layout as the old one)
  for (const auto& [name, _] : before_)
    if (name.starts_with("model-")) shard = name;
  ASSERT_FALSE(shard.empty());
  fs::remove(dir_ / "out" / shard);
  fs::create_hard_link(dir_ / "hf" / "model-00001-of-00004.safetensors", dir_ / "out" / shard);
  r = run_cli({"from-hf", src(), out(), "--overwrite", "--quiet", "--shard-size", "8000000"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("(or is one of its inputs)"), std::string::npos) << r.err;
  EXPECT_EQ(final_files(dir_ / "hf"), src_before_);
}

TEST_F(OverwriteSafety, AFailedOverwriteKeepsTheOldCheckpoint) {
  for (const char* budget : {"0", "3000000", "20000000"}) {
    SCOPED_TRACE(budget);
    ::setenv("MOECKPT_FAULT_ENOSPC_AFTER_BYTES", budget, 1);
    auto r = run_cli({"from-hf", (dir_ / "hf2").string(), out(), "--overwrite", "--quiet",
                      "--shard-size", "3000000"});
    ::unsetenv("MOECKPT_FAULT_ENOSPC_AFTER_BYTES");
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("No space left on device"), std::string::npos) << r.err;
    expect_old_intact();
    EXPECT_TRUE(hidden_files(dir_ / "out").empty());
  }
  // With room on the disk the same overwrite completes: the new checkpoint, user files kept.
  auto r = run_cli({"from-hf", (dir_ / "hf2").string(), out(), "--overwrite", "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(run_cli({"verify", (dir_ / "hf2").string(), out()}).exit_code, 0);
  EXPECT_EQ(test::read_bytes(dir_ / "out" / "README.md"), before_.at("README.md"));
}

TEST_F(OverwriteSafety, AKilledOverwriteKeepsTheOldCheckpointAndResumes) {
  auto clean = run_cli({"from-hf", (dir_ / "hf2").string(), (dir_ / "clean").string(), "--quiet",
                        "--shard-size", "3000000"});
  ASSERT_EQ(clean.exit_code, 0);
  auto want = final_files(dir_ / "clean");
  std::mt19937 rng(7);
  int mid = 0;
  const int trials = test::trials(12, 4);
  for (int trial = 0; trial < trials; ++trial) {
    const pid_t pid = test::spawn_cli({"from-hf", (dir_ / "hf2").string(), out(), "--overwrite",
                                       "--quiet", "--shard-size", "3000000", "--threads", "1"});
    std::this_thread::sleep_for(
        std::chrono::microseconds(std::uniform_int_distribution<int>(0, 120000)(rng)));
    const bool alive = ::kill(pid, SIGKILL) == 0;
    int status = 0;
    ::waitpid(pid, &status, 0);
    auto got = final_files(dir_ / "out");
    if (got.count("model.safetensors.index.json") && got != before_) {
      // The swap finished: the new checkpoint, the user's files kept.
      for (const auto& [name, bytes] : want) EXPECT_EQ(got.at(name), bytes) << name;
      EXPECT_EQ(got.at("README.md"), before_.at("README.md"));
    } else if (got.count("model.safetensors.index.json")) {
      expect_old_intact();  // killed while staging: nothing of the old checkpoint touched
      mid += alive;
    }
    // Whatever the moment: --overwrite again gives the new checkpoint and keeps user files.
    auto r = run_cli({"from-hf", (dir_ / "hf2").string(), out(), "--overwrite", "--quiet",
                      "--shard-size", "3000000"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    got = final_files(dir_ / "out");
    for (const auto& [name, bytes] : want) EXPECT_EQ(got.at(name), bytes) << name;
    EXPECT_EQ(got.at("README.md"), before_.at("README.md"));
    EXPECT_TRUE(hidden_files(dir_ / "out").empty());
    // Back to the old checkpoint for the next trial.
    r = run_cli({"from-hf", src(), out(), "--overwrite", "--quiet", "--shard-size", "8000000"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    ASSERT_EQ(final_files(dir_ / "out"), before_);
  }
  std::printf("killed while staging with the old checkpoint intact: %d of %d\n", mid, trials);
}

TEST_F(OverwriteSafety, AnInterruptedOverwriteResumesFromItsStagingFolder) {
  // SIGINT during the overwrite: finished staged shards are kept, the old checkpoint untouched.
  const pid_t pid =
      test::spawn_cli({"from-hf", (dir_ / "hf2").string(), out(), "--overwrite", "--quiet",
                       "--shard-size", "2000000", "--threads", "1", "--max-memory", "8000000"});
  // Signal once the overwrite is staging (its manifest exists): an earlier signal ends planning
  // at once, which leaves nothing to resume (that case is SignalWhilePlanning's).
  const auto manifest = dir_ / "out" / ".moeckpt-staging" / ".moeckpt-manifest.json";
  for (int i = 0; i < 4000 && !fs::exists(manifest); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ::kill(pid, SIGINT);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) GTEST_SKIP() << "finished before SIGINT";
  EXPECT_EQ(final_files(dir_ / "out"), before_);
  auto r = run_cli({"from-hf", (dir_ / "hf2").string(), out(), "--resume", "--quiet",
                    "--shard-size", "2000000", "--max-memory", "8000000"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_cli({"from-hf", (dir_ / "hf2").string(), (dir_ / "clean").string(), "--quiet",
               "--shard-size", "2000000"});
  ASSERT_EQ(r.exit_code, 0);
  auto got = final_files(dir_ / "out");
  for (const auto& [name, bytes] : final_files(dir_ / "clean")) EXPECT_EQ(got.at(name), bytes);
  EXPECT_EQ(got.at("README.md"), before_.at("README.md"));
  EXPECT_TRUE(hidden_files(dir_ / "out").empty());
}

}  // namespace
}  // namespace moeckpt
