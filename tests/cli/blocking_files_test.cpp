// FIFOs and other non-regular files where a checkpoint's files belong are refused at once (no
// open() that blocks forever), and a signal while a conversion is still planning ends it.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;
using test::run_cli;

// The CLI with a hard deadline: a hang is a failure, not a stuck test.
test::CommandResult run_with_deadline(const std::vector<std::string>& args) {
  std::vector<std::string> full{"timeout", "-s", "KILL", "20", MOECKPT_CLI_PATH};
  full.insert(full.end(), args.begin(), args.end());
  std::string cmd;
  for (const auto& a : full) cmd += "'" + a + "' ";
  test::TempDir tmp;
  cmd += ">" + (tmp / "out").string() + " 2>" + (tmp / "err").string();
  const int status = std::system(cmd.c_str());
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  auto err = test::read_bytes(tmp / "err");
  return {code, "", std::string(err.begin(), err.end())};
}

class BlockingFiles : public ::testing::TestWithParam<std::string> {};

TEST_P(BlockingFiles, AFifoInPlaceOfAFileIsRefusedNotWaitedOn) {
  test::TempDir dir;
  SynthOptions o;
  o.preset = "micro";
  synthesize_checkpoint(dir / "hf", o);
  const std::string victim = GetParam() == "shard"    ? "model-00002-of-00004.safetensors"
                             : GetParam() == "config" ? "config.json"
                                                      : "model.safetensors.index.json";
  ASSERT_TRUE(fs::exists(dir / "hf" / victim)) << victim;
  fs::remove(dir / "hf" / victim);
  ASSERT_EQ(::mkfifo((dir / "hf" / victim).c_str(), 0644), 0);
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"inspect", (dir / "hf").string()},
        std::vector<std::string>{"from-hf", (dir / "hf").string(), (dir / "out").string()},
        std::vector<std::string>{"dequantize", (dir / "hf").string(), (dir / "out").string()},
        std::vector<std::string>{"verify", (dir / "hf").string(), (dir / "hf").string()}}) {
    auto r = run_with_deadline(args);
    EXPECT_EQ(r.exit_code, 1) << args[0] << ": " << r.err;
    EXPECT_NE(r.err.find("is not a regular file (a FIFO)"), std::string::npos)
        << args[0] << ": " << r.err;
    EXPECT_NE(r.err.find(victim), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir / "out" / "model.safetensors"));
  }
}

INSTANTIATE_TEST_SUITE_P(Files, BlockingFiles, ::testing::Values("shard", "config", "index"));

TEST(SignalWhilePlanning, EndsTheRunAtOnce) {
  // Planning blocked on a FIFO's reader side would be the worst case; with FIFOs refused, use a
  // long validation instead: SIGTERM right after start must end the run quickly and leave no
  // destination behind.
  test::TempDir dir;
  SynthOptions o;
  o.preset = "full";
  o.layers = 2;
  o.experts = 4;
  o.vocab = 1024;
  o.mtp_layers = 0;
  synthesize_checkpoint(dir / "hf", o);
  for (int sig : {SIGINT, SIGTERM}) {
    const pid_t pid = test::spawn_cli(
        {"from-hf", (dir / "hf").string(), (dir / "out").string(), "--quiet", "--threads", "1"});
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    const auto t0 = std::chrono::steady_clock::now();
    ::kill(pid, sig);
    int status = 0;
    ::waitpid(pid, &status, 0);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // Ended by the signal (before the destination was taken) or by the graceful stop (130).
    EXPECT_TRUE((WIFSIGNALED(status) && WTERMSIG(status) == sig) ||
                (WIFEXITED(status) && WEXITSTATUS(status) == 130))
        << status;
    EXPECT_LT(secs, 10.0);
    EXPECT_FALSE(fs::exists(dir / "out" / "model.safetensors"));
    fs::remove_all(dir / "out");
  }
}

}  // namespace
}  // namespace moeckpt
