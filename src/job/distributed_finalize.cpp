// Completing a destination that the workers of a distributed conversion wrote: the index comes
// only once every worker's shards are recorded and their sizes and headers check out.
#include <fmt/format.h>

#include <sys/stat.h>

#include <algorithm>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <thread>

#include "core/printable.hpp"
#include "core/strict_json.hpp"
#include "io/checksum.hpp"
#include "io/dir_lock.hpp"
#include "io/file.hpp"
#include "job/destination_files.hpp"
#include "job/distributed_records.hpp"
#include "job/worker_folder.hpp"
#include "moeckpt/distributed.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"

namespace moeckpt {
namespace fs = std::filesystem;

namespace {

constexpr std::chrono::milliseconds kPollInterval(200);
// How long taking the finalize lock waits for a worker that probes it at that moment.
constexpr std::chrono::milliseconds kFinalizeLockPatience(2000);

int64_t mtime_ns(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return -1;
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
}

std::string name_list(const std::vector<std::string>& names) {
  constexpr size_t kShown = 8;
  std::string out;
  for (size_t i = 0; i < names.size() && i < kShown; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > kShown) out += fmt::format(" and {} more", names.size() - kShown);
  return out;
}

// The shards the job record gives worker k.
std::vector<std::string> shards_of(const JobRecord& job, int64_t k) {
  std::vector<std::string> out;
  for (const auto& sh : job.shards)
    if (sh.worker == k) out.push_back(sh.name);
  return out;
}

// What the folder's records say now.
struct Survey {
  JobRecord job;
  std::vector<std::optional<WorkerManifest>> manifests;  // by worker
  std::vector<std::string> missing;                      // shards no manifest records
  std::vector<int64_t> unfinished_workers;               // owners of missing shards
};

Survey survey(const fs::path& dst) {
  auto job = JobRecord::load(dst);
  if (!job)
    fail(ErrorKind::kDestination, dst.string(), "",
         std::string("has no distributed-conversion job record (") + kJobFileName +
             "): no worker with shards started here, or the folder was finalized already",
         "a destination written by a distributed conversion");
  Survey s{*job, {}, {}, {}};
  for (const auto& [k, n] : worker_manifests_in(dst))
    if (n != job->workers)
      fail(ErrorKind::kDestination, dst.string(), "",
           fmt::format("holds {} of another launch ({} workers; the job record says {})",
                       worker_manifest_name(k, n), n, job->workers),
           "the records of one launch");
  for (int64_t k = 0; k < job->workers; ++k) {
    auto m = WorkerManifest::load(dst, k, job->workers);
    if (m && m->fingerprint != job->fingerprint)
      fail(ErrorKind::kDestination, dst.string(), "",
           fmt::format("{} belongs to another conversion than the job record",
                       worker_manifest_name(k, job->workers)),
           "the records of one launch");
    s.manifests.push_back(std::move(m));
  }
  for (const auto& sh : job->shards) {
    const auto& m = s.manifests[static_cast<size_t>(sh.worker)];
    const auto it = m ? m->shards.find(sh.name) : decltype(m->shards.end()){};
    if (!m || it == m->shards.end() || it->second.size != sh.size) {
      s.missing.push_back(sh.name);
      if (std::find(s.unfinished_workers.begin(), s.unfinished_workers.end(), sh.worker) ==
          s.unfinished_workers.end())
        s.unfinished_workers.push_back(sh.worker);
    }
  }
  return s;
}

// The whole file against the checksum its worker recorded when it committed the shard: a shard
// changed after it was recorded is never indexed.
void check_recorded_checksum(const fs::path& dst, const JobRecord::Shard& sh,
                             const WorkerManifest& m) {
  const auto path = dst / sh.name;
  const auto it = m.shards.find(sh.name);
  if (it == m.shards.end() || it->second.size != sh.size)
    fail(ErrorKind::kDestination, path.string(), "",
         fmt::format("is not recorded by worker {} with the plan's size", sh.worker),
         "the shard its worker recorded");
  if (io::file_checksum(path) != it->second.checksum)
    fail(ErrorKind::kDestination, path.string(), "",
         fmt::format("its bytes differ from what worker {} recorded (XXH3-128 {}): changed after "
                     "it was written",
                     sh.worker, it->second.checksum),
         "the shard as its worker wrote it (relaunch with " + option_ref(CallerOption::kResume) +
             " to rewrite it)");
}

// The index the job record holds names exactly the recorded shards, and each shard holds exactly
// the tensors the index gives it: an index never points at a file that is not there, or at a
// tensor its shard lacks.
void check_index_against_shards(const fs::path& dst, const JobRecord& job) {
  const auto index_path = dst / kIndexFileName;
  std::map<std::string, std::set<std::string>> by_file;
  if (job.index) {
    nlohmann::json j;
    try {
      j = parse_strict_json(*job.index, (dst / kJobFileName).string(), "index");
    } catch (const nlohmann::json::exception& e) {
      fail(ErrorKind::kDestination, (dst / kJobFileName).string(), "",
           std::string("the index it holds is not JSON: ") + e.what(),
           "the index worker 0 planned");
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      fail(ErrorKind::kDestination, (dst / kJobFileName).string(), "",
           "the index it holds has no weight_map object", "the index worker 0 planned");
    for (const auto& [tensor, file] : j["weight_map"].items()) {
      if (!file.is_string())
        fail(ErrorKind::kDestination, index_path.string(), printable(tensor),
             "the planned index maps it to a non-string", "a shard file name");
      by_file[file.get<std::string>()].insert(tensor);
    }
  } else {
    if (job.shards.size() != 1 || job.shards.front().name != kSingleFileName)
      fail(ErrorKind::kDestination, (dst / kJobFileName).string(), "",
           "it plans no index, but not exactly one shard named model.safetensors",
           "an index for a sharded output");
  }
  std::set<std::string> recorded;
  for (const auto& sh : job.shards) recorded.insert(sh.name);
  for (const auto& [file, tensors] : by_file)
    if (!recorded.count(file))
      fail(ErrorKind::kDestination, index_path.string(), printable(*tensors.begin()),
           "the planned index names shard " + printable(file) + ", which no worker's record lists",
           "an index over the recorded shards only");
  for (const auto& sh : job.shards) {
    const auto f = SafetensorsFile::open(dst / sh.name);
    std::set<std::string> held;
    for (const auto& t : f.header().tensors()) held.insert(t.name);
    if (!job.index) continue;
    const auto it = by_file.find(sh.name);
    const std::set<std::string> none;
    const auto& planned = it == by_file.end() ? none : it->second;
    if (held != planned) {
      std::string which;
      for (const auto& t : planned)
        if (!held.count(t)) which = "the index gives it " + printable(t) + ", which it lacks";
      for (const auto& t : held)
        if (which.empty() && !planned.count(t))
          which = "it holds " + printable(t) + ", which the index puts elsewhere or nowhere";
      fail(ErrorKind::kDestination, (dst / sh.name).string(), "",
           "its tensors differ from the planned index: " + which,
           "the tensors the index assigns to this shard");
    }
  }
}

void check_shard(const fs::path& dst, const JobRecord::Shard& sh) {
  const auto path = dst / sh.name;
  std::error_code ec;
  if (!fs::is_regular_file(fs::symlink_status(path, ec)))
    fail(ErrorKind::kDestination, path.string(), "",
         "is recorded as finished by worker " + std::to_string(sh.worker) +
             " but is not a regular file",
         "the shard the worker wrote");
  const auto size = fs::file_size(path, ec);
  if (ec || size != sh.size)
    fail(ErrorKind::kDestination, path.string(), "",
         fmt::format("has {} bytes; the plan has {}", ec ? 0 : size, sh.size),
         "the shard as the plan lays it out");
  std::vector<uint8_t> header(sh.header_bytes);
  io::File::open_read(path).pread_exact(0, header);
  if (io::text_checksum({reinterpret_cast<const char*>(header.data()), header.size()}) !=
      sh.header_checksum)
    fail(ErrorKind::kDestination, path.string(), "",
         "its header differs from the plan's (another conversion's shard under this name)",
         "the shard as the plan lays it out");
}

// Completion under the finalize lock, once a survey found every shard recorded: the report when
// this call completed the folder; otherwise a worker still holding its lock, or another finalize
// holding the finalize lock (or neither: the records changed meanwhile; look again).
struct Attempt {
  std::optional<FinalizeReport> done;
  std::optional<int64_t> busy;
  bool other_finalize = false;
  bool completed_elsewhere = false;  // another worker or finalize did it before this one's lock
};

Attempt try_complete(const fs::path& dst, int64_t workers) {
  Attempt a;
  // No worker may run while the folder is completed (a resumed one still checking its kept shards
  // could remove one). The finalize lock is held until the folder is complete: a worker that takes
  // its own lock after this refuses to run (it probes this one), and one that took it before
  // still holds it below. One descriptor, whatever the worker count (a lock held per worker ran
  // out of descriptors near 1000 workers and read as "still running").
  std::optional<io::DirectoryLock> finalizing;
  try {
    finalizing.emplace(dst, kFinalizeLockName, kFinalizeLockPatience);
  } catch (const io::LockBusy&) {
    a.other_finalize = true;
    return a;
  }
  if (present(dst / kIndexFileName) || !present(dst / kJobFileName)) {
    a.completed_elsewhere = true;
    return a;
  }
  // A lock file nobody holds is a dead worker's (killed after it recorded its last shard): it
  // goes, or it would stay in the finished checkpoint.
  for (int64_t k = 0; k < workers; ++k)
    if (!io::DirectoryLock::remove_if_free(dst / worker_lock_name(k, workers))) {
      a.busy = k;
      return a;
    }
  const Survey s = survey(dst);  // again, under the finalize lock
  if (!s.missing.empty()) return a;
  uint64_t bytes = 0;
  for (const auto& sh : s.job.shards) {
    check_shard(dst, sh);
    check_recorded_checksum(dst, sh, *s.manifests[static_cast<size_t>(sh.worker)]);
    bytes += sh.size;
  }
  check_index_against_shards(dst, s.job);
  io::sync_directory(dst);
  if (s.job.index) io::write_file_atomically(dst / kIndexFileName, *s.job.index);
  // The index is in place: the records go, the job record last (a crash in between leaves a
  // folder that finalize completes again); the locks go with their release.
  for (int64_t k = 0; k < s.job.workers; ++k)
    remove_file(dst / worker_manifest_name(k, s.job.workers));
  // Temporaries of the job record that dead workers left (every worker is past it).
  for (const auto& e : fs::directory_iterator(dst))
    if (const auto n = io::final_name_of_temporary(e.path().filename().string());
        n == kJobFileName || n == kLaunchFileName)
      remove_file(e.path());
  if (present(dst / kLaunchFileName)) remove_file(dst / kLaunchFileName);
  io::sync_directory(dst);
  remove_file(dst / kJobFileName);
  io::sync_directory(dst);
  a.done = FinalizeReport{s.job.shards.size(), bytes, s.job.workers, s.job.index.has_value()};
  return a;
}

// A worker that stopped (failed, or died: its lock is free) without its shards, which it will not
// finish unless relaunched: what to say about it (nullopt: none found). Only records written at
// or after `launch_time` count (a worker of an earlier launch may be relaunched yet).
std::optional<std::string> stopped_worker(const fs::path& dst, const Survey& s,
                                          int64_t launch_time) {
  for (int64_t k : s.unfinished_workers) {
    const auto manifest = dst / worker_manifest_name(k, s.job.workers);
    const auto lock = dst / worker_lock_name(k, s.job.workers);
    if (!s.manifests[static_cast<size_t>(k)]) {
      // No manifest yet: a lock file is left behind only by a killed worker (an exiting one
      // removes it), and one taken after this launch's job record is this launch's. The survey
      // may predate the worker's manifest and even its exit: with the lock free, the lock file
      // must still be there and the manifest still missing.
      if (present(lock) && mtime_ns(lock) >= launch_time && !io::DirectoryLock::is_held(lock) &&
          present(lock) && !WorkerManifest::load(dst, k, s.job.workers))
        return fmt::format("worker {} of {} died before it recorded any of its {} shard(s): {}", k,
                           s.job.workers, shards_of(s.job, k).size(),
                           name_list(shards_of(s.job, k)));
      continue;
    }
    if (mtime_ns(manifest) < launch_time || io::DirectoryLock::is_held(lock)) continue;
    // The lock is free: read the manifest again, since a worker records its last shard before
    // it lets go of the lock (what the survey read may predate both).
    const auto m = WorkerManifest::load(dst, k, s.job.workers);
    if (!m) continue;
    std::vector<std::string> its;
    for (const auto& sh : s.job.shards)
      if (sh.worker == k && !m->shards.count(sh.name)) its.push_back(sh.name);
    if (its.empty()) continue;  // it finished meanwhile
    return fmt::format("worker {} of {} stopped ({}) before finishing {} shard(s): {}", k,
                       s.job.workers, m->failure ? *m->failure : "it died", its.size(),
                       name_list(its));
  }
  return std::nullopt;
}

// "N of M shard(s) are not finished: ... (worker(s) ... of W)".
std::string missing_text(const Survey& s) {
  std::vector<std::string> workers;
  for (int64_t k : s.unfinished_workers) workers.push_back(std::to_string(k));
  return fmt::format("{} of {} shard(s) are not finished: {} (worker(s) {} of {})",
                     s.missing.size(), s.job.shards.size(), name_list(s.missing),
                     name_list(workers), s.job.workers);
}

// The folder was completed (its index written, or its job record removed last) by another
// worker or a finalize.
bool completed_elsewhere(const fs::path& dst) {
  return present(dst / kIndexFileName) || !present(dst / kJobFileName);
}

}  // namespace

bool has_distributed_records(const fs::path& dst) {
  return present(dst / kJobFileName) || present(dst / kLaunchFileName) ||
         !worker_manifests_in(dst).empty();
}

FinalizeReport finalize_dir(const fs::path& dst, std::chrono::milliseconds wait,
                            const std::atomic<bool>* cancel,
                            std::optional<std::chrono::steady_clock::time_point> deadline_at) {
  std::error_code ec;
  if (!fs::is_directory(dst, ec))
    fail(ErrorKind::kDestination, dst.string(), "", "is not a folder",
         "the destination of a distributed conversion");
  const auto deadline = deadline_at ? *deadline_at : std::chrono::steady_clock::now() + wait;
  // Records older than the job record are a previous launch's (a relaunched worker rewrites its
  // manifest when it starts): only this launch's can tell that a worker stopped.
  const int64_t launch_time = mtime_ns(dst / kJobFileName);
  if (!present(dst / kJobFileName) && present(dst / kIndexFileName)) {
    // A finalize that wrote the index and removed the job record, with a worker's manifest
    // written afterwards: what is left is removed (records of workers not running only).
    const auto left = worker_manifests_in(dst);
    if (!left.empty()) {
      for (const auto& [k, n] : left)
        if (io::DirectoryLock::remove_if_free(dst / worker_lock_name(k, n)))
          remove_file(dst / worker_manifest_name(k, n));
      if (present(dst / kLaunchFileName)) remove_file(dst / kLaunchFileName);
      io::sync_directory(dst);
      return {0, 0, static_cast<int64_t>(left.size()), true};
    }
    if (present(dst / kLaunchFileName)) {
      remove_file(dst / kLaunchFileName);  // a finalize that died after the job record went
      io::sync_directory(dst);
      return {0, 0, 0, true};
    }
  }
  for (;;) {
    Survey s = survey(dst);
    std::optional<int64_t> busy;  // a worker still holding its lock with every shard recorded
    bool other_finalize = false;  // another finalize (a worker, or moeckpt finalize) holds it
    if (s.missing.empty()) {
      const Attempt a = try_complete(dst, s.job.workers);
      if (a.done) return *a.done;
      busy = a.busy;
      other_finalize = a.other_finalize;
    }
    if (const auto stopped = stopped_worker(dst, s, launch_time))
      fail(ErrorKind::kDestination, dst.string(), "", *stopped + "; no index was written",
           "that worker relaunched to resume its shards (the finished ones are kept): the last "
           "worker to finish completes the folder, or moeckpt finalize does");
    if (std::chrono::steady_clock::now() >= deadline && other_finalize)
      fail(ErrorKind::kDestination, dst.string(), "",
           "another moeckpt finalize (or a worker) is completing this folder; no index was "
           "written by this one",
           "that finalize to finish");
    if (std::chrono::steady_clock::now() >= deadline && busy)
      fail(ErrorKind::kDestination, dst.string(), "",
           fmt::format("every shard is recorded, but worker {} of {} is still running (it holds "
                       "its lock); no index was written",
                       *busy, s.job.workers),
           "moeckpt finalize once that worker has exited");
    if (std::chrono::steady_clock::now() >= deadline)
      fail(ErrorKind::kDestination, dst.string(), "", missing_text(s) + "; no index was written",
           wait.count() > 0
               ? fmt::format(
                     "every worker done within {} s, or the missing workers relaunched "
                     "with {}",
                     option_ref(CallerOption::kWait,
                                fmt::format("{:g}", static_cast<double>(wait.count()) / 1000.0)),
                     option_ref(CallerOption::kResume))
               : "every worker done (relaunch the missing ones with " +
                     option_ref(CallerOption::kResume) + "), then moeckpt finalize");
    if (cancel && cancel->load())
      throw Interrupted({ErrorKind::kInterrupted, dst.string(), "",
                         "interrupted while waiting for the other workers; no index was written",
                         "moeckpt finalize " + dst.string() + " once every worker is done"});
    std::this_thread::sleep_for(kPollInterval);
  }
}

WorkerCompletion complete_as_worker(const fs::path& dst, bool wait_for_running,
                                    const std::atomic<bool>* cancel,
                                    std::chrono::steady_clock::time_point deadline) {
  const std::string finalize_hint = "moeckpt finalize " + dst.string();
  for (;;) {
    if (completed_elsewhere(dst)) return {false, true, ""};
    std::optional<Survey> s;
    try {
      s = survey(dst);
    } catch (const Error&) {
      if (completed_elsewhere(dst)) return {false, true, ""};  // finalized as it was read
      throw;
    }
    const bool past = std::chrono::steady_clock::now() >= deadline;
    if (s->missing.empty()) {
      const Attempt a = try_complete(dst, s->job.workers);
      if (a.done) return {true, true, ""};
      if (a.completed_elsewhere) return {false, true, ""};
      if (a.busy && (!wait_for_running || past))
        // It holds its lock, so it looks at the folder after it lets go of it, and completes it.
        return {false, false,
                fmt::format("every shard is recorded; worker {} of {}, still running, completes "
                            "the folder as it exits (or {} afterwards)",
                            *a.busy, s->job.workers, finalize_hint)};
      // Another finalize holds the lock: it completes the folder, or it saw a worker (maybe this
      // one, before it exited) still running and lets go at once; looked at again until one of
      // them has completed it, so that a completion is never left to nobody.
    } else {
      // The survey read a manifest that a finalize removed after it wrote the index.
      if (completed_elsewhere(dst)) return {false, true, ""};
      // Any launch's stopped worker counts: it will not finish unless relaunched (a relaunched
      // worker then finishes last and completes the folder).
      const auto stopped = stopped_worker(dst, *s, std::numeric_limits<int64_t>::min());
      bool running = false;
      for (int64_t k : s->unfinished_workers)
        running = running || io::DirectoryLock::is_held(dst / worker_lock_name(k, s->job.workers));
      if (stopped || !running || !wait_for_running || past) {
        std::string text = missing_text(*s);
        if (stopped) text += "; " + *stopped + " (relaunch it to resume them)";
        return {false, false,
                text + "; the last worker to finish completes the folder, or " + finalize_hint +
                    " once every worker is done"};
      }
    }
    if (cancel && cancel->load())
      throw Interrupted({ErrorKind::kInterrupted, dst.string(), "",
                         "interrupted while waiting for the other workers; its own shards are "
                         "done and kept, no index was written",
                         finalize_hint + " once every worker is done"});
    std::this_thread::sleep_for(kPollInterval);
  }
}

}  // namespace moeckpt
