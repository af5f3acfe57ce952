#pragma once
// The safetensors format: a validated header, a file reader that never maps or loads the whole
// file, and a sharded checkpoint folder (index + shards, cross-checked). Knows nothing of MoE/FP8.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "moeckpt/dtype.hpp"
#include "moeckpt/sharded_save.hpp"

namespace moeckpt {

inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// The largest dimension a header may give a tensor (moeckpt's rule on top of the format's).
inline constexpr uint64_t kMaxDimension = uint64_t{1} << 48;

struct TensorInfo {
  std::string name;
  Dtype dtype{};
  std::vector<uint64_t> shape;
  uint64_t begin = 0;  // offsets relative to the data area (after the header)
  uint64_t end = 0;

  uint64_t nbytes() const noexcept { return end - begin; }
  uint64_t numel() const noexcept;  // valid once the header has been validated
};

// "[a, b, c]": how shapes appear in messages.
std::string format_shape(const std::vector<uint64_t>& shape);

// A parsed and validated header. Validation happens in the constructor path: a Header that exists
// is valid for a data area of `data_size()` bytes.
class Header {
 public:
  // `header_json` is the JSON text (bytes 8 .. 8+n of the file); `data_size` the bytes after it.
  static Header parse(std::span<const uint8_t> header_json, uint64_t data_size,
                      const std::string& file_for_errors);
  // Validates a whole in-memory safetensors file (the fuzzer's entry point).
  static Header parse_file_bytes(std::span<const uint8_t> file, const std::string& file_for_errors);
  // Reads the 8-byte length prefix and checks it against the file size; returns n.
  static uint64_t header_length(std::span<const uint8_t, 8> prefix, uint64_t file_size,
                                const std::string& file_for_errors);

  const std::vector<TensorInfo>& tensors() const noexcept { return tensors_; }  // by offset
  const TensorInfo* find(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  uint64_t json_length() const noexcept { return json_length_; }
  uint64_t data_offset() const noexcept { return 8 + json_length_; }
  uint64_t data_size() const noexcept { return data_size_; }

 private:
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
  uint64_t json_length_ = 0;
  uint64_t data_size_ = 0;
};

namespace io {
class File;
}

// One safetensors file opened read-only and validated at open time. Its descriptor is one of the
// process's bounded set (io::OpenFiles): with more files than that, it may be closed between
// reads and reopened, which is refused unless the file is still the one opened (device, inode,
// size, modification time).
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::filesystem::path& path);
  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::string& path() const noexcept { return path_; }
  const Header& header() const noexcept { return header_; }
  // Reads `out.size()` bytes of `tensor` starting at `offset` bytes into the tensor. Refuses with
  // an Error (never a signal: reads are pread, not mmap) when the file has shrunk or changed since
  // it was opened. A file replaced by rename keeps being read from the opened (old) inode while
  // its descriptor is open; reopened after being closed to stay within the open-file limit, it
  // must still be that inode, or the read is refused.
  void read(const TensorInfo& tensor, uint64_t offset, std::span<uint8_t> out) const;
  std::vector<uint8_t> read_all(const TensorInfo& tensor) const;
  // Tells the kernel that `bytes` bytes of `tensor` from `offset` are read soon (a hint: any
  // failure is left to the read).
  void prefetch(const TensorInfo& tensor, uint64_t offset, uint64_t bytes) const noexcept;
  // What the file was when opened: what a conversion's output depends on.
  uint64_t size_at_open() const noexcept { return size_at_open_; }
  int64_t mtime_ns_at_open() const noexcept { return mtime_ns_at_open_; }

 private:
  SafetensorsFile(std::string path, Header header, uint64_t size, int64_t mtime_ns);
  void check_unchanged(const io::File& file, const TensorInfo& tensor) const;
  uint64_t file_key_ = 0;  // in io::OpenFiles; 0 once moved from
  std::string path_;
  Header header_;
  // Size and modification time at open: a read that finds them changed refuses the data
  // (the file shrank or was rewritten in place while being read).
  uint64_t size_at_open_ = 0;
  int64_t mtime_ns_at_open_ = 0;
};

struct ShardedData;

// A checkpoint folder: `model.safetensors.index.json` + shards, or a single `model.safetensors`.
class Checkpoint {
 public:
  struct Entry {
    const TensorInfo* info;  // a sharded save's tensor: the whole tensor as read, [0, nbytes)
    size_t shard;            // a sharded save's tensor: the file of its first piece
    const ShardedTensor* pieces = nullptr;  // set for a sharded save's tensor
  };

  // A folder with an index, a model.safetensors, or a sharded save (moeckpt/sharded_save.hpp),
  // whose tensors read as their consolidation would write them; `cast` is the consolidation's
  // dtype cast (a sharded save only).
  static Checkpoint open(const std::filesystem::path& dir,
                         std::optional<Dtype> cast = std::nullopt);

  const std::filesystem::path& dir() const noexcept { return dir_; }
  bool has_index() const noexcept { return has_index_; }
  size_t shard_count() const noexcept { return shards_.size(); }
  const SafetensorsFile& shard(size_t i) const { return shards_[i]; }
  const Entry* find(std::string_view name) const;
  // Every tensor name, sorted.
  const std::vector<std::string>& names() const noexcept { return names_; }
  uint64_t total_bytes() const noexcept { return total_bytes_; }
  // The index's "metadata" object, each value as its JSON text (2, "2" and true stay distinct);
  // empty without an index.
  const std::map<std::string, std::string>& index_metadata() const noexcept {
    return index_metadata_;
  }
  void read(const Entry& entry, uint64_t offset, std::span<uint8_t> out) const;
  std::vector<uint8_t> read_all(const Entry& entry) const;
  void prefetch(const Entry& entry, uint64_t offset, uint64_t bytes) const noexcept;
  // The sharded save this folder is, or null.
  const ShardedSave* sharded_save() const noexcept;
  const std::string& file_of(const Entry& entry) const { return shards_[entry.shard].path(); }

 private:
  void open_consolidated();  // an index and its shards, or model.safetensors
  std::filesystem::path dir_;
  bool has_index_ = false;
  std::vector<SafetensorsFile> shards_;
  std::unordered_map<std::string, Entry> entries_;
  std::vector<std::string> names_;
  uint64_t total_bytes_ = 0;
  std::map<std::string, std::string> index_metadata_;
  std::shared_ptr<const ShardedData> sharded_;
};

inline constexpr const char* kIndexFileName = "model.safetensors.index.json";
inline constexpr const char* kSingleFileName = "model.safetensors";

// Checks the index's shard file name: a plain name inside the folder (no '/', '\\', "..", NUL).
bool is_plain_file_name(std::string_view name) noexcept;

}  // namespace moeckpt
