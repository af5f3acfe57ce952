#pragma once
// The files a distributed conversion keeps in its destination until it is finalized: the job
// record (worker 0: every shard's owner, size and header checksum, and the index to write) and
// one manifest per worker (its finished shards, or why it stopped), each next to the worker's
// own lock file. Nothing else is shared between workers.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "job/conversion_manifest.hpp"

namespace moeckpt {

inline constexpr const char* kJobFileName = ".moeckpt-job.json";
// Held by a finalize from before it checks that no worker runs until the folder is complete; a
// worker that has taken its own lock refuses to run while it is held (one descriptor for
// finalize, whatever the worker count).
inline constexpr const char* kFinalizeLockName = ".moeckpt-finalize.lock";
// Which launch owns the folder: created once, atomically (link of a complete file), by the first
// worker of the first launch; every later worker must match it before it writes anything.
inline constexpr const char* kLaunchFileName = ".moeckpt-launch.json";

// Claims `dir` for the launch `fingerprint` (`workers` workers), or finds it claimed by that same
// launch; throws, naming the launch that holds it, when another launch (another worker count,
// other inputs or options) claimed it first. Two launches racing into one folder: exactly one wins.
void claim_for_launch(const std::filesystem::path& dir, const std::string& fingerprint,
                      int64_t workers);

// ".moeckpt-worker-00002-of-00004.json" / ".lock".
std::string worker_manifest_name(int64_t worker, int64_t workers);
std::string worker_lock_name(int64_t worker, int64_t workers);
// (worker, workers) of a worker manifest's file name; nullopt for any other name.
std::optional<std::pair<int64_t, int64_t>> parse_worker_manifest_name(const std::string& name);
// Every worker manifest in `dir`, as (worker, workers).
std::vector<std::pair<int64_t, int64_t>> worker_manifests_in(const std::filesystem::path& dir);

struct JobRecord {
  struct Shard {
    std::string name;
    uint64_t size = 0;
    uint64_t header_bytes = 0;
    std::string header_checksum;
    int64_t worker = 0;
  };
  std::string fingerprint;
  int64_t workers = 1;
  std::vector<Shard> shards;
  std::optional<std::string> index;  // the index file's text; none: one shard, no index
  // nullopt when the folder has none; throws when it is malformed.
  static std::optional<JobRecord> load(const std::filesystem::path& dir);
  // Atomically, through a temporary named after `worker` (several workers may write it at once).
  void save(const std::filesystem::path& dir, int64_t worker) const;
};

struct WorkerManifest {
  std::string fingerprint;
  int64_t worker = 0;
  int64_t workers = 1;
  std::map<std::string, ConversionManifest::Shard> shards;  // finished, by file name
  std::optional<std::string> failure;                       // why the worker stopped
  // Record lines (adapter/record_lines.hpp): a header, a line per finished shard, a failure
  // line; a last line cut short (a crash, or an append in progress) is ignored. Reads the
  // whole-file format of earlier versions too.
  static std::optional<WorkerManifest> load(const std::filesystem::path& dir, int64_t worker,
                                            int64_t workers);
  // Writes the whole manifest atomically and returns it open for the appends below.
  RecordAppender save(const std::filesystem::path& dir) const;
  static void append_shard(RecordAppender& file, const std::string& name,
                           const ConversionManifest::Shard& shard);
  static void append_failure(RecordAppender& file, const std::string& what);
};

}  // namespace moeckpt
