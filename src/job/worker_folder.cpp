#include "job/worker_folder.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <set>

#include "io/checksum.hpp"
#include "io/file.hpp"
#include "moeckpt/distributed.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"

namespace moeckpt {
namespace fs = std::filesystem;

namespace {
// How long taking our own lock may wait for a peer that probes it (a worker checking liveness).
constexpr std::chrono::milliseconds kLockPatience(2000);
}  // namespace

WorkerFolder::WorkerFolder(fs::path dst, const std::vector<fs::path>& srcs, ExistingOutput existing,
                           int64_t worker, int64_t workers)
    : dst_(std::move(dst)), worker_(worker), workers_(workers), existing_(existing) {
  if (workers < 1 || worker < 0 || worker >= workers)
    fail(ErrorKind::kInvalidArgument, "", "",
         fmt::format("worker {} of {} is not a worker of the run", worker, workers),
         "a worker index in [0, workers)");
  if (existing == ExistingOutput::kOverwrite)
    fail(ErrorKind::kInvalidArgument, dst_.string(), "",
         option_ref(CallerOption::kOverwrite) +
             " cannot be used by a distributed conversion (a worker cannot know that no other "
             "worker has begun writing)",
         "an empty destination (remove the old checkpoint first), or " +
             option_ref(CallerOption::kResume));
  auto d = take_destination(dst_, srcs);
  inputs_ = std::move(d.inputs);
  lock_.emplace(dst_, worker_lock_name(worker, workers), kLockPatience);
  // A finalize takes its lock before it checks that no worker holds its own: with ours taken, a
  // finalize under way means this worker must not run (it could remove a shard being indexed).
  const bool resume = existing == ExistingOutput::kResume;
  if (io::DirectoryLock::is_held(dst_ / kFinalizeLockName)) {
    ErrorInfo info{ErrorKind::kDestination, dst_.string(), "",
                   "another worker or moeckpt finalize is completing this folder",
                   "the folder once that is done (a finished folder needs nothing more)"};
    if (resume) throw FolderCompletedElsewhere(std::move(info));
    throw Error(std::move(info));
  }
  if (io::DirectoryLock::is_held(dst_ / io::kLockFileName))
    fail(ErrorKind::kDestination, dst_.string(), "",
         "a single-process moeckpt conversion is writing into this folder",
         "one conversion per destination");
  if (present(dst_ / kManifestFileName))
    fail(ErrorKind::kDestination, dst_.string(), "",
         "destination holds an unfinished single-process conversion",
         "the same command without " + option_ref(CallerOption::kDistributed) + " and with " +
             option_ref(CallerOption::kResume) + ", or an empty folder");
  for (const auto& [k, n] : worker_manifests_in(dst_))
    if (n != workers)
      fail(ErrorKind::kDestination, dst_.string(), "",
           fmt::format("destination holds the records of a distributed conversion with {} "
                       "workers ({}); this launch has {} (a resume re-plans nothing: the shard "
                       "assignment depends on the worker count)",
                       n, worker_manifest_name(k, n), workers),
           fmt::format("the same launch with {} workers and {}, or moeckpt finalize, or an "
                       "empty folder",
                       n, option_ref(CallerOption::kResume)));
  const bool index = present(dst_ / kIndexFileName);
  if (index && !has_distributed_records(dst_)) {
    if (resume)
      throw FolderCompletedElsewhere({ErrorKind::kDestination, dst_.string(), "",
                                      "destination holds a finished checkpoint: nothing to resume",
                                      "an empty folder"});
    fail(ErrorKind::kDestination, dst_.string(), "", "destination already holds a checkpoint",
         "an empty folder");
  }
  if (index)
    fail(ErrorKind::kDestination, dst_.string(), "",
         "destination holds a written index and the records of its workers: the conversion "
         "finished and was not cleaned up",
         "moeckpt finalize " + dst_.string());
  if (existing == ExistingOutput::kRefuse && present(dst_ / worker_manifest_name(worker, workers)))
    fail(ErrorKind::kDestination, dst_.string(), "",
         fmt::format("destination holds an unfinished distributed conversion (worker {} of {} "
                     "already wrote here)",
                     worker, workers),
         option_ref(CallerOption::kResume) + " to continue it, or an empty folder");
}

std::vector<bool> WorkerFolder::begin(const std::vector<ShardLayout>& layout,
                                      const std::vector<int64_t>& owner,
                                      const std::string& fingerprint,
                                      const std::vector<SideFile>& side_files,
                                      const std::optional<std::string>& index_text) {
  // Another launch's records: other inputs or options.
  auto other_launch = [&](const std::string& what) {
    fail(ErrorKind::kDestination, dst_.string(), "",
         what + " belongs to another conversion (other inputs or options) than this launch",
         "one launch per destination: the same command with " + option_ref(CallerOption::kResume) +
             ", or an empty folder");
  };
  // Before anything is written: the first launch into the folder owns it.
  claim_for_launch(dst_, fingerprint, workers_);
  if (auto job = JobRecord::load(dst_); job && job->fingerprint != fingerprint)
    other_launch(std::string(kJobFileName));
  std::optional<WorkerManifest> previous;
  for (const auto& [k, n] : worker_manifests_in(dst_)) {
    auto m = WorkerManifest::load(dst_, k, n);
    if (m && m->fingerprint != fingerprint) {
      if (k == worker_ && existing_ == ExistingOutput::kResume)
        fail(ErrorKind::kDestination, dst_.string(), "",
             "the unfinished conversion here was started from other inputs or with other options",
             "the same command as the interrupted run");
      other_launch(worker_manifest_name(k, n));
    }
    if (k == worker_) previous = std::move(m);
  }
  std::set<std::string> own_names;
  for (size_t s = 0; s < layout.size(); ++s)
    if (owner[s] == worker_) own_names.insert(layout[s].name);
  // Temporaries of our own files from a dead run (nobody else writes these names).
  const auto manifest_name = worker_manifest_name(worker_, workers_);
  for (const auto& e : fs::directory_iterator(dst_)) {
    const auto final_name = io::final_name_of_temporary(e.path().filename().string());
    if (!final_name) continue;
    const bool ours =
        own_names.count(*final_name) || *final_name == manifest_name ||
        (worker_ == 0 && (*final_name == kIndexFileName ||
                          std::any_of(side_files.begin(), side_files.end(),
                                      [&](const SideFile& f) { return f.name == *final_name; })));
    if (ours) remove_file(e.path());
  }
  // Job-record temporaries under our own worker tag (the lock keeps this worker unique).
  const auto job_tmp = "." + std::string(kJobFileName) + ".tmp." + std::to_string(worker_) + ".";
  for (const auto& e : fs::directory_iterator(dst_))
    if (e.path().filename().string().starts_with(job_tmp) &&
        io::final_name_of_temporary(e.path().filename().string()) == kJobFileName)
      remove_file(e.path());
  const bool resume = existing_ == ExistingOutput::kResume && previous.has_value();
  for (const auto& name : own_names) {
    const auto path = dst_ / name;
    const bool recorded = resume && previous->shards.count(name);
    if (present(path) && !recorded && !removable_shard(path, inputs_))
      fail(ErrorKind::kDestination, path.string(), "",
           "exists and is not a safetensors shard this conversion may replace (or is one of its "
           "inputs)",
           "a destination without other files under the new checkpoint's shard names");
    if (present(path) && !resume)
      fail(ErrorKind::kDestination, path.string(), "",
           "exists in a destination without a checkpoint index", "an empty folder");
  }
  std::vector<bool> skip(layout.size(), true);
  manifest_ = WorkerManifest{fingerprint, worker_, workers_, {}, std::nullopt};
  for (size_t s = 0; s < layout.size(); ++s) {
    if (owner[s] != worker_) continue;
    const auto path = dst_ / layout[s].name;
    const auto it = resume ? previous->shards.find(layout[s].name)
                           : std::map<std::string, ConversionManifest::Shard>::const_iterator{};
    if (resume && it != previous->shards.end() && it->second.size == layout[s].file_size &&
        starts_with_bytes(path, layout[s].header, layout[s].file_size) &&
        io::file_checksum(path) == it->second.checksum) {
      manifest_.shards[layout[s].name] = it->second;
      ++kept_;
    } else {
      if (present(path)) remove_file(path);  // unrecorded or damaged: redone
      skip[s] = false;
    }
  }
  // Worker 0 writes the job record at every start (its time tells this launch's records from
  // older ones); another worker with shards writes it where it is missing on a fresh launch, so
  // that finalize can name the missing shards even if worker 0 never ran. (On a resume a missing
  // record means the folder was finalized meanwhile.) A worker without shards writes nothing.
  const bool fresh = !previous.has_value();
  if (worker_ == 0 || (!own_names.empty() && fresh && !present(dst_ / kJobFileName))) {
    if (worker_ == 0)
      for (const auto& f : side_files) io::write_file_atomically(dst_ / f.name, f.content);
    JobRecord job{fingerprint, workers_, {}, index_text};
    for (size_t s = 0; s < layout.size(); ++s)
      job.shards.push_back(
          {layout[s].name, layout[s].file_size, layout[s].header.size(),
           io::text_checksum(
               {reinterpret_cast<const char*>(layout[s].header.data()), layout[s].header.size()}),
           owner[s]});
    job.save(dst_, worker_);
  }
  if (own_names.empty()) return skip;
  began_ = true;
  manifest_file_.emplace(manifest_.save(dst_));
  // Every shard of ours was recorded before and another worker (or finalize) completed the
  // folder before this manifest was written: it would be left behind, so it goes again.
  if (kept_ == own_names.size() &&
      (present(dst_ / kIndexFileName) || !present(dst_ / kJobFileName))) {
    manifest_file_.reset();
    remove_file(dst_ / worker_manifest_name(worker_, workers_));
    began_ = false;
  }
  return skip;
}

void WorkerFolder::shard_committed(const ShardLayout& shard, const std::string& sum) {
  std::lock_guard lock(mutex_);
  auto& recorded = manifest_.shards[shard.name];
  recorded = {shard.file_size, sum};
  // One line appended and synced: the same cost for every shard (the whole manifest rewritten per
  // shard was quadratic in the worker's shard count).
  WorkerManifest::append_shard(*manifest_file_, shard.name, recorded);
}

void WorkerFolder::record_failure(const std::string& what) noexcept {
  if (!began_) return;
  try {
    std::lock_guard lock(mutex_);
    manifest_.failure = what;
    if (manifest_file_) WorkerManifest::append_failure(*manifest_file_, what);
  } catch (...) {
    // The worker stops either way; its lock going free tells the others it is gone.
  }
}

}  // namespace moeckpt
