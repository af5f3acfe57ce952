#include "adapter/output_folder.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <regex>

#include "core/strict_json.hpp"
#include "io/checksum.hpp"
#include "io/file.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"

namespace moeckpt {
namespace fs = std::filesystem;

namespace {

constexpr const char* kConfigFileName = "config.json";

bool present(const fs::path& p) {
  std::error_code ec;
  return fs::symlink_status(p, ec).type() != fs::file_type::not_found;
}

void remove_file(const fs::path& p) {
  std::error_code ec;
  fs::remove(p, ec);
  if (ec) fail(p.string(), "", "cannot remove: " + ec.message());
}

bool is_shard_name(const std::string& name) {
  static const std::regex shard_name(R"(model(-\d+-of-\d+)?\.safetensors)");
  return std::regex_match(name, shard_name);
}

// The files of a checkpoint in `dir` that --overwrite replaces: the index first (so that, if we
// are killed midway, what is left no longer passes for a checkpoint), then its shards.
void remove_checkpoint(const fs::path& dir) {
  std::vector<std::string> shards;
  if (present(dir / kIndexFileName)) {
    try {
      auto j = parse_strict_json(io::read_small_file(dir / kIndexFileName, 256ull << 20),
                                 (dir / kIndexFileName).string());
      if (j.is_object() && j.contains("weight_map") && j["weight_map"].is_object())
        for (const auto& [name, file] : j["weight_map"].items())
          if (file.is_string() && is_plain_file_name(file.get<std::string>()))
            shards.push_back(file.get<std::string>());
    } catch (const Error&) {
      // A broken index still goes; its shards are caught by the name pattern below.
    }
    remove_file(dir / kIndexFileName);
  }
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (is_shard_name(name)) shards.push_back(name);
  }
  std::sort(shards.begin(), shards.end());
  shards.erase(std::unique(shards.begin(), shards.end()), shards.end());
  for (const auto& s : shards) remove_file(dir / s);
  remove_file(dir / kManifestFileName);
  io::sync_directory(dir);
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

bool starts_with_bytes(const fs::path& p, const std::vector<uint8_t>& header, uint64_t size) {
  std::error_code ec;
  if (!fs::is_regular_file(p, ec) || fs::file_size(p, ec) != size || ec) return false;
  io::File f = io::File::open_read(p);
  std::vector<uint8_t> got(header.size());
  f.pread_exact(0, got);
  return got == header;
}

}  // namespace

OutputFolder::OutputFolder(fs::path dst, const std::vector<fs::path>& srcs, ExistingOutput existing)
    : dst_(std::move(dst)) {
  std::error_code ec;
  for (const auto& s : srcs) {
    auto a = fs::weakly_canonical(s, ec), b = fs::weakly_canonical(dst_, ec);
    auto [ai, bi] = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
    if (ai == a.end())
      fail(dst_.string(), "", "destination is the source folder or inside it (" + s.string() + ")");
  }
  created_ = fs::create_directories(dst_, ec);
  if (ec) fail(dst_.string(), "", "cannot create directory: " + ec.message());
  if (!fs::is_directory(dst_, ec)) fail(dst_.string(), "", "destination is not a directory");
  lock_.emplace(dst_);
  remove_dead_temporaries(dst_);

  const bool unfinished = present(dst_ / kManifestFileName);
  const bool checkpoint = present(dst_ / kIndexFileName) || present(dst_ / kSingleFileName);
  switch (existing) {
    case ExistingOutput::kRefuse:
      if (unfinished)
        fail(dst_.string(), "", "destination holds an unfinished conversion",
             "--resume to continue it, or --overwrite to start over");
      if (checkpoint)
        fail(dst_.string(), "", "destination already holds a checkpoint",
             "an empty folder, or --overwrite to replace it");
      break;
    case ExistingOutput::kOverwrite:
      remove_checkpoint(dst_);
      break;
    case ExistingOutput::kResume:
      if (!unfinished && checkpoint)
        fail(dst_.string(), "", "destination holds a finished checkpoint: nothing to resume",
             "--overwrite to replace it");
      resume_ = unfinished;  // nothing unfinished: a fresh start
      break;
  }
  config_was_there_ = !resume_ && present(dst_ / kConfigFileName);
}

std::vector<bool> OutputFolder::begin(const std::vector<ShardLayout>& layout,
                                      const std::string& fingerprint,
                                      const std::string& config_text) {
  std::vector<bool> done(layout.size(), false);
  ConversionManifest previous;
  if (resume_) {
    previous = *ConversionManifest::load(dst_);
    if (previous.fingerprint != fingerprint)
      fail(dst_.string(), "",
           "the unfinished conversion here was started from other inputs or with other options",
           "the same command as the interrupted run, or --overwrite to start over");
  }
  // From here on a failure owns the destination's final names (a refused resume keeps them).
  layout_ = layout;
  began_ = true;
  manifest_ = ConversionManifest{fingerprint, {}};
  for (size_t s = 0; s < layout.size(); ++s) {
    const auto path = dst_ / layout[s].name;
    auto it = previous.shards.find(layout[s].name);
    if (resume_ && it != previous.shards.end() && it->second.size == layout[s].file_size &&
        starts_with_bytes(path, layout[s].header, layout[s].file_size) &&
        io::file_checksum(path) == it->second.checksum) {
      done[s] = true;
      manifest_.shards[layout[s].name] = it->second;
    } else if (present(path)) {
      remove_file(path);  // unrecorded or damaged: redone
    }
  }
  // The manifest exists before any shard does, so every final-named shard is accounted for.
  manifest_.save(dst_);
  io::write_file_atomically(dst_ / kConfigFileName, config_text);
  return done;
}

void OutputFolder::shard_committed(const ShardLayout& shard) {
  const auto sum = io::own_file_checksum(dst_ / shard.name);
  std::lock_guard lock(mutex_);
  manifest_.shards[shard.name] = {shard.file_size, sum};
  manifest_.save(dst_);
}

void OutputFolder::finish() {
  remove_file(dst_ / kManifestFileName);
  io::sync_directory(dst_);
}

OutputFolder::~OutputFolder() {
  lock_.reset();
  std::error_code ec;
  if (abandoned_ && created_) fs::remove(dst_, ec);  // only if empty: user files stay
}

void OutputFolder::abandon() noexcept {
  if (!began_) return;
  abandoned_ = true;
  std::error_code ec;
  fs::remove(dst_ / kIndexFileName, ec);
  for (const auto& s : layout_) fs::remove(dst_ / s.name, ec);
  if (!config_was_there_) fs::remove(dst_ / kConfigFileName, ec);
  fs::remove(dst_ / kManifestFileName, ec);
}

}  // namespace moeckpt
