#pragma once
// The destination of a folder conversion: refuses unsafe destinations, holds the folder's lock,
// and keeps the conversion manifest that lets a killed conversion be resumed. On failure it
// removes every file the conversion put under a final name.
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "io/dir_lock.hpp"
#include "job/conversion_manifest.hpp"
#include "job/destination_files.hpp"
#include "moeckpt/job.hpp"
#include "moeckpt/safetensors_writer.hpp"

namespace moeckpt {

// Overwriting never deletes the old checkpoint before the new one is complete: the new one is
// written into a staging folder inside the destination (kStagingDirName) and swapped in at
// finish(). Only files that are verifiably safetensors shards of the old checkpoint (named by its
// index or by the shard name pattern, regular files, valid headers, none of the inputs by device
// and inode) are ever removed or replaced.
inline constexpr const char* kStagingDirName = ".moeckpt-staging";

class OutputFolder {
 public:
  // Checks the destination against the sources (by device and inode, so another path to the same
  // folder is caught), creates it, takes its lock, removes temporary files of dead conversions
  // and applies `existing` to a checkpoint or unfinished conversion already there.
  OutputFolder(std::filesystem::path dst, const std::vector<std::filesystem::path>& srcs,
               ExistingOutput existing);
  OutputFolder(const OutputFolder&) = delete;
  OutputFolder& operator=(const OutputFolder&) = delete;
  ~OutputFolder();  // releases the lock; an abandoned folder this conversion created goes too

  const std::filesystem::path& path() const noexcept { return dst_; }
  // Where the shards, config.json and index are written: the destination, or its staging folder
  // when an existing checkpoint is overwritten.
  const std::filesystem::path& write_dir() const noexcept { return work_; }

  // Starts (or, when resuming the same fingerprint, continues) the conversion of `layout`.
  // Returns the shards already complete on disk: size, header bytes and checksum verified.
  std::vector<bool> begin(const std::vector<ShardLayout>& layout, const std::string& fingerprint,
                          const std::vector<SideFile>& side_files);
  // Records a shard renamed into place (thread-safe).
  void shard_committed(const ShardLayout& shard, const std::string& checksum);
  // The writer committed everything (index included) into write_dir(): an overwrite swaps the new
  // checkpoint in (the old index first, the new index last); the manifest goes.
  void finish();
  // Removes what this conversion (and the unfinished one it resumed) put under final names.
  void abandon() noexcept;

 private:
  void swap_in();

  std::filesystem::path dst_;
  std::filesystem::path work_;
  bool staging_ = false;
  std::vector<FileId> inputs_;           // every file in the source folders
  std::vector<std::string> old_shards_;  // removable shards of the checkpoint being replaced
  std::optional<io::DirectoryLock> lock_;
  bool resume_ = false;
  bool began_ = false;
  bool created_ = false;
  bool abandoned_ = false;
  std::vector<std::string> side_names_;      // written by begin()
  std::vector<std::string> side_was_there_;  // of those, the ones the destination had before
  std::vector<ShardLayout> layout_;
  ConversionManifest manifest_;
  std::optional<RecordAppender> manifest_file_;  // open from begin() until finish or abandon
  std::mutex mutex_;
};

}  // namespace moeckpt
