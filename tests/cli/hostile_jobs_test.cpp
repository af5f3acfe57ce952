// Hostile input, round 3 (docs/ROBUSTNESS.md): planted lock files, forged and tampered job
// records, absurd worker counts, racing launches, numeric option spellings, and file content that
// would reach the terminal raw. Each test names its class.
#include <gtest/gtest.h>
#include <malloc.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;
using test::hidden_files;
using test::run_cli;

// Peak resident sets measured from outside; under ASan they hold its shadow memory.
void expect_rss_below(uint64_t rss, uint64_t limit) {
#ifndef MOECKPT_UNDER_ASAN
  EXPECT_LT(rss, limit);
#else
  (void)rss;
  (void)limit;
#endif
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

std::string fmt_key(int i) {
  return "k" + std::to_string(i);
}

class HostileJobs : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = run_cli({"synth", hf().string(), "--seed", "5", "--shard-size", "300000"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  fs::path hf() const { return dir_ / "hf"; }
  fs::path at(const std::string& name) const { return dir_ / name; }
  std::vector<std::string> worker_args(const fs::path& dst, int k, int n,
                                       std::vector<std::string> extra = {}) const {
    std::vector<std::string> a{"from-hf",   hf().string(),     dst.string(), "--shard-size",
                               "200000",    "--quiet",         "--wait",     "0",
                               "--workers", std::to_string(n), "--worker",   std::to_string(k)};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  // A folder two workers wrote, not yet finalized. The last worker to finish completes a folder,
  // unless it takes another worker for still running: worker 1 runs while worker 0's lock is
  // held, as if worker 0 were still exiting.
  fs::path unfinalized_pair() {
    const auto dst = at("pair");
    auto r0 = run_cli(worker_args(dst, 0, 2));
    EXPECT_EQ(r0.exit_code, 0) << r0.err;  // worker 1's shards are missing: left to it
    {
      test::HeldLockFile running(dst / ".moeckpt-worker-00000-of-00002.lock");
      auto r1 = run_cli(worker_args(dst, 1, 2));
      EXPECT_EQ(r1.exit_code, 0) << r1.err;
    }
    EXPECT_FALSE(fs::exists(dst / "model.safetensors.index.json"));
    return dst;
  }
  test::TempDir dir_;
};

// Class 1: a lock name planted as a symlink or a hard link is never written through.
TEST_F(HostileJobs, LockFilesAreNeverFollowedThroughLinks) {
  const std::string precious = "the user's notes\n";
  test::write_text(at("victim.txt"), precious);
  const auto config_before = test::read_text(hf() / "config.json");
  for (const bool hard : {false, true}) {
    SCOPED_TRACE(hard ? "hard link" : "symlink");
    const auto dst = at(hard ? "dst-hard" : "dst-sym");
    fs::create_directories(dst);
    auto plant = [&](const fs::path& target, const std::string& name) {
      fs::remove(dst / name);
      if (hard)
        fs::create_hard_link(target, dst / name);
      else
        fs::create_symlink(target, dst / name);
    };
    // The single-process lock.
    plant(at("victim.txt"), ".moeckpt.lock");
    auto r = run_cli({"from-hf", hf().string(), dst.string(), "--quiet"});
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_TRUE(contains(r.err, ".moeckpt.lock")) << r.err;
    EXPECT_TRUE(contains(r.err, hard ? "hard link" : "symbolic link")) << r.err;
    EXPECT_EQ(test::read_text(at("victim.txt")), precious);
    fs::remove(dst / ".moeckpt.lock");
    // A worker's lock pointing at the source checkpoint's config.
    if (!hard) {
      plant(hf() / "config.json", ".moeckpt-worker-00000-of-00002.lock");
      r = run_cli(worker_args(dst, 0, 2));
      EXPECT_EQ(r.exit_code, 1) << r.err;
      EXPECT_TRUE(contains(r.err, "symbolic link")) << r.err;
      EXPECT_EQ(test::read_text(hf() / "config.json"), config_before);
      fs::remove(dst / ".moeckpt-worker-00000-of-00002.lock");
    }
  }
  // Finalize takes every worker's lock: a planted one is refused, the target untouched.
  const auto dst = unfinalized_pair();
  fs::create_symlink(at("victim.txt"), dst / ".moeckpt-worker-00001-of-00002.lock");
  auto r = run_cli({"finalize", dst.string()});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(contains(r.err, "symbolic link")) << r.err;
  EXPECT_EQ(test::read_text(at("victim.txt")), precious);
  EXPECT_FALSE(fs::exists(dst / "model.safetensors.index.json"));
  fs::remove(dst / ".moeckpt-worker-00001-of-00002.lock");
  r = run_cli({"finalize", dst.string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

// Class 5: finalize checks the record against the shards on disk and the workers' checksums.
TEST_F(HostileJobs, FinalizeRefusesTamperedRecordsAndShards) {
  const auto dst = unfinalized_pair();
  const auto job_path = dst / ".moeckpt-job.json";
  const auto job_text = test::read_text(job_path);
  auto job = nlohmann::json::parse(job_text);
  ASSERT_GE(job["shards"].size(), 2u);
  // The shard list emptied: refused, no index.
  {
    auto forged = job;
    forged["shards"] = nlohmann::json::array();
    test::write_text(job_path, forged.dump());
    auto r = run_cli({"finalize", dst.string()});
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_TRUE(contains(r.err, "lists no shards")) << r.err;
    EXPECT_FALSE(fs::exists(dst / "model.safetensors.index.json"));
  }
  // One shard dropped from the list: the index would name a file no record lists.
  {
    auto forged = job;
    forged["shards"].erase(forged["shards"].begin());
    test::write_text(job_path, forged.dump());
    auto r = run_cli({"finalize", dst.string()});
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_TRUE(contains(r.err, "no worker's record lists")) << r.err;
    EXPECT_FALSE(fs::exists(dst / "model.safetensors.index.json"));
  }
  test::write_text(job_path, job_text);
  // One byte of a recorded shard changed after it was recorded (its data area, header intact).
  const auto victim = dst / job["shards"][1]["name"].get<std::string>();
  auto bytes = test::read_bytes(victim);
  const auto saved = bytes;
  bytes[bytes.size() - 3] ^= 0x40;
  test::write_bytes(victim, bytes);
  auto r = run_cli({"finalize", dst.string()});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(contains(r.err, "differ from what worker")) << r.err;
  EXPECT_TRUE(contains(r.err, victim.filename().string())) << r.err;
  EXPECT_FALSE(fs::exists(dst / "model.safetensors.index.json"));
  test::write_bytes(victim, saved);
  r = run_cli({"finalize", dst.string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dst / "model.safetensors.index.json"));
  EXPECT_TRUE(hidden_files(dst).empty()) << hidden_files(dst).front();
}

// Class 7: every number of a record read back is range-checked before it sizes anything.
TEST_F(HostileJobs, ForgedJobRecordNumbersAreRefusedWithoutAllocating) {
  const auto dst = unfinalized_pair();
  const auto job_path = dst / ".moeckpt-job.json";
  const auto job = nlohmann::json::parse(test::read_text(job_path));
  const std::vector<std::pair<std::string, std::function<void(nlohmann::json&)>>> forgeries{
      {"workers 2^64-1", [](auto& j) { j["workers"] = UINT64_MAX; }},
      {"workers 1e9", [](auto& j) { j["workers"] = 1000000000u; }},
      {"workers 0", [](auto& j) { j["workers"] = 0u; }},
      {"workers -1", [](auto& j) { j["workers"] = -1; }},
      {"workers 2.5", [](auto& j) { j["workers"] = 2.5; }},
      {"header_bytes 3e9", [](auto& j) { j["shards"][0]["header_bytes"] = 3000000000u; }},
      {"header_bytes 2^64-1", [](auto& j) { j["shards"][0]["header_bytes"] = UINT64_MAX; }},
      {"size 2^64-1", [](auto& j) { j["shards"][0]["size"] = UINT64_MAX; }},
      {"worker beyond workers", [](auto& j) { j["shards"][0]["worker"] = 7u; }},
      {"name with a slash", [](auto& j) { j["shards"][0]["name"] = "../x.safetensors"; }},
      {"name twice", [](auto& j) { j["shards"][1]["name"] = j["shards"][0]["name"]; }},
      {"checksum not hex", [](auto& j) { j["shards"][0]["header_xxh3_128"] = "zz"; }},
  };
  for (const auto& [what, forge] : forgeries) {
    SCOPED_TRACE(what);
    auto forged = job;
    forge(forged);
    test::write_text(job_path, forged.dump());
    auto r = test::run_cli_measured({"finalize", dst.string()});
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_TRUE(contains(r.err, "malformed distributed-conversion record")) << r.err;
    expect_rss_below(r.peak_rss_bytes, 128u << 20);
    EXPECT_FALSE(fs::exists(dst / "model.safetensors.index.json"));
  }
  // A worker manifest with a forged entry.
  test::write_text(job_path, job.dump());
  const auto m_path = dst / ".moeckpt-worker-00001-of-00002.json";
  std::vector<std::string> lines;  // record lines: the header, then one line per shard
  {
    std::istringstream in(test::read_text(m_path));
    for (std::string line; std::getline(in, line);) lines.push_back(line);
  }
  ASSERT_GE(lines.size(), 2u);
  auto entry = nlohmann::json::parse(lines[1]);
  entry["size"] = UINT64_MAX;
  lines[1] = entry.dump();
  std::string forged;
  for (const auto& line : lines) forged += line + "\n";
  test::write_text(m_path, forged);
  auto r = run_cli({"finalize", dst.string()});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(contains(r.err, "malformed distributed-conversion record")) << r.err;
}

// Class 8: launcher sizes share --workers' cap and its check.
TEST_F(HostileJobs, LauncherWorldSizeIsCappedLikeWorkers) {
  for (const char* size : {"10000000", "65537", "18446744073709551615"}) {
    SCOPED_TRACE(size);
    const std::vector<std::string> cmd{"from-hf", hf().string(), at("x").string(), "--distributed",
                                       "--quiet"};
    test::CommandResult r{0, "", ""};
    // Through the environment, as torchrun sets it.
    ::setenv("RANK", "0", 1);
    ::setenv("WORLD_SIZE", size, 1);
    r = test::run_cli_measured(cmd);
    ::unsetenv("RANK");
    ::unsetenv("WORLD_SIZE");
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_TRUE(contains(r.err, "out of range") || contains(r.err, "not a count")) << r.err;
    expect_rss_below(r.peak_rss_bytes, 128u << 20);
  }
  auto r =
      run_cli({"from-hf", hf().string(), at("x").string(), "--workers", "65537", "--worker", "0"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
}

// Class 14: one strict parser for every real-valued option; --wait's message names what was asked.
TEST_F(HostileJobs, NumericOptionsShareOneStrictParser) {
  for (const char* bad : {"nan", "inf", "0x10", "-1", "1e9", "8s", ""}) {
    SCOPED_TRACE(bad);
    auto r = run_cli({"finalize", at("none").string(), "--wait", bad});
    EXPECT_EQ(r.exit_code, 2) << r.err;
    if (std::string(bad) == "1e9") continue;  // a valid tolerance
    r = run_cli({"verify", hf().string(), hf().string(), "--rtol", bad});
    EXPECT_EQ(r.exit_code, 2) << r.err;
  }
  // Worker 0 alone does not wait for a worker not started (a job array runs it later); finalize
  // waits out --wait 1.5 for it and says so (not the time left when it began waiting).
  auto r = run_cli({"from-hf", hf().string(), at("w").string(), "--quiet", "--wait", "1.5",
                    "--shard-size", "200000", "--workers", "2", "--worker", "0"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "is not complete yet")) << r.out;
  r = run_cli({"finalize", at("w").string(), "--wait", "1.5"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(contains(r.err, "within --wait 1.5 s")) << r.err;
}

// Class 13: two launches with other worker counts racing into one folder: one wins, the other is
// refused before it writes, and the winner's relaunch with --resume completes the folder.
TEST_F(HostileJobs, RacingLaunchesWithOtherWorkerCountsLeaveARecoverableFolder) {
  const auto ref = at("ref");
  ASSERT_EQ(run_cli({"from-hf", hf().string(), ref.string(), "--shard-size", "200000", "--quiet"})
                .exit_code,
            0);
  for (int trial = 0; trial < test::trials(4, 2); ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    const auto dst = at("race" + std::to_string(trial));
    std::vector<std::pair<int, int>> launch;  // (worker, workers), started together
    for (int k = 0; k < 2; ++k) launch.push_back({k, 2});
    for (int k = 0; k < 3; ++k) launch.push_back({k, 3});
    if (trial % 2) std::reverse(launch.begin(), launch.end());
    std::vector<int> pids;
    for (const auto& [k, n] : launch) pids.push_back(test::spawn_cli(worker_args(dst, k, n)));
    for (int pid : pids) {
      int status = 0;
      ::waitpid(pid, &status, 0);
    }
    // The winner may have completed the folder on its own.
    if (!fs::exists(dst / ".moeckpt-launch.json")) {
      EXPECT_EQ(test::final_files(dst), test::final_files(ref));
      EXPECT_TRUE(hidden_files(dst).empty()) << hidden_files(dst).front();
      continue;
    }
    // Whichever claimed the folder: its worker count is the one --resume takes.
    const auto claim = nlohmann::json::parse(test::read_text(dst / ".moeckpt-launch.json"));
    const int n = claim["workers"].get<int>();
    const int other = n == 2 ? 3 : 2;
    auto r = run_cli(worker_args(dst, 0, other, {"--resume"}));
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_TRUE(contains(r.err, "workers")) << r.err;
    for (int k = n - 1; k >= 0; --k) {
      r = run_cli(worker_args(dst, k, n, {"--resume"}));
      EXPECT_EQ(r.exit_code, 0) << r.err;
    }
    EXPECT_EQ(test::final_files(dst), test::final_files(ref));
    EXPECT_TRUE(hidden_files(dst).empty()) << hidden_files(dst).front();
  }
}

// Class 15: file content reaches the terminal escaped, on every line the tool prints.
TEST_F(HostileJobs, InspectEscapesNamesInEveryLine) {
  const auto dst = at("evil");
  fs::create_directories(dst);
  fs::copy_file(hf() / "config.json", dst / "config.json");
  const std::string evil = "x\x1b[2J\r\nmoeckpt: OK\x07";
  nlohmann::json h;
  h[evil] = {{"dtype", "BF16"}, {"shape", {2}}, {"data_offsets", {0, 4}}};
  test::write_bytes(dst / "model.safetensors", test::raw_safetensors(h.dump(), {0, 0, 0, 0}));
  auto r = run_cli({"inspect", dst.string(), "--headers-only"});
  for (const auto& text : {r.out, r.err}) {
    EXPECT_FALSE(contains(text, "\x1b")) << text;
    EXPECT_FALSE(contains(text, "\r")) << text;
    EXPECT_FALSE(contains(text, "\x07")) << text;
    EXPECT_FALSE(contains(text, "\nmoeckpt: OK")) << text;
  }
  EXPECT_TRUE(contains(r.out + r.err, "\\x1b[2J\\r\\nmoeckpt: OK")) << r.out << r.err;
}

}  // namespace
}  // namespace moeckpt

namespace moeckpt {
namespace {

// Class 11: JSON is budgeted like any buffer: a config beyond its stated limit, or an index whose
// parse would not fit --max-memory, is refused before it is parsed.
TEST(HostileJson, BigConfigAndIndexStayWithinTheMemoryBudget) {
  test::TempDir dir;
  ASSERT_EQ(test::run_cli({"synth", (dir / "hf").string(), "--shard-size", "300000"}).exit_code, 0);
  {  // built in this scope and released: the measured child is forked from this process
    auto index =
        nlohmann::json::parse(test::read_text(dir / "hf" / "model.safetensors.index.json"));
    auto config = nlohmann::json::parse(test::read_text(dir / "hf" / "config.json"));
    for (int i = 0; i < 200000; ++i) config["padding"][fmt_key(i)] = i;  // ~4 MB of config
    for (int i = 0; i < 300000; ++i)
      index["weight_map"]["model.layers.0.unused." + fmt_key(i) + ".weight"] =
          "model-00001-of-00002.safetensors";  // ~16 MB of index
    std::filesystem::copy(dir / "hf", dir / "big-config", std::filesystem::copy_options::recursive);
    test::write_text(dir / "big-config" / "config.json", config.dump());
    std::filesystem::copy(dir / "hf", dir / "big-index", std::filesystem::copy_options::recursive);
    test::write_text(dir / "big-index" / "model.safetensors.index.json", index.dump());
  }
  ::malloc_trim(0);
  const uint64_t budget = 10'000'000;
  auto r = test::run_cli_measured({"from-hf", (dir / "big-config").string(), (dir / "o1").string(),
                                   "--max-memory", std::to_string(budget)});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(contains(r.err, "config.json: file too large")) << r.err;
  expect_rss_below(r.peak_rss_bytes, budget + (64u << 20));
  r = test::run_cli_measured({"from-hf", (dir / "big-index").string(), (dir / "o2").string(),
                              "--max-memory", std::to_string(budget)});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(contains(r.err, "needs about")) << r.err;
  EXPECT_TRUE(contains(r.err, "--max-memory")) << r.err;
  expect_rss_below(r.peak_rss_bytes, budget + (64u << 20));
  EXPECT_FALSE(std::filesystem::exists(dir / "o1"));
  EXPECT_FALSE(std::filesystem::exists(dir / "o2"));
}

}  // namespace
}  // namespace moeckpt

namespace moeckpt {
namespace {

// Class 6's neighbour: an MTP layer index far beyond the config is refused at once (the check of
// the MTP layers before a kept one is bounded by the layers present, not by the index).
TEST(HostileLayers, AHugeMtpLayerIndexIsRefusedAtOnce) {
  test::TempDir dir;
  const auto hf = dir / "hf";
  ASSERT_EQ(test::run_cli({"synth", hf.string(), "--shard-size", "300000"}).exit_code, 0);
  const std::string evil = "model.mtp.layers.9000000000000000000.enorm.weight";
  nlohmann::json h;
  h[evil] = {{"dtype", "BF16"}, {"shape", {2}}, {"data_offsets", {0, 4}}};
  test::write_bytes(hf / "extra.safetensors", test::raw_safetensors(h.dump(), {0, 0, 0, 0}));
  auto index = nlohmann::json::parse(test::read_text(hf / "model.safetensors.index.json"));
  index["weight_map"][evil] = "extra.safetensors";
  test::write_text(hf / "model.safetensors.index.json", index.dump());
  for (const std::vector<std::string>& cmd :
       {std::vector<std::string>{"from-hf", hf.string(), (dir / "o").string(), "--quiet"},
        std::vector<std::string>{"inspect", hf.string()}}) {
    auto r = test::run_cli_measured(cmd);
    EXPECT_EQ(r.exit_code, 1) << r.err;
    expect_rss_below(r.peak_rss_bytes, 256u << 20);
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "o"));
}

}  // namespace
}  // namespace moeckpt
