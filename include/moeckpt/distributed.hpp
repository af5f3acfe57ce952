#pragma once
// One conversion spread over many processes (docs/SCALING.md): which worker this process is (from
// the launcher's environment, or given), which output shards each worker writes, what each one
// reads, and the completion of a folder the workers wrote together. Workers never talk to each
// other: the plan is a pure function of the headers, and each records its finished shards in its
// own manifest in the destination.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace moeckpt {

// The most workers one conversion may have, however the count arrives (--workers, a launcher's
// WORLD_SIZE, a job record read back): per-worker state is allocated up front, so an absurd
// count would cost memory and time before anything could refuse it.
inline constexpr int64_t kMaxWorkers = 65536;
// Throws kInvalidArgument unless 1 <= count <= kMaxWorkers; `source` says where it came from
// ("--workers", "torchrun: WORLD_SIZE", ...).
void check_worker_count(int64_t count, const std::string& source);

struct WorkerSlot {
  int64_t rank = 0;
  int64_t count = 1;
  int64_t local_rank = 0;   // among the workers of this node
  int64_t local_count = 1;  // 0: unknown
  std::string launcher;     // where the numbers came from: "torchrun", "open-mpi", ...
};

// The worker this process is, from the launcher's variables: torchrun (RANK, WORLD_SIZE,
// LOCAL_RANK, LOCAL_WORLD_SIZE), Open MPI (OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK,
// _LOCAL_SIZE), MPICH/Hydra and Intel MPI (PMI_RANK, PMI_SIZE, MPI_LOCALRANKID,
// MPI_LOCALNRANKS), PMIx (PMIX_RANK, the size from the launcher that started it), Slurm
// (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_STEP_TASKS_PER_NODE). Launchers nest (torchrun
// under srun, mpirun in an sbatch script), so the innermost one present wins, in that order.
// Throws (kInvalidArgument, naming the variables) when none is present, a rank comes without its
// size, a value is not a count, a rank is not below its size, or two variables of one launcher
// disagree. `env` reads a variable (nullopt: unset).
WorkerSlot worker_slot_from_env(const std::function<std::optional<std::string>(const char*)>& env);
WorkerSlot worker_slot_from_process_env();

// Threads for one worker: the cores its CPU affinity allows, divided among the node's workers when
// they share one mask (a launcher that binds each worker to its own cores is taken as it is).
unsigned worker_threads(const WorkerSlot& slot);

// The worker that writes each output shard: longest first (by bytes) to the least loaded worker,
// ties to the lower index, so every worker computes the same assignment. Workers beyond the
// number of shards get none.
std::vector<int64_t> assign_shards(const std::vector<uint64_t>& shard_bytes, int64_t workers);

// Completes a destination the workers of a distributed conversion wrote: once every worker's
// manifest records its shards, checks each shard's size and header bytes against the plan,
// writes the index (renamed into place last) and removes the workers' records. Waits up to `wait`
// for workers still running; refuses at once, naming the missing shards, when a worker stopped
// (failed, or died: its lock is free) without finishing them, and after `wait` otherwise.
struct FinalizeReport {
  size_t shards = 0;
  uint64_t bytes = 0;
  int64_t workers = 0;
  bool index_written = false;
};
// A set `cancel` ends the wait (Interrupted). `deadline`: when the wait ends, where it began
// before this call; messages name `wait`. (A worker of a conversion completes the folder the same
// way once it finds every shard recorded: ConvertOptions.)
FinalizeReport finalize_dir(
    const std::filesystem::path& dst, std::chrono::milliseconds wait,
    const std::atomic<bool>* cancel = nullptr,
    std::optional<std::chrono::steady_clock::time_point> deadline = std::nullopt);

// Whether `dst` holds the records of a distributed conversion that has not been finalized.
bool has_distributed_records(const std::filesystem::path& dst);

}  // namespace moeckpt
