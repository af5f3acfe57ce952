// Which worker of a distributed conversion this process is, from the launcher's environment.
#include <fmt/format.h>

#include <sched.h>
#include <unistd.h>

#include <charconv>
#include <cstdlib>
#include <thread>

#include "moeckpt/distributed.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt {
namespace {

using Env = std::function<std::optional<std::string>(const char*)>;

[[noreturn]] void bad_env(const std::string& what, const std::string& expected) {
  fail(ErrorKind::kInvalidArgument, "", "", what, expected);
}

std::optional<int64_t> count_var(const Env& env, const char* name) {
  const auto v = env(name);
  if (!v) return std::nullopt;
  int64_t x = -1;
  const auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), x);
  if (v->empty() || ec != std::errc() || p != v->data() + v->size() || x < 0)
    bad_env(fmt::format("environment variable {}=\"{}\" is not a count", name, *v),
            "a non-negative decimal integer");
  return x;
}

// A launcher's rank and size variables (and the node-local ones, optional).
struct Vars {
  const char* launcher;
  const char* rank;
  const char* size;
  const char* local_rank;
  const char* local_size;
};

std::optional<WorkerSlot> read_launcher(const Env& env, const Vars& v) {
  const auto rank = count_var(env, v.rank);
  const auto size = count_var(env, v.size);
  if (!rank && !size) return std::nullopt;
  if (!rank || !size)
    bad_env(fmt::format("{} sets {} but not {}", v.launcher, rank ? v.rank : v.size,
                        rank ? v.size : v.rank),
            "both, as the launcher sets them (or " + option_ref(CallerOption::kWorkers) + ")");
  if (*size < 1 || *rank >= *size)
    bad_env(fmt::format("{}: {}={} is not below {}={}", v.launcher, v.rank, *rank, v.size, *size),
            "a rank in [0, size)");
  check_worker_count(*size, fmt::format("{}: {}", v.launcher, v.size));
  WorkerSlot slot{*rank, *size, 0, 0, v.launcher};
  if (v.local_rank) {
    const auto lr = count_var(env, v.local_rank);
    const auto ls = v.local_size ? count_var(env, v.local_size) : std::nullopt;
    if (lr) slot.local_rank = *lr;
    if (ls) slot.local_count = *ls;
    if (lr && ls && (*ls < 1 || *lr >= *ls || *ls > *size))
      bad_env(fmt::format("{}: {}={} and {}={} contradict each other (or {}={})", v.launcher,
                          v.local_rank, *lr, v.local_size, *ls, v.size, *size),
              "a local rank below the local size, which is at most the world size");
  }
  return slot;
}

// SLURM_STEP_TASKS_PER_NODE: "4", "2(x3),1": the tasks on node SLURM_NODEID.
std::optional<int64_t> slurm_tasks_on_node(const Env& env) {
  const auto spec = env("SLURM_STEP_TASKS_PER_NODE") ? env("SLURM_STEP_TASKS_PER_NODE")
                                                     : env("SLURM_TASKS_PER_NODE");
  const auto node = count_var(env, "SLURM_NODEID");
  if (!spec || !node) return std::nullopt;
  int64_t index = 0;
  std::string_view s = *spec;
  while (!s.empty()) {
    const auto comma = s.find(',');
    const auto item = s.substr(0, comma);
    int64_t tasks = 0, repeat = 1;
    auto [p, ec] = std::from_chars(item.data(), item.data() + item.size(), tasks);
    if (ec != std::errc()) return std::nullopt;
    if (p != item.data() + item.size()) {
      std::string_view rest(p, item.data() + item.size() - p);
      if (!rest.starts_with("(x") || !rest.ends_with(")")) return std::nullopt;
      rest = rest.substr(2, rest.size() - 3);
      if (std::from_chars(rest.data(), rest.data() + rest.size(), repeat).ec != std::errc())
        return std::nullopt;
    }
    if (*node < index + repeat) return tasks;
    index += repeat;
    if (comma == std::string_view::npos) break;
    s = s.substr(comma + 1);
  }
  return std::nullopt;
}

}  // namespace

