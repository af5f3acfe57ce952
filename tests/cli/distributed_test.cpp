// Distributed conversions through the CLI: N workers (started by hand with --workers/--worker, by
// mpirun, or with Slurm's variables) write a folder byte-identical to one process's, for every
// command and for every EP rank's folder; killed workers leave no index and a relaunch with
// --resume completes the folder; launches that would mix are refused.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;
using test::final_files;
using test::hidden_files;
using test::run_cli;
using Env = std::map<std::string, std::string>;

struct Worker {
  pid_t pid = -1;
  fs::path err;
};

// Starts the CLI with `args` and extra environment variables (launcher variables are cleared
// first, so the test's own environment never leaks in); stdout to `out`, else discarded.
Worker start(const std::vector<std::string>& args, const Env& env, const fs::path& err,
             const fs::path& out_path = "/dev/null") {
  std::vector<std::string> argv_s{MOECKPT_CLI_PATH};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  const pid_t pid = ::fork();
  if (pid == 0) {
    for (const char* v : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                          "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE",
                          "PMIX_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"})
      ::unsetenv(v);
    for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
    FILE* out = std::fopen(out_path.c_str(), "w");
    FILE* e = std::fopen(err.c_str(), "w");
    if (out && e) {
      ::dup2(fileno(out), 1);
      ::dup2(fileno(e), 2);
    }
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return {pid, err};
}

