#pragma once
// The destination of a folder conversion: refuses unsafe destinations, holds the folder's lock,
// and keeps the conversion manifest that lets a killed conversion be resumed. On failure it
// removes every file the conversion put under a final name.
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "adapter/conversion_manifest.hpp"
#include "io/dir_lock.hpp"
#include "moeckpt/adapter.hpp"
#include "moeckpt/safetensors_writer.hpp"

namespace moeckpt {

class OutputFolder {
 public:
  // Checks the destination against the sources, creates it, takes its lock, removes temporary
  // files of dead conversions and applies `existing` to a checkpoint or unfinished conversion
  // already there.
  OutputFolder(std::filesystem::path dst, const std::vector<std::filesystem::path>& srcs,
               ExistingOutput existing);
  OutputFolder(const OutputFolder&) = delete;
  OutputFolder& operator=(const OutputFolder&) = delete;
  ~OutputFolder();  // releases the lock; an abandoned folder this conversion created goes too

  const std::filesystem::path& path() const noexcept { return dst_; }

  // Starts (or, when resuming the same fingerprint, continues) the conversion of `layout`.
  // Returns the shards already complete on disk: size, header bytes and checksum verified.
  std::vector<bool> begin(const std::vector<ShardLayout>& layout, const std::string& fingerprint,
                          const std::string& config_text);
  // Records a shard renamed into place (thread-safe).
  void shard_committed(const ShardLayout& shard);
  // The index is in place: the manifest goes.
  void finish();
  // Removes what this conversion (and the unfinished one it resumed) put under final names.
  void abandon() noexcept;

 private:
  std::filesystem::path dst_;
  std::optional<io::DirectoryLock> lock_;
  bool resume_ = false;
  bool began_ = false;
  bool created_ = false;
  bool abandoned_ = false;
  bool config_was_there_ = false;
  std::vector<ShardLayout> layout_;
  ConversionManifest manifest_;
  std::mutex mutex_;
};

}  // namespace moeckpt
