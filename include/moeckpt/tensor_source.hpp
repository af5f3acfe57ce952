#pragma once
// Where conversion reads tensors from: checkpoint folders on disk or tensors in memory. Plans refer
// to SourceTensor entries; executors read byte ranges through the source.
#include <atomic>
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

namespace moeckpt {

class Checkpoint;

struct SourceTensor {
  std::string name;
  Dtype dtype{};
  std::vector<uint64_t> shape;
  std::string file;  // for messages
  size_t part = 0;   // which folder / buffer set it lives in
  uint64_t nbytes = 0;
  // Set for a member of a stacked tensor (one slice along its leading axis, e.g. one expert of a
  // layer's [n_experts, ...] tensor): this tensor's bytes are bytes [slice_offset, slice_offset +
  // nbytes) of `stored`, a tensor of the same source; every source's read() follows it.
  const SourceTensor* stored = nullptr;
  uint64_t slice_offset = 0;
};

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  // In a stable order (sorted by name within a part, parts in order).
  const std::vector<SourceTensor>& tensors() const noexcept { return tensors_; }
  const SourceTensor* find(std::string_view name) const;
  virtual void read(const SourceTensor& t, uint64_t offset, std::span<uint8_t> out) const = 0;
  // Hints that these bytes will be read soon (read-ahead; no effect in memory).
  virtual void prefetch(const SourceTensor&, uint64_t /*offset*/, uint64_t /*bytes*/) const {}
  std::vector<uint8_t> read_all(const SourceTensor& t) const;
  // __metadata__ of the part's first shard (empty for memory sources).
  virtual std::map<std::string, std::string> metadata(size_t part) const = 0;
  virtual size_t parts() const = 0;
  // The part's index "metadata" (values as JSON text; empty without an index or in memory).
  virtual std::map<std::string, std::string> index_metadata(size_t /*part*/) const { return {}; }
  // Bytes read so far through read() (for the closing summary).
  uint64_t bytes_read() const noexcept { return bytes_read_.load(); }

 protected:
  mutable std::atomic<uint64_t> bytes_read_{0};
  void index();  // builds the name lookup after tensors_ is filled
  std::vector<SourceTensor> tensors_;

 private:
  std::unordered_map<std::string, size_t> by_name_;
};

// One or several checkpoint folders (several: the EP ranks of one native checkpoint). A name may
// occur in several parts; find() returns the first part's.
class CheckpointSource final : public TensorSource {
 public:
  // `cast`: a sharded save's consolidation cast (Checkpoint::open).
  explicit CheckpointSource(const std::vector<std::filesystem::path>& dirs,
                            std::optional<Dtype> cast = std::nullopt);
  ~CheckpointSource() override;
  void read(const SourceTensor& t, uint64_t offset, std::span<uint8_t> out) const override;
  void prefetch(const SourceTensor& t, uint64_t offset, uint64_t bytes) const override;
  std::map<std::string, std::string> metadata(size_t part) const override;
  size_t parts() const override { return checkpoints_.size(); }
  std::map<std::string, std::string> index_metadata(size_t part) const override;
  const Checkpoint& checkpoint(size_t part) const { return *checkpoints_[part]; }
  // Every occurrence of `name` (one per part that has it).
  std::vector<const SourceTensor*> all(std::string_view name) const;

 private:
  std::vector<std::unique_ptr<Checkpoint>> checkpoints_;
};

// Tensors held in memory (borrowed: the caller keeps the bytes alive while the source is used).
class MemorySource final : public TensorSource {
 public:
  struct Entry {
    std::string name;
    Dtype dtype;
    std::vector<uint64_t> shape;
    std::span<const uint8_t> bytes;
  };
  // Order kept as given; `index_metadata` stands in for a folder index's "metadata" (JSON text
  // values, e.g. {"tp_size", "4"}).
  // `windows[name]`: that entry's bytes are bytes [offset, offset + size) of the tensor its shape
  // describes (one process's part of a tensor split over processes); reads outside are refused.
  explicit MemorySource(std::vector<Entry> entries,
                        std::map<std::string, std::string> index_metadata = {},
                        const std::map<std::string, uint64_t>& windows = {});
  void read(const SourceTensor& t, uint64_t offset, std::span<uint8_t> out) const override;
  std::map<std::string, std::string> metadata(size_t) const override { return {}; }
  size_t parts() const override { return 1; }
  std::map<std::string, std::string> index_metadata(size_t) const override {
    return index_metadata_;
  }
  // The borrowed bytes of one of this source's tensors.
  std::span<const uint8_t> bytes(const SourceTensor& t) const;

 private:
  std::vector<std::span<const uint8_t>> bytes_;
  std::vector<uint64_t> window_offsets_;
  std::map<std::string, std::string> index_metadata_;
};

}  // namespace moeckpt
