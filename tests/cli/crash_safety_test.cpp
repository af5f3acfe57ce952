// Crash safety of folder conversions through the CLI: conversions SIGKILLed at random moments
// never leave a broken checkpoint under final names and --resume finishes them byte for byte;
// destinations holding a checkpoint, an unfinished conversion or a running conversion are
// refused; a full disk ends cleanly.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>
#include <algorithm>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "io/dir_lock.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;
using test::run_cli;

using test::final_files;
using test::hidden_files;

// Starts the CLI, lets it run for `delay`, then sends it `sig`. Returns true if it was still
// running then; `status` gets its wait status.
bool run_and_kill(const std::vector<std::string>& args, std::chrono::microseconds delay,
                  int sig = SIGKILL, int* status_out = nullptr) {
  std::vector<std::string> argv_s{MOECKPT_CLI_PATH};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    FILE* devnull = std::fopen("/dev/null", "w");
    if (devnull) {
      ::dup2(fileno(devnull), 1);
      ::dup2(fileno(devnull), 2);
    }
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  std::this_thread::sleep_for(delay);
  int status = 0;
  bool running = ::waitpid(pid, &status, WNOHANG) == 0;
  if (running) {
    ::kill(pid, sig);
    ::waitpid(pid, &status, 0);
  }
  if (status_out) *status_out = status;
  return running;
}

struct KillStats {
  int before_any_shard = 0, partial = 0, complete = 0;
};

// Kills `args` (a conversion into `dst`) at random moments over its clean run time; after each
// kill nothing under a final name is broken, and --resume gives the clean output exactly.
void kill_and_resume_trials(const std::vector<std::string>& args, const fs::path& dst,
                            const fs::path& clean_dst, int trials, uint32_t seed) {
  std::vector<std::string> clean_args = args;
  clean_args.back() = clean_dst.string();
  auto t0 = std::chrono::steady_clock::now();
  auto clean = run_cli(clean_args);
  const auto clean_time = std::chrono::steady_clock::now() - t0;
  ASSERT_EQ(clean.exit_code, 0) << clean.err;
  const auto reference = final_files(clean_dst);
  ASSERT_GT(reference.size(), 4u);

  std::mt19937 rng(seed);
  const auto span = std::chrono::duration_cast<std::chrono::microseconds>(clean_time).count();
  std::uniform_int_distribution<int64_t> when(0, span + span / 10);
  KillStats stats;
  for (int trial = 0; trial < trials; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    fs::remove_all(dst);
    const auto delay = std::chrono::microseconds(when(rng));
    const bool killed = run_and_kill(args, delay);

    // What is there under final names is complete, never a torn file.
    const auto after = final_files(dst);
    size_t shards = 0;
    for (const auto& [name, bytes] : after) {
      auto ref = reference.find(name);
      ASSERT_NE(ref, reference.end()) << "unexpected file " << name;
      EXPECT_TRUE(bytes == ref->second) << name << " differs from the clean run's";
      if (name.ends_with(".safetensors")) ++shards;
    }
    const bool indexed = after.count("model.safetensors.index.json") > 0;
    if (indexed) {
      EXPECT_EQ(after.size(), reference.size()) << "an index with missing files";
    }
    // Without the index the folder must not pass for a checkpoint.
    if (!indexed && fs::exists(dst)) {
      auto inspect = run_cli({"inspect", dst.string()});
      EXPECT_NE(inspect.exit_code, 0) << "a partial output passes inspect";
    }
    if (indexed)
      ++stats.complete;
    else if (shards > 0)
      ++stats.partial;
    else
      ++stats.before_any_shard;

    const bool finished = indexed && !fs::exists(dst / ".moeckpt-manifest.json");
    std::vector<std::string> resume_args = args;
    resume_args.push_back("--resume");
    auto resumed = run_cli(resume_args);
    if (finished) {
      // Killed after it finished: nothing to resume, which is said plainly.
      EXPECT_EQ(resumed.exit_code, 1);
      EXPECT_NE(resumed.err.find("nothing to resume"), std::string::npos) << resumed.err;
    } else {
      ASSERT_EQ(resumed.exit_code, 0) << resumed.err << " (killed after " << delay.count()
                                      << " us, still running: " << killed << ")";
    }
    EXPECT_TRUE(final_files(dst) == reference) << "resumed output differs from the clean run";
    EXPECT_TRUE(hidden_files(dst).empty()) << hidden_files(dst).front();
  }
  std::printf("kill trials: %d killed before any shard, %d with some shards, %d complete\n",
              stats.before_any_shard, stats.partial, stats.complete);
}

