#pragma once
// A training job's sharded save: PyTorch DCP's Hugging Face storage writer with distributed
// saving (torch's HuggingFaceStorageWriter, NeMo Automodel's backport of it). Every rank writes
// its pieces of every tensor into shard-RRRRR-model-IIIII-of-NNNNN.safetensors (RRRRR = rank + 1),
// each piece's place in the whole tensor in the file's __metadata__ DCP_SHARDING_INFO. Read as the
// HF checkpoint its consolidation is: each tensor assembled from its pieces, which must tile it
// exactly (no gap, no overlap, one dtype).
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "moeckpt/dtype.hpp"

namespace moeckpt {

struct TensorInfo;

// One rank's piece of a tensor.
struct SavedPiece {
  size_t file = 0;                   // index into ShardedSave::files
  const TensorInfo* info = nullptr;  // the piece as its file holds it (local shape)
  std::vector<uint64_t> offsets;     // where it starts in the whole tensor, per dimension
};

struct ShardedTensor {
  std::string name;
  Dtype stored{};  // the pieces' dtype
  Dtype dtype{};   // as read: the HF dtype restored (Automodel's rule), or a requested cast
  std::vector<uint64_t> shape;     // max(offset + size) over the pieces, per dimension
  std::vector<SavedPiece> pieces;  // non-empty pieces, by their first element's place
  size_t empty_pieces = 0;         // zero-size pieces (an empty FSDP shard)
  int64_t output_file = 1;  // the consolidated file (1-based) the mapping or file names give it
};

enum class ShardedWriter { kTorch, kAutomodel };
const char* sharded_writer_name(ShardedWriter w) noexcept;

struct ShardedSave {
  // torch's writer puts __metadata__ first (safetensors' serializer); Automodel's streams its
  // header with __metadata__ last and needs .hf_metadata/ for the output layout.
  ShardedWriter writer = ShardedWriter::kTorch;
  std::string dcp_version;
  int64_t output_files = 1;  // NNNNN, or the mapping's highest index
  struct File {
    std::string name;
    int64_t rank = 0;   // RRRRR - 1
    int64_t index = 1;  // IIIII
  };
  std::vector<File> files;  // in name order, parallel to the Checkpoint's shards
  // .hf_metadata/config.json when the save has one.
  std::optional<std::filesystem::path> config;
  // The other files of .hf_metadata/ (tokenizer, generation_config.json, ...): what a
  // consolidation copies beside config.json, as Automodel's does (its two mappings excluded).
  std::vector<std::filesystem::path> other_files;
};

inline constexpr const char* kShardedMetadataDir = ".hf_metadata";

// Whether `dir` holds a sharded save: shard-*-model-*-of-*.safetensors files and neither an index
// nor model.safetensors.
bool is_sharded_save(const std::filesystem::path& dir);

// A checkpoint folder's config.json: its own, or (a sharded save without one) the save's
// .hf_metadata/config.json.
std::filesystem::path checkpoint_config_path(const std::filesystem::path& dir);

}  // namespace moeckpt