WorkerSlot worker_slot_from_env(const Env& env) {
  // Innermost launcher first: torchrun under srun sees both, and its RANK is the one that counts.
  static const Vars kTorchrun{"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"};
  static const Vars kOpenMpi{"Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                             "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"};
  static const Vars kPmi{"MPICH/Intel MPI (PMI)", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID",
                         "MPI_LOCALNRANKS"};
  // srun gives a step its own task count; SLURM_NTASKS is the allocation's (and the step's when
  // srun runs all of them), so the step's is preferred where it is set.
  const Vars slurm{"Slurm", "SLURM_PROCID",
                   env("SLURM_STEP_NUM_TASKS") ? "SLURM_STEP_NUM_TASKS" : "SLURM_NTASKS",
                   "SLURM_LOCALID", nullptr};
  const auto pmix_rank = count_var(env, "PMIX_RANK");
  std::optional<WorkerSlot> slot;
  for (const Vars* v : {&kTorchrun, &kOpenMpi, &kPmi}) {
    slot = read_launcher(env, *v);
    if (slot) break;
  }
  if (!slot && pmix_rank) {
    // PMIx gives the rank; the size comes from whoever started the process (srun --mpi=pmix,
    // prterun): Slurm's task count, or PMIX_SIZE where a launcher exports it.
    auto size = count_var(env, "PMIX_SIZE");
    if (!size) size = count_var(env, "SLURM_STEP_NUM_TASKS");
    if (!size) size = count_var(env, "SLURM_NTASKS");
    if (!size)
      bad_env(fmt::format("PMIX_RANK={} is set but no launcher variable gives the number of "
                          "workers (PMIX_SIZE, SLURM_NTASKS)",
                          *pmix_rank),
              "a launcher that exports the world size, or " + option_ref(CallerOption::kWorkers));
    check_worker_count(*size, "PMIx: the world size");
    if (*size < 1 || *pmix_rank >= *size)
      bad_env(fmt::format("PMIx: PMIX_RANK={} is not below the world size {}", *pmix_rank, *size),
              "a rank in [0, size)");
    slot = WorkerSlot{*pmix_rank, *size, 0, 0, "PMIx"};
    if (const auto lr = count_var(env, "PMIX_LOCAL_RANK")) slot->local_rank = *lr;
    if (const auto ls = count_var(env, "PMIX_LOCAL_SIZE")) slot->local_count = *ls;
  } else if (slot && pmix_rank && slot->launcher == kOpenMpi.launcher && *pmix_rank != slot->rank) {
    // Open MPI sets both for the same process: they must agree.
    bad_env(
        fmt::format("OMPI_COMM_WORLD_RANK={} and PMIX_RANK={} disagree", slot->rank, *pmix_rank),
        "the variables of one mpirun launch");
  }
  if (!slot) {
    slot = read_launcher(env, slurm);
    if (slot) {
      if (const auto n = slurm_tasks_on_node(env)) slot->local_count = *n;
      if (slot->local_count > 0 && slot->local_rank >= slot->local_count)
        bad_env(fmt::format("Slurm: SLURM_LOCALID={} is not below the {} tasks of this node",
                            slot->local_rank, slot->local_count),
                "a consistent Slurm step environment");
    }
  }
  if (!slot)
    bad_env(
        "no launcher environment found (torchrun's RANK/WORLD_SIZE, Open MPI's "
        "OMPI_COMM_WORLD_RANK/_SIZE, PMI_RANK/PMI_SIZE, PMIX_RANK, Slurm's "
        "SLURM_PROCID/SLURM_NTASKS)",
        "a run under torchrun, srun or mpirun, or " + option_ref(CallerOption::kWorkers));
  return *slot;
}

WorkerSlot worker_slot_from_process_env() {
  return worker_slot_from_env([](const char* name) -> std::optional<std::string> {
    const char* v = std::getenv(name);
    if (!v) return std::nullopt;
    return std::string(v);
  });
}

unsigned worker_threads(const WorkerSlot& slot) {
  cpu_set_t set;
  CPU_ZERO(&set);
  int allowed = 0;
  if (::sched_getaffinity(0, sizeof(set), &set) == 0) allowed = CPU_COUNT(&set);
  if (allowed <= 0) allowed = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const long online = ::sysconf(_SC_NPROCESSORS_ONLN);
  // A mask no wider than the worker's share of the machine: the launcher bound it to its own
  // cores. Otherwise the node's workers share the mask, and divide it.
  const int64_t local = std::max<int64_t>(1, slot.local_count);
  if (online > 0 && allowed <= online / local) return static_cast<unsigned>(allowed);
  return static_cast<unsigned>(std::max<int64_t>(1, allowed / local));
}

}  // namespace moeckpt
