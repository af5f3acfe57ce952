// Which worker a process is, from each launcher's variables, and which shards each worker writes.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>

#include "moeckpt/distributed.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt {
namespace {

using Vars = std::map<std::string, std::string>;

WorkerSlot slot_of(const Vars& vars) {
  return worker_slot_from_env([&](const char* name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  });
}

std::string error_of(const Vars& vars) {
  try {
    slot_of(vars);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    return e.what();
  }
  ADD_FAILURE() << "accepted";
  return "";
}

TEST(WorkerSlot, EachLauncher) {
  auto s =
      slot_of({{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"}});
  EXPECT_EQ(s.rank, 3);
  EXPECT_EQ(s.count, 8);
  EXPECT_EQ(s.local_rank, 1);
  EXPECT_EQ(s.local_count, 2);
  EXPECT_EQ(s.launcher, "torchrun");
  s = slot_of({{"OMPI_COMM_WORLD_RANK", "2"},
               {"OMPI_COMM_WORLD_SIZE", "4"},
               {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
               {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"},
               {"PMIX_RANK", "2"}});
  EXPECT_EQ(s.rank, 2);
  EXPECT_EQ(s.count, 4);
  EXPECT_EQ(s.local_count, 2);
  EXPECT_EQ(s.launcher, "Open MPI");
  s = slot_of(
      {{"PMI_RANK", "5"}, {"PMI_SIZE", "6"}, {"MPI_LOCALRANKID", "1"}, {"MPI_LOCALNRANKS", "3"}});
  EXPECT_EQ(s.rank, 5);
  EXPECT_EQ(s.count, 6);
  EXPECT_EQ(s.local_rank, 1);
  EXPECT_EQ(s.local_count, 3);
  s = slot_of({{"PMIX_RANK", "7"}, {"SLURM_NTASKS", "9"}});
  EXPECT_EQ(s.rank, 7);
  EXPECT_EQ(s.count, 9);
  EXPECT_EQ(s.launcher, "PMIx");
  s = slot_of({{"SLURM_PROCID", "4"},
               {"SLURM_NTASKS", "5"},
               {"SLURM_LOCALID", "1"},
               {"SLURM_NODEID", "1"},
               {"SLURM_STEP_TASKS_PER_NODE", "3,2"}});
  EXPECT_EQ(s.rank, 4);
  EXPECT_EQ(s.count, 5);
  EXPECT_EQ(s.local_rank, 1);
  EXPECT_EQ(s.local_count, 2);
  s = slot_of({{"SLURM_PROCID", "5"},
               {"SLURM_NTASKS", "8"},
               {"SLURM_LOCALID", "1"},
               {"SLURM_NODEID", "2"},
               {"SLURM_STEP_TASKS_PER_NODE", "2(x3),1(x2)"}});
  EXPECT_EQ(s.local_count, 2);
  s = slot_of({{"SLURM_PROCID", "7"},
               {"SLURM_NTASKS", "8"},
               {"SLURM_LOCALID", "0"},
               {"SLURM_NODEID", "4"},
               {"SLURM_STEP_TASKS_PER_NODE", "2(x3),1(x2)"}});
  EXPECT_EQ(s.local_count, 1);
}

TEST(WorkerSlot, SlurmStepTaskCountOverTheAllocations) {
  // srun -n 2 inside an allocation of 8 tasks: the step has 2.
  auto s = slot_of({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "8"}, {"SLURM_STEP_NUM_TASKS", "2"}});
  EXPECT_EQ(s.count, 2);
  EXPECT_EQ(s.rank, 1);
  s = slot_of({{"PMIX_RANK", "1"}, {"SLURM_NTASKS", "8"}, {"SLURM_STEP_NUM_TASKS", "2"}});
  EXPECT_EQ(s.count, 2);
  EXPECT_NE(error_of({{"SLURM_PROCID", "2"}, {"SLURM_NTASKS", "8"}, {"SLURM_STEP_NUM_TASKS", "2"}})
                .find("is not below"),
            std::string::npos);
}

TEST(WorkerSlot, InnermostLauncherWins) {
  // torchrun started by srun: SLURM_PROCID numbers the torchrun agents, RANK the workers.
  auto s =
      slot_of({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}, {"RANK", "5"}, {"WORLD_SIZE", "8"}});
  EXPECT_EQ(s.rank, 5);
  EXPECT_EQ(s.count, 8);
  // mpirun inside an sbatch script: the batch step's SLURM_PROCID=0 is not the worker's rank.
  s = slot_of({{"SLURM_PROCID", "0"},
               {"SLURM_NTASKS", "1"},
               {"OMPI_COMM_WORLD_RANK", "3"},
               {"OMPI_COMM_WORLD_SIZE", "4"}});
  EXPECT_EQ(s.rank, 3);
  EXPECT_EQ(s.count, 4);
}

TEST(WorkerSlot, MissingOrContradictoryVariablesAreRefused) {
  EXPECT_NE(error_of({}).find("no launcher environment"), std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}}).find("sets RANK but not WORLD_SIZE"), std::string::npos);
  EXPECT_NE(error_of({{"WORLD_SIZE", "2"}}).find("sets WORLD_SIZE but not RANK"),
            std::string::npos);
  EXPECT_NE(error_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}}).find("is not below"), std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}, {"WORLD_SIZE", "0"}}).find("is not below"), std::string::npos);
  for (const char* bad : {"-1", "1e3", "0x10", "", " 1", "1 ", "99999999999999999999999"})
    EXPECT_NE(error_of({{"RANK", bad}, {"WORLD_SIZE", "4"}}).find("is not a count"),
              std::string::npos)
        << bad;
  EXPECT_NE(
      error_of({{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "2"}, {"LOCAL_WORLD_SIZE", "2"}})
          .find("contradict"),
      std::string::npos);
  EXPECT_NE(
      error_of({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {"PMIX_RANK", "2"}})
          .find("disagree"),
      std::string::npos);
  EXPECT_NE(error_of({{"PMIX_RANK", "1"}}).find("no launcher variable gives the number"),
            std::string::npos);
  EXPECT_NE(error_of({{"PMIX_RANK", "3"}, {"SLURM_NTASKS", "3"}}).find("is not below"),
            std::string::npos);
  EXPECT_NE(error_of({{"SLURM_PROCID", "0"},
                      {"SLURM_NTASKS", "4"},
                      {"SLURM_LOCALID", "2"},
                      {"SLURM_NODEID", "0"},
                      {"SLURM_STEP_TASKS_PER_NODE", "2(x2)"}})
                .find("SLURM_LOCALID=2"),
            std::string::npos);
}

