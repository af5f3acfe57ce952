#pragma once
// Writing safetensors: sizes and offsets are fixed before any data moves, tensor bytes arrive in
// pieces at given offsets (so a grouped expert tensor is never materialized), and files appear
// under their final names only once complete (temporary name, fsync, rename).
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "moeckpt/dtype.hpp"

namespace moeckpt {
namespace io {
class ChunkedChecksum;
}

namespace io {
class File;
}

struct TensorSpec {
  std::string name;
  Dtype dtype{};
  std::vector<uint64_t> shape;
  uint64_t nbytes() const;  // refuses overflow and sub-byte remainders
};

// The header bytes (8-byte length + JSON padded with spaces to a multiple of 8) for tensors laid
// out in the given order; also returns each tensor's offset within the data area.
std::vector<uint8_t> encode_header(const std::vector<TensorSpec>& tensors,
                                   const std::map<std::string, std::string>& metadata,
                                   std::vector<uint64_t>* data_offsets = nullptr);

class ShardWriter {
 public:
  // `sparse`: no blocks are reserved up front, so bytes never written stay holes.
  ShardWriter(std::filesystem::path final_path, std::vector<TensorSpec> tensors,
              std::map<std::string, std::string> metadata = {}, bool sparse = false);
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;
  ~ShardWriter();  // removes the temporary file unless committed

  const std::vector<TensorSpec>& tensors() const noexcept { return tensors_; }
  const std::filesystem::path& final_path() const noexcept { return final_path_; }
  uint64_t file_size() const noexcept { return file_size_; }
  // Thread-safe for disjoint pieces.
  void write(size_t tensor_index, uint64_t offset, std::span<const uint8_t> bytes);
  // Counts tensor i as written without writing it: a hole of zeros in a sparse file.
  void leave_hole(size_t tensor_index);
  // Checks every tensor was fully written, fsyncs and renames into place.
  void commit();
  // The file's content checksum (io/checksum.hpp), computed from the pieces as they were written;
  // set by commit().
  const std::string& checksum() const noexcept { return checksum_text_; }

 private:
  std::filesystem::path final_path_;
  std::filesystem::path temp_path_;
  std::vector<TensorSpec> tensors_;
  std::vector<uint64_t> file_offsets_;
  std::unique_ptr<std::atomic<uint64_t>[]> written_;
  // The temporary file, in io::OpenFiles (0 once committed): written through a descriptor that
  // may be closed between writes to stay within the open-file limit, and reopened by path (the
  // same inode, or refused).
  uint64_t file_key_ = 0;
  uint64_t file_size_ = 0;
  bool committed_ = false;
  static constexpr uint64_t kWritebackBytes = 64ull << 20;
  std::atomic<uint64_t> unflushed_{0};
  std::mutex write_mutex_;
  std::unique_ptr<io::ChunkedChecksum> checksum_;
  std::string checksum_text_;
  // Whether large pieces still go through O_DIRECT (cleared where the file system refuses it).
  std::atomic<bool> direct_{true};
};

struct ShardingOptions {
  uint64_t max_shard_bytes = 5'000'000'000;  // as Hugging Face's "5GB"
  // File names: one shard -> "model.safetensors"; several -> "model-0000i-of-0000N.safetensors"
  // plus "model.safetensors.index.json", written last.
  std::map<std::string, std::string> metadata;  // __metadata__ of every shard
  // Extra entries of the index's "metadata" (JSON text values); when set, the index is written
  // even for a single shard.
  std::map<std::string, std::string> index_metadata;
  // Shards already complete on disk (a resumed conversion): not rewritten; writes to them are
  // dropped. Indexed like the layout; empty means none.
  std::vector<bool> completed;
  // Called after each shard is renamed into place (from the thread whose write completed it),
  // with the shard's content checksum (io/checksum.hpp).
  std::function<void(size_t shard, const std::string& checksum)> on_shard_committed;
  // false: commit() writes no index (a distributed worker: the index comes once all are done).
  bool write_index = true;
  // Sparse shard files: nothing reserved up front, tensors left as holes read as zeros.
  bool sparse = false;
  // Set (one entry per tensor): tensor i goes to file model-{file_of[i]+1}-of-{file_count}
  // (files with no tensor are not written) and the index is written even for one file: a
  // layout given by the input (a sharded save's), not by max_shard_bytes.
  std::vector<size_t> file_of;
  size_t file_count = 0;
};

// Where each tensor goes: shard names, contents and exact header bytes, before any file exists.
struct ShardLayout {
  std::string name;
  std::vector<size_t> tensors;  // indices into the tensor list, in file order
  std::vector<uint8_t> header;  // the file's first bytes
  uint64_t file_size = 0;
};
std::vector<ShardLayout> layout_shards(const std::vector<TensorSpec>& tensors,
                                       const ShardingOptions& options);
// The index file's text for that layout; nullopt when there is none (one shard, no index
// metadata).
std::optional<std::string> index_text(const std::vector<ShardLayout>& layout,
                                      const std::vector<TensorSpec>& tensors,
                                      const std::map<std::string, std::string>& index_metadata);

// Assigns tensors (in the given order) to shards of at most max_shard_bytes (a larger tensor gets
// a shard of its own) and writes them. A shard is committed (fsync, rename) as soon as its last
// byte arrives, so a long conversion leaves finished shards behind if it is killed.
class CheckpointWriter {
 public:
  CheckpointWriter(std::filesystem::path dir, std::vector<TensorSpec> tensors,
                   ShardingOptions options = {});
  ~CheckpointWriter();

  size_t tensor_count() const noexcept { return locations_.size(); }
  size_t shard_count() const noexcept { return shards_.size(); }
  size_t shard_of(size_t tensor_index) const { return locations_.at(tensor_index).shard; }
  uint64_t shard_data_bytes(size_t shard) const;
  std::string shard_name(size_t shard) const;
  const TensorSpec& spec(size_t tensor_index) const;
  const std::vector<ShardLayout>& layout() const noexcept { return layout_; }
  void write(size_t tensor_index, uint64_t offset, std::span<const uint8_t> bytes);
  // A tensor of zeros that is never written (ShardingOptions::sparse).
  void leave_hole(size_t tensor_index);
  // Commits the shards not committed yet, then writes the index (when there are several shards).
  void commit();
  static std::string shard_file_name(size_t i, size_t n);

 private:
  struct Location {
    size_t shard;
    size_t index_in_shard;
  };
  void commit_shard(size_t shard);
  std::filesystem::path dir_;
  std::vector<ShardLayout> layout_;
  std::vector<Location> locations_;
  std::vector<TensorSpec> specs_;
  std::vector<std::unique_ptr<ShardWriter>> shards_;  // null for shards completed before
  std::unique_ptr<std::atomic<uint64_t>[]> remaining_;
  std::unique_ptr<std::atomic<bool>[]> committed_;
  std::function<void(size_t, const std::string&)> on_shard_committed_;
  std::map<std::string, std::string> index_metadata_;
  bool write_index_ = true;
};

}  // namespace moeckpt
