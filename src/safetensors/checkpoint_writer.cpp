#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "io/file.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/safetensors_writer.hpp"

namespace moeckpt {

std::string CheckpointWriter::shard_file_name(size_t i, size_t n) {
  return fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, n);
}

CheckpointWriter::CheckpointWriter(std::filesystem::path dir, std::vector<TensorSpec> tensors,
                                   ShardingOptions options)
    : dir_(std::move(dir)) {
  if (options.max_shard_bytes == 0) fail(dir_.string(), "", "shard size limit must be positive");
  std::vector<std::vector<TensorSpec>> groups;
  uint64_t current = 0;
  locations_.reserve(tensors.size());
  for (auto& t : tensors) {
    uint64_t n = t.nbytes();
    if (groups.empty() || (current > 0 && current + n > options.max_shard_bytes)) {
      groups.emplace_back();
      current = 0;
    }
    current += n;
    total_bytes_ += n;
    locations_.push_back({groups.size() - 1, groups.back().size()});
    groups.back().push_back(std::move(t));
  }
  if (groups.empty()) groups.emplace_back();
  for (size_t s = 0; s < groups.size(); ++s) {
    auto name =
        groups.size() == 1 ? std::string(kSingleFileName) : shard_file_name(s, groups.size());
    shards_.push_back(
        std::make_unique<ShardWriter>(dir_ / name, std::move(groups[s]), options.metadata));
  }
}

CheckpointWriter::~CheckpointWriter() = default;

uint64_t CheckpointWriter::shard_data_bytes(size_t shard) const {
  uint64_t n = 0;
  for (const auto& t : shards_.at(shard)->tensors()) n += t.nbytes();
  return n;
}

std::string CheckpointWriter::shard_name(size_t shard) const {
  return shards_.at(shard)->final_path().filename().string();
}

const TensorSpec& CheckpointWriter::spec(size_t i) const {
  const auto& loc = locations_.at(i);
  return shards_[loc.shard]->tensors()[loc.index_in_shard];
}

void CheckpointWriter::write(size_t i, uint64_t offset, std::span<const uint8_t> bytes) {
  const auto& loc = locations_.at(i);
  shards_[loc.shard]->write(loc.index_in_shard, offset, bytes);
}

void CheckpointWriter::commit() {
  for (auto& s : shards_) s->commit();
  if (shards_.size() == 1) return;
  nlohmann::ordered_json index;
  index["metadata"]["total_size"] = total_bytes_;
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  std::map<std::string, std::string> sorted;
  for (const auto& s : shards_)
    for (const auto& t : s->tensors()) sorted[t.name] = s->final_path().filename().string();
  for (const auto& [name, file] : sorted) weight_map[name] = file;
  index["weight_map"] = std::move(weight_map);
  io::write_file_atomically(dir_ / kIndexFileName, index.dump(2) + "\n");
}

}  // namespace moeckpt