TEST(WorkerSlot, ThreadsAreAtLeastOne) {
  EXPECT_GE(worker_threads({0, 1, 0, 1, "x"}), 1u);
  EXPECT_GE(worker_threads({0, 512, 0, 512, "x"}), 1u);
  EXPECT_LE(worker_threads({0, 2, 0, 2, "x"}), worker_threads({0, 1, 0, 1, "x"}));
}

// The best possible largest load, by trying every assignment (small cases only).
uint64_t optimal_makespan(const std::vector<uint64_t>& sizes, int64_t workers) {
  std::vector<uint64_t> load(static_cast<size_t>(workers), 0);
  uint64_t best = UINT64_MAX;
  std::function<void(size_t)> go = [&](size_t i) {
    const uint64_t now = *std::max_element(load.begin(), load.end());
    if (now >= best) return;
    if (i == sizes.size()) {
      best = now;
      return;
    }
    for (auto& l : load) {
      l += sizes[i];
      go(i + 1);
      l -= sizes[i];
    }
  };
  go(0);
  return best;
}

TEST(AssignShards, EveryShardOnceDeterministicWithinTheLptBound) {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 300; ++trial) {
    const size_t shards = 1 + rng() % 9;
    const int64_t workers = 1 + static_cast<int64_t>(rng() % 4);
    std::vector<uint64_t> sizes(shards);
    for (auto& s : sizes) s = 1 + rng() % 1000;
    const auto owner = assign_shards(sizes, workers);
    ASSERT_EQ(owner.size(), shards);
    EXPECT_EQ(owner, assign_shards(sizes, workers));
    std::vector<uint64_t> load(static_cast<size_t>(workers), 0);
    for (size_t s = 0; s < shards; ++s) {
      ASSERT_GE(owner[s], 0);
      ASSERT_LT(owner[s], workers);
      load[static_cast<size_t>(owner[s])] += sizes[s];
    }
    // Graham's bound for longest-processing-time first: at most 4/3 - 1/(3m) of the optimum.
    const uint64_t opt = optimal_makespan(sizes, workers);
    const double bound = (4.0 / 3.0 - 1.0 / (3.0 * static_cast<double>(workers))) * opt;
    EXPECT_LE(static_cast<double>(*std::max_element(load.begin(), load.end())), bound + 1e-9);
  }
}

TEST(AssignShards, EqualShardsGoRoundAndExtraWorkersGetNone) {
  const auto owner = assign_shards(std::vector<uint64_t>(10, 7), 4);
  EXPECT_EQ(owner, (std::vector<int64_t>{0, 1, 2, 3, 0, 1, 2, 3, 0, 1}));
  const auto few = assign_shards({5, 9, 1}, 8);
  EXPECT_EQ(few, (std::vector<int64_t>{1, 0, 2}));
  EXPECT_THROW(assign_shards({1}, 0), Error);
}

}  // namespace
}  // namespace moeckpt