int finish(const Worker& w) {
  int status = 0;
  ::waitpid(w.pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

class Distributed : public ::testing::Test {
 protected:
  void SetUp() override {
    // Many small shards, so that every worker gets several.
    auto r = run_cli({"synth", hf().string(), "--seed", "3", "--shard-size", "300000"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  fs::path hf() const { return dir_ / "hf"; }
  fs::path at(const std::string& name) const { return dir_ / name; }

  // Runs `args` (ending in the destination) as `n` workers, each with the environment `env_of`
  // gives it; returns their exit codes and stderr.
  std::vector<std::pair<int, std::string>> run_workers(
      const std::vector<std::string>& args, int n,
      const std::function<std::pair<std::vector<std::string>, Env>(int)>& worker_args) {
    std::vector<Worker> ws;
    for (int k = 0; k < n; ++k) {
      auto [extra, env] = worker_args(k);
      auto a = args;
      a.insert(a.end(), extra.begin(), extra.end());
      ws.push_back(start(a, env, dir_ / ("err" + std::to_string(k))));
    }
    std::vector<std::pair<int, std::string>> out;
    for (const auto& w : ws) {
      const int rc = finish(w);
      out.push_back({rc, test::read_text(w.err)});
    }
    return out;
  }
  std::vector<std::pair<int, std::string>> run_explicit(const std::vector<std::string>& args,
                                                        int n) {
    return run_workers(args, n, [n](int k) {
      return std::make_pair(
          std::vector<std::string>{"--workers", std::to_string(n), "--worker", std::to_string(k)},
          Env{});
    });
  }

  // Every conversion command under a launcher (Launcher below) with 1 to 4 workers.
  void every_command(int launcher);

  void expect_same(const fs::path& got, const fs::path& want) {
    const auto a = final_files(got), b = final_files(want);
    ASSERT_FALSE(b.empty());
    EXPECT_EQ(a.size(), b.size());
    for (const auto& [name, bytes] : b) {
      auto it = a.find(name);
      ASSERT_NE(it, a.end()) << name << " missing in " << got;
      EXPECT_TRUE(it->second == bytes) << name << " differs in " << got;
    }
    EXPECT_TRUE(hidden_files(got).empty()) << got << ": " << hidden_files(got).front();
  }

  test::TempDir dir_;
};

// Each launcher: by hand, mpirun (Open MPI), and Slurm's variables as srun sets them.
enum Launcher { kExplicit, kMpirun, kSlurm };

// One test per launcher (each within its own time limit under the sanitizers).
TEST_F(Distributed, EveryCommandByHandIsByteIdenticalForOneToFourWorkers) {
  every_command(kExplicit);
}
TEST_F(Distributed, EveryCommandUnderMpirunIsByteIdenticalForOneToFourWorkers) {
  every_command(kMpirun);
}
TEST_F(Distributed, EveryCommandUnderSlurmVariablesIsByteIdenticalForOneToFourWorkers) {
  every_command(kSlurm);
}

void Distributed::every_command(int launcher) {
  const std::string shard = "400000";
  // The single-process references.
  ASSERT_EQ(
      run_cli({"from-hf", hf().string(), at("native").string(), "--shard-size", shard, "--quiet"})
          .exit_code,
      0);
  ASSERT_EQ(run_cli({"to-hf", at("native").string(), at("back").string(), "--shard-size", shard,
                     "--quiet"})
                .exit_code,
            0);
  ASSERT_EQ(
      run_cli({"dequantize", hf().string(), at("bf16").string(), "--shard-size", shard, "--quiet"})
          .exit_code,
      0);
  ASSERT_EQ(run_cli({"quantize", at("bf16").string(), at("fp8").string(), "--shard-size", shard,
                     "--quiet"})
                .exit_code,
            0);
  struct Case {
    std::vector<std::string> args;
    std::string reference;
  };
  const std::vector<Case> cases{
      {{"from-hf", hf().string()}, "native"},
      {{"to-hf", at("native").string()}, "back"},
      {{"dequantize", hf().string()}, "bf16"},
      {{"quantize", at("bf16").string()}, "fp8"},
  };
  {
    for (const auto& c : cases) {
      for (int n = 1; n <= 4; ++n) {
        SCOPED_TRACE(c.args[0] + " with " + std::to_string(n) + " workers, launcher " +
                     std::to_string(launcher));
        const auto dst = at(c.args[0] + "-" + std::to_string(launcher) + "-" + std::to_string(n));
        auto args = c.args;
        args.insert(args.end(), {dst.string(), "--shard-size", shard, "--quiet", "--wait", "60"});
        if (launcher == kExplicit) {
          for (const auto& [rc, err] : run_explicit(args, n)) EXPECT_EQ(rc, 0) << err;
        } else if (launcher == kMpirun) {
          std::string cmd = "mpirun --oversubscribe --allow-run-as-root -np " + std::to_string(n) +
                            " " + MOECKPT_CLI_PATH;
          for (const auto& a : args) cmd += " '" + a + "'";
          cmd += " --distributed > " + (dir_ / "mpi.log").string() + " 2>&1";
          EXPECT_EQ(std::system(cmd.c_str()), 0) << test::read_text(dir_ / "mpi.log");
        } else {
          args.push_back("--distributed");
          for (const auto& [rc, err] : run_workers(args, n, [n](int k) {
                 return std::make_pair(std::vector<std::string>{},
                                       Env{{"SLURM_PROCID", std::to_string(k)},
                                           {"SLURM_NTASKS", std::to_string(n)},
                                           {"SLURM_LOCALID", std::to_string(k)},
                                           {"SLURM_NODEID", "0"},
                                           {"SLURM_STEP_TASKS_PER_NODE", std::to_string(n)}});
               }))
            EXPECT_EQ(rc, 0) << err;
        }
        expect_same(dst, at(c.reference));
      }
    }
  }
}

TEST_F(Distributed, EveryEpRankFolderUnderMpirunAndSlurmVariables) {
  const std::string shard = "150000";
  for (int r = 0; r < 3; ++r)
    ASSERT_EQ(
        run_cli({"from-hf", hf().string(), at("rank" + std::to_string(r)).string(), "--ep-size",
                 "3", "--ep-rank", std::to_string(r), "--shard-size", shard, "--quiet"})
            .exit_code,
        0);
  auto check = [&](const fs::path& dst) {
    for (int r = 0; r < 3; ++r)
      expect_same(dst / ("ep-rank-" + std::to_string(r) + "-of-3"), at("rank" + std::to_string(r)));
  };
  // One process writes every rank's folder.
  ASSERT_EQ(run_cli({"from-hf", hf().string(), at("all1").string(), "--ep-size", "3", "--ep-rank",
                     "all", "--shard-size", shard, "--quiet"})
                .exit_code,
            0);
  check(at("all1"));
  // mpirun (Open MPI) with 1 to 4 workers.
  for (int n = 1; n <= 4; ++n) {
    SCOPED_TRACE("mpirun -np " + std::to_string(n));
    const auto dst = at("mpi" + std::to_string(n));
    const auto cmd = "mpirun --oversubscribe --allow-run-as-root -np " + std::to_string(n) + " " +
                     MOECKPT_CLI_PATH + " from-hf " + hf().string() + " " + dst.string() +
                     " --ep-size 3 --shard-size " + shard + " --quiet --distributed --wait 60 > " +
                     (dir_ / "mpi.log").string() + " 2>&1";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << test::read_text(dir_ / "mpi.log");
    check(dst);
  }
  // Slurm's variables, set as srun sets them (3 tasks on 2 nodes).
  const auto dst = at("slurm");
  const auto res =
      run_workers({"from-hf", hf().string(), dst.string(), "--ep-size", "3", "--shard-size", shard,
                   "--quiet", "--distributed", "--wait", "60"},
                  3, [](int k) {
                    return std::make_pair(std::vector<std::string>{},
                                          Env{{"SLURM_PROCID", std::to_string(k)},
                                              {"SLURM_NTASKS", "3"},
                                              {"SLURM_NODEID", k < 2 ? "0" : "1"},
                                              {"SLURM_LOCALID", k < 2 ? std::to_string(k) : "0"},
                                              {"SLURM_STEP_TASKS_PER_NODE", "2,1"}});
                  });
  for (const auto& [rc, err] : res) EXPECT_EQ(rc, 0) << err;
  check(dst);
  // to-hf takes the rank folders together, distributed too.
  ASSERT_EQ(run_cli({"to-hf", (dst / "ep-rank-0-of-3").string(), (dst / "ep-rank-1-of-3").string(),
                     (dst / "ep-rank-2-of-3").string(), at("hf1").string(), "--quiet"})
                .exit_code,
            0);
  for (const auto& [rc, err] :
       run_explicit({"to-hf", (dst / "ep-rank-0-of-3").string(), (dst / "ep-rank-1-of-3").string(),
                     (dst / "ep-rank-2-of-3").string(), at("hf3").string(), "--quiet"},
                    3))
    EXPECT_EQ(rc, 0) << err;
  expect_same(at("hf3"), at("hf1"));
}

TEST_F(Distributed, PlanMatchesWhatTheWorkersWrite) {
  auto r = run_cli({"plan", hf().string(), "--workers", "3", "--shard-size", "200000", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto plan = nlohmann::json::parse(r.out);
  ASSERT_EQ(plan["per_worker"].size(), 3u);
  ASSERT_EQ(
      run_cli({"from-hf", hf().string(), at("one").string(), "--shard-size", "200000", "--quiet"})
          .exit_code,
      0);
  uint64_t total = 0;
  for (const auto& [name, bytes] : final_files(at("one")))
    if (name.ends_with(".safetensors")) total += bytes.size();
  EXPECT_EQ(plan["output_bytes"].get<uint64_t>(), total);
  EXPECT_EQ(plan["shards"].get<size_t>(), final_files(at("one")).size() - 2);  // config, index
  // Each worker's shards are the ones it writes: run only worker 1 and look.
  const auto dst = at("w1");
  ASSERT_EQ(run_cli({"from-hf", hf().string(), dst.string(), "--shard-size", "200000", "--quiet",
                     "--workers", "3", "--worker", "1"})
                .exit_code,
            0);
  std::set<std::string> written, planned;
  for (const auto& [name, bytes] : final_files(dst))
    if (name.ends_with(".safetensors")) written.insert(name);
  uint64_t bytes1 = 0;
  for (const auto& s : plan["per_worker"][1]["shards"]) {
    planned.insert(s.get<std::string>());
    bytes1 += fs::file_size(dst / s.get<std::string>());
  }
  EXPECT_EQ(written, planned);
  EXPECT_EQ(plan["per_worker"][1]["output_bytes"].get<uint64_t>(), bytes1);
  uint64_t in = 0;
  for (const auto& w : plan["per_worker"]) in += w["input_bytes"].get<uint64_t>();
  EXPECT_GE(in, plan["input_bytes"].get<uint64_t>());
  // No index without the other workers; finalize refuses and names what is missing.
  EXPECT_FALSE(fs::exists(dst / "model.safetensors.index.json"));
  auto fin = run_cli({"finalize", dst.string()});
  EXPECT_EQ(fin.exit_code, 1);
  EXPECT_NE(fin.err.find("are not finished"), std::string::npos) << fin.err;
  EXPECT_NE(fin.err.find("-of-00066.safetensors"), std::string::npos) << fin.err;
  EXPECT_NE(fin.err.find("worker(s) 0, 2 of 3"), std::string::npos) << fin.err;
  EXPECT_FALSE(fs::exists(dst / "model.safetensors.index.json"));
  // The others, later (a job array): each succeeds with its own shards done; worker 0 says the
  // folder is not complete yet and who completes it, and worker 2, the last, completes it.
  auto w0 = run_cli({"from-hf", hf().string(), dst.string(), "--shard-size", "200000", "--quiet",
                     "--workers", "3", "--worker", "0", "--wait", "0"});
  EXPECT_EQ(w0.exit_code, 0) << w0.err;
  EXPECT_NE(w0.out.find("is not complete yet"), std::string::npos) << w0.out;
  EXPECT_NE(w0.out.find("worker(s) 2 of 3"), std::string::npos) << w0.out;
  EXPECT_NE(w0.out.find("the last worker to finish completes"), std::string::npos) << w0.out;
  EXPECT_FALSE(fs::exists(dst / "model.safetensors.index.json"));
  auto w2 = run_cli({"from-hf", hf().string(), dst.string(), "--shard-size", "200000", "--quiet",
                     "--workers", "3", "--worker", "2", "--wait", "0"});
  EXPECT_EQ(w2.exit_code, 0) << w2.err;
  EXPECT_NE(w2.out.find("the folder is complete"), std::string::npos) << w2.out;
  expect_same(dst, at("one"));
}

// The job-array recipe: workers run one after another, in any order, each to its end with the
// default --wait. Every one succeeds; the last completes the folder, byte-identical to one
// process's; the ones before say it is not complete yet.
TEST_F(Distributed, AJobArrayInAnyOrderCompletesTheFolder) {
  const std::vector<std::string> base{"from-hf", hf().string()};
  const std::vector<std::string> opts{"--shard-size", "200000", "--quiet"};
  auto args = [&](const fs::path& dst) {
    auto a = base;
    a.push_back(dst.string());
    a.insert(a.end(), opts.begin(), opts.end());
    return a;
  };
  ASSERT_EQ(run_cli(args(at("one"))).exit_code, 0);
  for (const std::vector<int>& order :
       {std::vector<int>{2, 1, 0}, std::vector<int>{0, 1, 2}, std::vector<int>{1, 0, 2}}) {
    const std::string name =
        "array-" + std::to_string(order[0]) + std::to_string(order[1]) + std::to_string(order[2]);
    SCOPED_TRACE(name);
    const auto dst = at(name);
    for (size_t i = 0; i < order.size(); ++i) {
      auto a = args(dst);
      a.insert(a.end(), {"--workers", "3", "--worker", std::to_string(order[i])});
      const auto t0 = std::chrono::steady_clock::now();
      const auto r = run_cli(a);
      EXPECT_EQ(r.exit_code, 0) << "worker " << order[i] << ": " << r.err;
      // No wait for workers that have not started (the default --wait is two days).
      EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(60));
      const bool last = i + 1 == order.size();
      EXPECT_EQ(fs::exists(dst / "model.safetensors.index.json"), last);
      EXPECT_NE(r.out.find(last ? "the folder is complete" : "is not complete yet"),
                std::string::npos)
          << r.out;
    }
    expect_same(dst, at("one"));
  }
}

TEST_F(Distributed, RelaunchedWorkersWaitForACompletionUnderWayAndSucceed) {
  // A relaunched job's workers can start while a peer (or moeckpt finalize) completes the folder:
  // each waits for that to end, then finds the finished folder or resumes; none fails.
  auto args = [&](const fs::path& dst, int k, bool resume) {
    std::vector<std::string> a{"from-hf",  hf().string(),    dst.string(), "--shard-size",
                               "200000",   "--quiet",        "--workers",  "3",
                               "--worker", std::to_string(k)};
    if (resume) a.insert(a.end(), {"--resume", "--wait", "60"});
    return a;
  };
  ASSERT_EQ(
      run_cli({"from-hf", hf().string(), at("one").string(), "--shard-size", "200000", "--quiet"})
          .exit_code,
      0);
  const auto dst = at("relaunch");
  for (int k : {1, 2}) {
    const auto r = run_cli(args(dst, k, false));
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  // The finalize lock held, as by a completion under way.
  const auto lock = dst / ".moeckpt-finalize.lock";
  const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX), 0);
  std::vector<Worker> ws;
  for (int k : {0, 1, 2})
    ws.push_back(start(args(dst, k, true), {}, dir_ / ("w" + std::to_string(k))));
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  for (const auto& w : ws) {
    int status = 0;
    EXPECT_EQ(::waitpid(w.pid, &status, WNOHANG), 0) << test::read_text(w.err);
  }
  ::unlink(lock.c_str());  // released as its holder releases it
  ::close(fd);
  for (const auto& w : ws) EXPECT_EQ(finish(w), 0) << test::read_text(w.err);
  expect_same(dst, at("one"));
}

TEST_F(Distributed, KilledWorkersLeaveNoIndexAndResumeCompletesByteIdentically) {
  const std::vector<std::string> base{"from-hf", hf().string()};
  // Worker 0 waits for workers still running (kept short here; a worker killed before it took
  // its lock cannot be told from one not started, and is not waited for).
  const std::vector<std::string> opts{"--shard-size", "100000", "--quiet", "--threads", "1",
                                      "--wait",       "8"};
  auto args_for = [&](const fs::path& dst) {
    auto a = base;
    a.push_back(dst.string());
    a.insert(a.end(), opts.begin(), opts.end());
    return a;
  };
  ASSERT_EQ(run_cli(args_for(at("ref"))).exit_code, 0);
  const int n = 3;
  auto t0 = std::chrono::steady_clock::now();
  for (const auto& [rc, err] : run_explicit(args_for(at("clean")), n)) ASSERT_EQ(rc, 0) << err;
  const auto span =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  expect_same(at("clean"), at("ref"));
  std::mt19937 rng(7);
  int killed_running = 0;
  const int trials = test::trials(10, 4);
  for (int trial = 0; trial < trials; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    const auto dst = at("kill" + std::to_string(trial));
    const int victim = static_cast<int>(rng() % n);
    // Within the first third of a clean run: every worker is still busy then.
    const auto delay = std::chrono::microseconds(rng() % static_cast<uint64_t>(span / 3 + 1));
    std::vector<Worker> ws;
    for (int k = 0; k < n; ++k) {
      auto a = args_for(dst);
      a.insert(a.end(), {"--workers", std::to_string(n), "--worker", std::to_string(k)});
      ws.push_back(
          start(a, {}, dir_ / ("kerr" + std::to_string(k)), dir_ / ("kout" + std::to_string(k))));
    }
    std::this_thread::sleep_for(delay);
    int status = 0;
    const bool running = ::waitpid(ws[victim].pid, &status, WNOHANG) == 0;
    if (running) {
      ::kill(ws[victim].pid, SIGKILL);
      ::waitpid(ws[victim].pid, &status, 0);
      ++killed_running;
    }
    std::vector<int> rcs;
    for (int k = 0; k < n; ++k) rcs.push_back(k == victim ? (running ? -1 : 0) : finish(ws[k]));
    const bool indexed = fs::exists(dst / "model.safetensors.index.json");
    if (running) {
      // A worker killed before it finished: no index; worker 0 says which worker stopped.
      bool victim_done = true;
      if (!indexed) victim_done = false;
      if (!victim_done) {
        EXPECT_FALSE(indexed);
        if (victim != 0) {
          // Its own shards done, worker 0 succeeds and says the folder is not complete (naming
          // the victim as stopped, unless it was killed before it took its lock: then it is not
          // told from one not started).
          const auto out0 = test::read_text(dir_ / "kout0");
          EXPECT_EQ(rcs[0], 0) << test::read_text(dir_ / "kerr0");
          EXPECT_NE(out0.find("is not complete yet"), std::string::npos) << out0;
        }
        // finalize refuses and names the missing shards, unless the victim had finished its
        // shards (killed on its way out, or worker 0 between its checks and the index).
        auto fin = run_cli({"finalize", dst.string()});
        if (fin.exit_code != 0) {
          EXPECT_EQ(fin.exit_code, 1);
          EXPECT_NE(fin.err.find(".safetensors"), std::string::npos) << fin.err;
        }
      }
    }
    // Whatever is under a final name is one of the reference's files, byte for byte.
    const auto ref = final_files(at("ref"));
    for (const auto& [name, bytes] : final_files(dst)) {
      auto it = ref.find(name);
      ASSERT_NE(it, ref.end()) << name;
      EXPECT_TRUE(it->second == bytes) << name;
    }
    if (!fs::exists(dst / "model.safetensors.index.json")) {
      // The relaunch of every worker with --resume completes the folder.
      std::vector<Worker> again;
      for (int k = 0; k < n; ++k) {
        auto a = args_for(dst);
        a.insert(a.end(),
                 {"--workers", std::to_string(n), "--worker", std::to_string(k), "--resume"});
        again.push_back(start(a, {}, dir_ / ("rerr" + std::to_string(k))));
      }
      for (int k = 0; k < n; ++k)
        EXPECT_EQ(finish(again[k]), 0) << test::read_text(dir_ / ("rerr" + std::to_string(k)));
    } else if (fs::exists(dst / ".moeckpt-job.json")) {
      // The worker completing the folder killed between the index and the removal of the
      // records: finalize, as the workers' message says, removes them.
      auto fin = run_cli({"finalize", dst.string()});
      EXPECT_EQ(fin.exit_code, 0) << fin.err;
    }
    expect_same(dst, at("ref"));
  }
  std::printf("distributed kill trials: %d of %d killed a running worker\n", killed_running,
              trials);
  EXPECT_GE(killed_running * 10, trials * 7);  // at least 7 in 10 (3 of 4)
}

// A worker killed on its way out (every shard recorded, its lock not yet released) leaves its
// lock file: whoever completes the folder removes it with the records, whichever way it is done.
TEST_F(Distributed, ALockFileLeftByADeadWorkerGoesWithTheRecords) {
  auto args = [&](const fs::path& dst, std::vector<std::string> extra) {
    std::vector<std::string> a{"from-hf", hf().string(), dst.string(), "--shard-size",
                               "200000",  "--quiet",     "--wait",     "0"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  ASSERT_EQ(run_cli(args(at("ref"), {})).exit_code, 0);
  auto worker = [&](const fs::path& dst, int k) {
    return run_cli(args(dst, {"--workers", "3", "--worker", std::to_string(k)}));
  };
  auto dead_lock = [](const fs::path& dst, int k) {
    std::ofstream(dst / (".moeckpt-worker-0000" + std::to_string(k) + "-of-00003.lock"))
        << "4242\n";
  };
  // Worker 0 last: it completes the folder.
  const auto a = at("a");
  for (int k : {1, 2}) ASSERT_EQ(worker(a, k).exit_code, 0);
  dead_lock(a, 1);
  dead_lock(a, 2);
  auto w0 = worker(a, 0);
  EXPECT_EQ(w0.exit_code, 0) << w0.err;
  expect_same(a, at("ref"));
  // moeckpt finalize completes it: the last worker left it to worker 0, which it took for still
  // running (its lock held), and which then died with its lock file left.
  const auto b = at("b");
  EXPECT_EQ(worker(b, 0).exit_code, 0);  // its own shards done; the others have not run
  ASSERT_EQ(worker(b, 1).exit_code, 0);
  {
    test::HeldLockFile running(b / ".moeckpt-worker-00000-of-00003.lock");
    auto last = worker(b, 2);
    ASSERT_EQ(last.exit_code, 0) << last.err;
    EXPECT_NE(last.out.find("worker 0 of 3, still running, completes"), std::string::npos)
        << last.out;
  }
  EXPECT_FALSE(fs::exists(b / "model.safetensors.index.json"));
  dead_lock(b, 0);
  dead_lock(b, 2);
  auto fin = run_cli({"finalize", b.string()});
  EXPECT_EQ(fin.exit_code, 0) << fin.err;
  expect_same(b, at("ref"));
}

TEST_F(Distributed, LaunchesThatWouldMixAreRefused) {
  const auto dst = at("dst");
  auto w = [&](int k, int n, std::vector<std::string> extra = {}) {
    std::vector<std::string> a{"from-hf",   hf().string(),     dst.string(), "--shard-size",
                               "200000",    "--quiet",         "--wait",     "0",
                               "--workers", std::to_string(n), "--worker",   std::to_string(k)};
    a.insert(a.end(), extra.begin(), extra.end());
    return run_cli(a);
  };
  EXPECT_EQ(w(1, 3).exit_code, 0);
  // The same worker again without --resume.
  auto r = w(1, 3);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("unfinished distributed conversion"), std::string::npos) << r.err;
  // Another worker count.
  r = w(0, 2, {"--resume"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("with 3 workers"), std::string::npos) << r.err;
  // Other options into the same folder.
  r = run_cli({"from-hf", hf().string(), dst.string(), "--shard-size", "200000", "--quiet",
               "--dtype", "f32", "--workers", "3", "--worker", "2"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("belongs to another conversion"), std::string::npos) << r.err;
  // A single-process conversion into it.
  r = run_cli({"from-hf", hf().string(), dst.string(), "--quiet", "--resume"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("unfinished distributed conversion"), std::string::npos) << r.err;
  // --overwrite cannot be distributed: a usage error.
  r = w(0, 3, {"--overwrite"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--overwrite cannot be used"), std::string::npos) << r.err;
  // --distributed outside any launcher, and contradictory explicit values.
  r = run_cli({"from-hf", hf().string(), at("x").string(), "--distributed"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no launcher environment"), std::string::npos) << r.err;
  r = run_cli({"from-hf", hf().string(), at("x").string(), "--workers", "2", "--worker", "2"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--worker 2 is not below --workers 2"), std::string::npos) << r.err;
  r = run_cli({"from-hf", hf().string(), at("x").string(), "--workers", "2"});
  EXPECT_EQ(r.exit_code, 2);
  // The rest of the launch completes the folder.
  EXPECT_EQ(w(2, 3).exit_code, 0);
  r = w(0, 3);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dst / "model.safetensors.index.json"));
  EXPECT_TRUE(hidden_files(dst).empty());
  // A finished folder: a new launch is refused.
  r = w(1, 3);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("already holds a checkpoint"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace moeckpt

namespace moeckpt {
namespace {

TEST_F(Distributed, ResumingEveryRankKeepsTheFinishedFolders) {
  const auto dst = at("all");
  const std::vector<std::string> args{"from-hf", hf().string(),  dst.string(), "--ep-size",
                                      "3",       "--shard-size", "200000",     "--quiet"};
  auto with = [&](std::vector<std::string> extra) {
    auto a = args;
    a.insert(a.end(), extra.begin(), extra.end());
    return run_cli(a);
  };
  ASSERT_EQ(with({"--ep-rank", "all"}).exit_code, 0);
  const auto rank1 = final_files(dst / "ep-rank-1-of-3");
  fs::remove_all(dst / "ep-rank-2-of-3");  // as if the run had died before the last folder
  const auto t1 = fs::last_write_time(dst / "ep-rank-1-of-3" / "config.json");
  for (const auto& [rc, err] : run_explicit({"from-hf", hf().string(), dst.string(), "--ep-size",
                                             "3", "--shard-size", "200000", "--quiet", "--resume"},
                                            2))
    EXPECT_EQ(rc, 0) << err;
  EXPECT_EQ(fs::last_write_time(dst / "ep-rank-1-of-3" / "config.json"), t1);  // kept as it was
  EXPECT_TRUE(final_files(dst / "ep-rank-1-of-3") == rank1);
  ASSERT_EQ(run_cli({"from-hf", hf().string(), at("r2").string(), "--ep-size", "3", "--ep-rank",
                     "2", "--shard-size", "200000", "--quiet"})
                .exit_code,
            0);
  expect_same(dst / "ep-rank-2-of-3", at("r2"));
  auto r = with({"--ep-rank", "all", "--resume"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("nothing to resume"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace moeckpt
