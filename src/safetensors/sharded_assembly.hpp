#pragma once
// The pieces of a sharded save (moeckpt/sharded_save.hpp) opened, checked and read as whole
// tensors: what Checkpoint does for a folder of shard-*-model-*-of-*.safetensors files.
#include <deque>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "moeckpt/safetensors.hpp"
#include "moeckpt/sharded_save.hpp"

namespace moeckpt {

struct ShardedData {
  ShardedSave save;
  std::deque<ShardedTensor> tensors;  // stable addresses
  std::deque<TensorInfo> infos;       // per tensor: the whole tensor as read, [0, nbytes)
};

// Opens every file of the save in `dir` into `files` (in ShardedSave::files order) and builds
// every tensor from its pieces, refusing (naming the tensor and the region or the files) a gap, an
// overlap, pieces of different dtypes, files of two saves, a tensor missing from the layout's
// mapping and a mapped tensor with no pieces. `cast`: Automodel's consolidation cast (F32-mapped
// and non-float tensors kept); otherwise each tensor reads as its HF dtype restored from
// .hf_metadata/fqn_to_dtype_mapping.json, or as its pieces' dtype.
std::shared_ptr<ShardedData> open_sharded_save(const std::filesystem::path& dir,
                                               std::vector<SafetensorsFile>& files,
                                               std::optional<Dtype> cast);

// Bytes [offset, offset + out.size()) of the whole tensor as read (its dtype), from the pieces:
// each piece's bytes in the range are one contiguous run of its file, read in bounded chunks.
void read_assembled(const ShardedTensor& t, const std::vector<SafetensorsFile>& files,
                    uint64_t offset, std::span<uint8_t> out);
void prefetch_assembled(const ShardedTensor& t, const std::vector<SafetensorsFile>& files,
                        uint64_t offset, uint64_t bytes) noexcept;

}  // namespace moeckpt
