#pragma once
// The destination as one worker of a distributed conversion sees it: its own lock, manifest and
// temporaries (never another worker's), the shards it owns, and the refusals that keep launches
// apart: a destination holding a checkpoint, another launch's records (other inputs, options or
// worker count), or this worker's own unfinished records without --resume.
#include <atomic>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "io/dir_lock.hpp"
#include "job/destination_files.hpp"
#include "job/distributed_records.hpp"
#include "moeckpt/job.hpp"
#include "moeckpt/safetensors_writer.hpp"

namespace moeckpt {

// A resuming worker found the folder completed, or being completed, by another worker or
// moeckpt finalize (a relaunched job's peer may complete it first): the caller waits for that to
// end and succeeds if the finished folder is this conversion's, else reports this error.
class FolderCompletedElsewhere : public Error {
 public:
  using Error::Error;
};

class WorkerFolder {
 public:
  WorkerFolder(std::filesystem::path dst, const std::vector<std::filesystem::path>& srcs,
               ExistingOutput existing, int64_t worker, int64_t workers);
  WorkerFolder(const WorkerFolder&) = delete;
  WorkerFolder& operator=(const WorkerFolder&) = delete;

  // Starts (or, resuming, continues) this worker's part of `layout`, whose shard s the worker
  // owner[s] writes. Worker 0 writes the side files (config.json, ...) and the job record (with
  // `index_text`, the index the finished folder gets). Returns, per shard, whether this worker must
  // not write it: another worker's, or finished by this worker before (size, header and checksum
  // verified).
  std::vector<bool> begin(const std::vector<ShardLayout>& layout, const std::vector<int64_t>& owner,
                          const std::string& fingerprint, const std::vector<SideFile>& side_files,
                          const std::optional<std::string>& index_text);
  size_t kept() const noexcept { return kept_; }
  // Records a shard renamed into place (thread-safe).
  void shard_committed(const ShardLayout& shard, const std::string& checksum);
  // Records why this worker stopped (finished shards stay, for --resume).
  void record_failure(const std::string& what) noexcept;

 private:
  std::filesystem::path dst_;
  int64_t worker_, workers_;
  ExistingOutput existing_;
  std::vector<FileId> inputs_;
  std::optional<io::DirectoryLock> lock_;
  WorkerManifest manifest_;
  std::optional<RecordAppender> manifest_file_;  // open while this worker's manifest is kept
  bool began_ = false;
  size_t kept_ = 0;
  std::mutex mutex_;
};

// What a worker that finished its own shards found (complete_as_worker).
struct WorkerCompletion {
  bool completed_here = false;  // this worker checked every shard and completed the folder
  bool complete = false;        // the folder is complete (by this worker or another)
  std::string pending;          // otherwise: why not yet, and how it gets completed
};

// After this worker's own shards (its lock let go of): any worker that finds every shard recorded
// completes the folder, under the finalize lock and with every check finalize_dir makes, so that
// whichever worker finishes last (a job array runs them one after another, in any order)
// completes it. Otherwise the folder is left to the workers still running or to finalize_dir;
// with `wait_for_running`, only after waiting (until `deadline`) while a worker that owns
// missing shards still holds its lock. A worker found stopped without its shards ends the wait
// and is named in `pending`, not thrown: this worker's own part is done. (distributed_finalize.cpp)
WorkerCompletion complete_as_worker(const std::filesystem::path& dst, bool wait_for_running,
                                    const std::atomic<bool>* cancel,
                                    std::chrono::steady_clock::time_point deadline);

}  // namespace moeckpt
