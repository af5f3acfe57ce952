#include "job/output_folder.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "core/strict_json.hpp"
#include "io/checksum.hpp"
#include "io/file.hpp"
#include "moeckpt/distributed.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"

namespace moeckpt {
namespace fs = std::filesystem;

namespace {

// The shard files a checkpoint in `dir` names: its index's weight_map (plain *.safetensors names)
// and the shard name pattern. Candidates only: removable_shard decides.
std::vector<std::string> checkpoint_shard_names(const fs::path& dir) {
  std::vector<std::string> shards;
  if (present(dir / kIndexFileName)) {
    try {
      auto j = parse_strict_json(io::read_small_file(dir / kIndexFileName, 256ull << 20),
                                 (dir / kIndexFileName).string());
      if (j.is_object() && j.contains("weight_map") && j["weight_map"].is_object())
        for (const auto& [name, file] : j["weight_map"].items())
          if (file.is_string() && is_plain_file_name(file.get<std::string>()) &&
              file.get<std::string>().ends_with(".safetensors"))
            shards.push_back(file.get<std::string>());
    } catch (const Error&) {
      // A broken index: its shards are found by the name pattern below.
    }
  }
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (is_shard_name(name)) shards.push_back(name);
  }
  std::sort(shards.begin(), shards.end());
  shards.erase(std::unique(shards.begin(), shards.end()), shards.end());
  return shards;
}

// Temporary files of conversions that died (we hold the lock, so no live one writes here).
void remove_dead_temporaries(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto final_name = io::final_name_of_temporary(e.path().filename().string());
    if (final_name && (is_shard_name(*final_name) || *final_name == kIndexFileName ||
                       *final_name == kConfigFileName || *final_name == kManifestFileName))
      remove_file(e.path());
  }
}

// A dead overwrite's staging folder: ours by name; a symlink put there is only unlinked.
void remove_staging(const fs::path& dir) {
  std::error_code ec;
  const auto st = fs::symlink_status(dir, ec);
  if (st.type() == fs::file_type::not_found) return;
  if (st.type() != fs::file_type::directory) {
    remove_file(dir);
    return;
  }
  fs::remove_all(dir, ec);
  if (ec)
    fail(ErrorKind::kDestination, dir.string(), "",
         "cannot remove a dead conversion's staging folder: " + ec.message());
}

}  // namespace

OutputFolder::OutputFolder(fs::path dst, const std::vector<fs::path>& srcs, ExistingOutput existing)
    : dst_(std::move(dst)), work_(dst_) {
  std::error_code ec;
  {
    auto d = take_destination(dst_, srcs);
    inputs_ = std::move(d.inputs);
    created_ = d.created;
  }
  lock_.emplace(dst_);
  if (has_distributed_records(dst_))
    fail(ErrorKind::kDestination, dst_.string(), "",
         "destination holds the records of an unfinished distributed conversion (its workers' "
         "manifests)",
         "the same launch with " + option_ref(CallerOption::kDistributed) + " and " +
             option_ref(CallerOption::kResume) + ", moeckpt finalize, or an empty folder");
  remove_dead_temporaries(dst_);

  const fs::path staging = dst_ / kStagingDirName;
  const bool staged_unfinished = present(staging / kManifestFileName);
  const bool unfinished = present(dst_ / kManifestFileName);
  const bool checkpoint = present(dst_ / kIndexFileName) || present(dst_ / kSingleFileName);
  switch (existing) {
    case ExistingOutput::kRefuse:
      if (unfinished || staged_unfinished)
        fail(ErrorKind::kDestination, dst_.string(), "",
             "destination holds an unfinished conversion",
             option_ref(CallerOption::kResume) + " to continue it, or " +
                 option_ref(CallerOption::kOverwrite) + " to start over");
      if (checkpoint)
        fail(ErrorKind::kDestination, dst_.string(), "", "destination already holds a checkpoint",
             "an empty folder, or " + option_ref(CallerOption::kOverwrite) + " to replace it");
      remove_staging(staging);
      break;
    case ExistingOutput::kOverwrite:
      remove_staging(staging);
      for (const auto& name : checkpoint_shard_names(dst_))
        if (removable_shard(dst_ / name, inputs_)) old_shards_.push_back(name);
      staging_ = checkpoint || unfinished || !old_shards_.empty();
      break;
    case ExistingOutput::kResume:
      if (staged_unfinished) {  // an overwrite that was interrupted before its swap
        staging_ = true;
        resume_ = true;
        for (const auto& name : checkpoint_shard_names(dst_))
          if (removable_shard(dst_ / name, inputs_)) old_shards_.push_back(name);
        break;
      }
      if (!unfinished && checkpoint)
        fail(ErrorKind::kDestination, dst_.string(), "",
             "destination holds a finished checkpoint: nothing to resume",
             option_ref(CallerOption::kOverwrite) + " to replace it");
      remove_staging(staging);
      resume_ = unfinished;  // nothing unfinished: a fresh start
      break;
  }
  if (staging_) {
    work_ = staging;
    fs::create_directories(work_, ec);
    if (ec || !fs::is_directory(fs::symlink_status(work_, ec)))
      fail(ErrorKind::kDestination, work_.string(), "",
           "cannot create the staging folder: " + ec.message());
    remove_dead_temporaries(work_);
  }
}