class CrashSafety : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = run_cli({"synth", (dir_ / "hf").string(), "--experts", "16", "--seed", "5"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  test::TempDir dir_;
};

TEST_F(CrashSafety, FromHfKilledAtRandomMomentsResumesByteIdentical) {
  const auto inputs = final_files(dir_ / "hf");
  kill_and_resume_trials({"from-hf", (dir_ / "hf").string(), "--shard-size", "1000000", "--threads",
                          "2", "--quiet", (dir_ / "out").string()},
                         dir_ / "out", dir_ / "clean", test::trials(20, 5), 11);
  EXPECT_TRUE(final_files(dir_ / "hf") == inputs) << "an input was modified";
  EXPECT_TRUE(hidden_files(dir_ / "hf").empty());
}

TEST_F(CrashSafety, ToHfKilledAtRandomMomentsResumesByteIdentical) {
  auto r = run_cli({"from-hf", (dir_ / "hf").string(), (dir_ / "native").string(), "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  kill_and_resume_trials({"to-hf", (dir_ / "native").string(), "--shard-size", "500000",
                          "--threads", "2", "--quiet", (dir_ / "out").string()},
                         dir_ / "out", dir_ / "clean", test::trials(12, 4), 12);
}

TEST_F(CrashSafety, ResumeRedoesADamagedOrUnrecordedShard) {
  const auto src = (dir_ / "hf").string(), out = (dir_ / "out").string();
  auto clean =
      run_cli({"from-hf", src, (dir_ / "clean").string(), "--shard-size", "1000000", "--quiet"});
  ASSERT_EQ(clean.exit_code, 0) << clean.err;
  const auto reference = final_files(dir_ / "clean");
  // Build the remains of a killed run by hand: all shards, a manifest, no index.
  auto r = run_cli({"from-hf", src, out, "--shard-size", "1000000", "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // A complete run removes its manifest; take one from a run killed after it finished a few
  // shards (the manifest does not depend on the destination's path).
  auto recorded = [&] {
    const auto m = dir_ / "killed" / ".moeckpt-manifest.json";
    if (!fs::exists(m) || fs::exists(dir_ / "killed" / "model.safetensors.index.json")) return 0;
    // Record lines: the header, then one line per finished shard.
    std::ifstream f(m);
    int lines = 0;
    for (std::string line; std::getline(f, line);) lines += !line.empty();
    return std::max(0, lines - 1);
  };
  // Later after a kill that came too early, earlier after one that came after the end: under a
  // loaded machine (the fast tier runs ctest beside pytest) the run's length varies by more than
  // one step, so a ladder that only climbs could step over the window.
  for (int attempt = 0, us = 5000; attempt < 100 && recorded() < 3; ++attempt) {
    fs::remove_all(dir_ / "killed");
    run_and_kill({"from-hf", src, (dir_ / "killed").string(), "--shard-size", "1000000",
                  "--threads", "1", "--quiet"},
                 std::chrono::microseconds(us));
    const bool finished = fs::exists(dir_ / "killed" / "model.safetensors.index.json");
    us = std::clamp(finished ? us * 4 / 5 : us * 5 / 4, 1000, 5000000);
  }
  ASSERT_GE(recorded(), 3);
  fs::copy_file(dir_ / "killed" / ".moeckpt-manifest.json",
                dir_ / "out" / ".moeckpt-manifest.json");
  fs::remove(dir_ / "out" / "model.safetensors.index.json");
  // Damage one shard in place (same size, one byte flipped) and leave others unrecorded.
  std::vector<std::string> shard_names;
  for (const auto& [name, _] : reference)
    if (name.ends_with(".safetensors")) shard_names.push_back(name);
  ASSERT_GE(shard_names.size(), 3u);
  const auto victim = dir_ / "out" / shard_names[1];
  auto bytes = test::read_bytes(victim);
  bytes[bytes.size() / 2] ^= 0x01;
  test::write_bytes(victim, bytes);

  auto plain = run_cli({"from-hf", src, out, "--shard-size", "1000000", "--quiet"});
  EXPECT_EQ(plain.exit_code, 1);
  EXPECT_NE(plain.err.find("unfinished conversion"), std::string::npos) << plain.err;
  EXPECT_NE(plain.err.find("--resume"), std::string::npos) << plain.err;

  auto other = run_cli(
      {"from-hf", src, out, "--shard-size", "1000000", "--quiet", "--resume", "--dtype", "f32"});
  EXPECT_EQ(other.exit_code, 1);
  EXPECT_NE(other.err.find("other inputs or with other options"), std::string::npos) << other.err;
  EXPECT_TRUE(fs::exists(victim)) << "a refused resume must keep the unfinished conversion";

  auto resumed = run_cli({"from-hf", src, out, "--shard-size", "1000000", "--resume"});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("kept: finished by an earlier run and verified"), std::string::npos)
      << resumed.out;
  EXPECT_TRUE(final_files(dir_ / "out") == reference);
  EXPECT_TRUE(hidden_files(dir_ / "out").empty());
}

TEST_F(CrashSafety, InterruptKeepsFinishedShardsRemovesTemporariesAndResumes) {
  const auto src = (dir_ / "hf").string(), out = (dir_ / "out").string();
  auto clean =
      run_cli({"from-hf", src, (dir_ / "clean").string(), "--shard-size", "1000000", "--quiet"});
  ASSERT_EQ(clean.exit_code, 0) << clean.err;
  const auto reference = final_files(dir_ / "clean");
  int interrupted = 0;
  for (int us = 5000; us < 5000000 && interrupted < 3; us = us * 3 / 2) {
    SCOPED_TRACE(us);
    fs::remove_all(dir_ / "out");
    int status = 0;
    for (int sig : {SIGINT, SIGTERM}) {
      if (!run_and_kill(
              {"from-hf", src, out, "--shard-size", "1000000", "--threads", "1", "--quiet"},
              std::chrono::microseconds(us), sig, &status))
        continue;
      if (WIFSIGNALED(status)) {
        // Arrived before main() set up its handling (process start-up): nothing written yet.
        EXPECT_TRUE(final_files(dir_ / "out").empty());
        continue;
      }
      if (WEXITSTATUS(status) == 0) continue;  // the signal came after the last task started
      ASSERT_EQ(WEXITSTATUS(status), 130);
      ++interrupted;
      // No temporary files and no lock: only finished shards, config.json and the manifest.
      for (const auto& h : hidden_files(dir_ / "out")) EXPECT_EQ(h, ".moeckpt-manifest.json");
      for (const auto& [name, bytes] : final_files(dir_ / "out"))
        EXPECT_TRUE(bytes == reference.at(name)) << name;
      EXPECT_FALSE(fs::exists(dir_ / "out" / "model.safetensors.index.json"));
      auto resumed = run_cli({"from-hf", src, out, "--shard-size", "1000000", "--resume"});
      ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
      EXPECT_TRUE(final_files(dir_ / "out") == reference);
      EXPECT_TRUE(hidden_files(dir_ / "out").empty());
      fs::remove_all(dir_ / "out");
    }
  }
  EXPECT_GE(interrupted, 1) << "no signal landed while the conversion ran";
}

TEST_F(CrashSafety, ExistingCheckpointNeedsOverwriteWhichReplacesIt) {
  const auto src = (dir_ / "hf").string(), out = (dir_ / "out").string();
  ASSERT_EQ(run_cli({"from-hf", src, out, "--shard-size", "1000000", "--quiet"}).exit_code, 0);
  const size_t many = final_files(dir_ / "out").size();
  auto again = run_cli({"from-hf", src, out, "--quiet"});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.err.find("already holds a checkpoint"), std::string::npos) << again.err;
  EXPECT_NE(again.err.find("--overwrite"), std::string::npos) << again.err;
  test::write_text(dir_ / "out" / "README.md", "user file\n");

  // Fewer, larger shards: the old layout's extra shards must go too.
  auto over = run_cli({"from-hf", src, out, "--shard-size", "100000000", "--quiet", "--overwrite"});
  ASSERT_EQ(over.exit_code, 0) << over.err;
  auto files = final_files(dir_ / "out");
  EXPECT_LT(files.size(), many);
  EXPECT_EQ(files.count("README.md"), 1u) << "files that are not the checkpoint's stay";
  ASSERT_EQ(
      run_cli({"from-hf", src, (dir_ / "clean").string(), "--shard-size", "100000000", "--quiet"})
          .exit_code,
      0);
  files.erase("README.md");
  EXPECT_TRUE(files == final_files(dir_ / "clean"));

  auto both = run_cli({"from-hf", src, out, "--overwrite", "--resume"});
  EXPECT_EQ(both.exit_code, 2) << both.err;
}

TEST_F(CrashSafety, LockStopsASecondConversionIntoTheSameFolder) {
  fs::create_directories(dir_ / "out");
  {
    io::DirectoryLock held(dir_ / "out");
    auto r = run_cli({"from-hf", (dir_ / "hf").string(), (dir_ / "out").string(), "--quiet"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("another moeckpt conversion is writing into this folder"),
              std::string::npos)
        << r.err;
    EXPECT_TRUE(final_files(dir_ / "out").empty());
  }
  // A lock file left by a killed process does not block: flock died with it.
  test::write_text(dir_ / "out" / ".moeckpt.lock", "12345\n");
  auto r = run_cli({"from-hf", (dir_ / "hf").string(), (dir_ / "out").string(), "--quiet"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(hidden_files(dir_ / "out").empty());
}

TEST_F(CrashSafety, DestinationInsideTheSourceIsRefused) {
  for (const auto& dst : {dir_ / "hf", dir_ / "hf" / "sub"}) {
    auto r = run_cli({"from-hf", (dir_ / "hf").string(), dst.string(), "--quiet"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("destination is the source folder or inside it"), std::string::npos)
        << r.err;
  }
  EXPECT_FALSE(fs::exists(dir_ / "hf" / "sub"));
}

TEST_F(CrashSafety, InjectedDiskFullMidRunLeavesNothing) {
  // Preallocation passes, then a write fails: what a file system without fallocate does.
  for (const char* budget : {"0", "3000000", "12000000"}) {
    SCOPED_TRACE(budget);
    ::setenv("MOECKPT_FAULT_ENOSPC_AFTER_BYTES", budget, 1);
    auto r = run_cli({"from-hf", (dir_ / "hf").string(), (dir_ / "out").string(), "--shard-size",
                      "1000000", "--quiet"});
    ::unsetenv("MOECKPT_FAULT_ENOSPC_AFTER_BYTES");
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("No space left on device"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find((dir_ / "out").string() + "/"), std::string::npos)
        << "names no file: " << r.err;
    EXPECT_EQ(r.err.find(".tmp."), std::string::npos) << "names a temporary file: " << r.err;
    EXPECT_TRUE(final_files(dir_ / "out").empty());
    EXPECT_TRUE(hidden_files(dir_ / "out").empty());
  }
}

TEST_F(CrashSafety, FullTmpfsEndsCleanly) {
  fs::create_directories(dir_ / "small");
  if (::mount("tmpfs", (dir_ / "small").c_str(), "tmpfs", 0, "size=4m") != 0)
    GTEST_SKIP() << "cannot mount a tmpfs here (not root?); the injected-fault test covers ENOSPC";
  struct Unmount {
    fs::path p;
    ~Unmount() { ::umount(p.c_str()); }
  } unmount{dir_ / "small"};
  const auto out = dir_ / "small" / "out";
  auto r = run_cli(
      {"from-hf", (dir_ / "hf").string(), out.string(), "--shard-size", "1000000", "--quiet"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no space left on device"), std::string::npos) << r.err;
  EXPECT_TRUE(final_files(out).empty());
  EXPECT_TRUE(hidden_files(out).empty());
  // And the same input fits once there is room: the failure was the disk, not the data.
  ASSERT_EQ(::umount((dir_ / "small").c_str()), 0);
  ASSERT_EQ(::mount("tmpfs", (dir_ / "small").c_str(), "tmpfs", 0, "size=200m"), 0);
  auto ok = run_cli({"from-hf", (dir_ / "hf").string(), out.string(), "--quiet"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
}

}  // namespace
}  // namespace moeckpt