std::vector<bool> OutputFolder::begin(const std::vector<ShardLayout>& layout,
                                      const std::string& fingerprint,
                                      const std::vector<SideFile>& side_files) {
  std::vector<bool> done(layout.size(), false);
  ConversionManifest previous;
  if (resume_) {
    previous = *ConversionManifest::load(work_);
    if (previous.fingerprint != fingerprint)
      fail(ErrorKind::kDestination, dst_.string(), "",
           "the unfinished conversion here was started from other inputs or with other options",
           "the same command as the interrupted run, or " + option_ref(CallerOption::kOverwrite) +
               " to start over");
  }
  // Names the new checkpoint takes in the destination: whatever holds them now must be ours to
  // replace (a shard of the old checkpoint or of the unfinished conversion), never a user's file.
  for (const auto& sh : layout) {
    const auto path = dst_ / sh.name;
    const bool ours = resume_ && !staging_ && previous.shards.count(sh.name);
    if (present(path) && !ours && !removable_shard(path, inputs_))
      fail(ErrorKind::kDestination, path.string(), "",
           "exists and is not a safetensors shard this conversion may replace (or is one of its "
           "inputs)",
           "a destination without other files under the new checkpoint's shard names");
    if (present(path) && !staging_ && !resume_ && !ours)
      fail(ErrorKind::kDestination, path.string(), "",
           "exists in a destination without a checkpoint index",
           "an empty folder, or " + option_ref(CallerOption::kOverwrite) + " to replace it");
  }
  // From here on a failure owns the write folder's final names (a refused resume keeps them).
  layout_ = layout;
  began_ = true;
  manifest_ = ConversionManifest{fingerprint, {}};
  for (size_t s = 0; s < layout.size(); ++s) {
    const auto path = work_ / layout[s].name;
    auto it = previous.shards.find(layout[s].name);
    if (resume_ && it != previous.shards.end() && it->second.size == layout[s].file_size &&
        starts_with_bytes(path, layout[s].header, layout[s].file_size) &&
        io::file_checksum(path) == it->second.checksum) {
      done[s] = true;
      manifest_.shards[layout[s].name] = it->second;
    } else if (present(path) && (staging_ || resume_)) {
      remove_file(path);  // unrecorded or damaged (checked above when in the destination): redone
    }
  }
  // The manifest exists before any shard does, so every final-named shard is accounted for.
  manifest_file_.emplace(manifest_.save(work_));
  for (const auto& f : side_files) {
    if (!resume_ && !staging_ && present(dst_ / f.name)) side_was_there_.push_back(f.name);
    side_names_.push_back(f.name);
    // A dead run's temporary of this file (the lock keeps any live one away).
    for (const auto& e : fs::directory_iterator(work_))
      if (io::final_name_of_temporary(e.path().filename().string()) == f.name)
        remove_file(e.path());
    io::write_file_atomically(work_ / f.name, f.content);
  }
  return done;
}

void OutputFolder::shard_committed(const ShardLayout& shard, const std::string& sum) {
  std::lock_guard lock(mutex_);
  const auto& recorded = manifest_.shards[shard.name] = {shard.file_size, sum};
  // One line appended and synced: the same cost for every shard (rewriting the whole manifest
  // per shard was quadratic in the shard count: 20 s of CPU for 2384 shards).
  ConversionManifest::append_shard(*manifest_file_, shard.name, recorded);
}

// The new checkpoint is complete in the staging folder. The old one stops passing for a checkpoint
// first (its index, or its single file, goes), then the new files move in, the old shards the
// new layout does not reuse go, and the new index comes last.
void OutputFolder::swap_in() {
  const bool new_index = present(work_ / kIndexFileName);
  if (present(dst_ / kIndexFileName)) remove_file(dst_ / kIndexFileName);
  if (std::find(old_shards_.begin(), old_shards_.end(), kSingleFileName) != old_shards_.end())
    remove_file(dst_ / kSingleFileName);
  if (present(dst_ / kManifestFileName)) remove_file(dst_ / kManifestFileName);
  io::sync_directory(dst_);
  for (const auto& name : side_names_) rename_file(work_ / name, dst_ / name);
  std::vector<std::string> new_names;
  for (const auto& sh : layout_) {
    rename_file(work_ / sh.name, dst_ / sh.name);
    new_names.push_back(sh.name);
  }
  for (const auto& old : old_shards_)
    if (std::find(new_names.begin(), new_names.end(), old) == new_names.end() &&
        present(dst_ / old))
      remove_file(dst_ / old);
  io::sync_directory(dst_);
  if (new_index) rename_file(work_ / kIndexFileName, dst_ / kIndexFileName);
  io::sync_directory(dst_);
  remove_staging(work_);
}

void OutputFolder::finish() {
  manifest_file_.reset();
  if (staging_) {
    swap_in();
  } else {
    remove_file(dst_ / kManifestFileName);
  }
  io::sync_directory(dst_);
}

OutputFolder::~OutputFolder() {
  lock_.reset();
  std::error_code ec;
  if (abandoned_ && created_) fs::remove(dst_, ec);  // only if empty: user files stay
}

void OutputFolder::abandon() noexcept {
  manifest_file_.reset();
  if (staging_) {  // the old checkpoint was never touched
    abandoned_ = true;
    std::error_code ec;
    fs::remove_all(work_, ec);
    return;
  }
  if (!began_) return;
  abandoned_ = true;
  std::error_code ec;
  fs::remove(dst_ / kIndexFileName, ec);
  for (const auto& s : layout_) fs::remove(dst_ / s.name, ec);
  for (const auto& name : side_names_)
    if (std::find(side_was_there_.begin(), side_was_there_.end(), name) == side_was_there_.end())
      fs::remove(dst_ / name, ec);
  fs::remove(dst_ / kManifestFileName, ec);
}

}  // namespace moeckpt
