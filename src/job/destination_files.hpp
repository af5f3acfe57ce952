#pragma once
// What a folder conversion may do to the files of its destination, shared by the single-process
// output folder and a distributed worker's: the destination's own checks (never a source or inside
// one), and which files under a shard name are ours to replace.
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace moeckpt {

inline constexpr const char* kConfigFileName = "config.json";

// A small file the finished checkpoint holds beside its shards (config.json, a tokenizer's files):
// written under a temporary name, renamed into place before the index, removed on failure unless
// it was there before.
struct SideFile {
  std::string name;  // a plain file name in the destination
  std::string content;
};

using FileId = std::pair<uint64_t, uint64_t>;  // device, inode

// The input files and whether the destination folder was created.
struct Destination {
  std::vector<FileId> inputs;  // every file in the source folders
  bool created = false;
};
// Refuses a destination that is a source folder or lies inside one (by device and inode, ancestor
// by ancestor), or a dangling link; creates it.
Destination take_destination(const std::filesystem::path& dst,
                             const std::vector<std::filesystem::path>& srcs);

bool present(const std::filesystem::path& p);
void remove_file(const std::filesystem::path& p);
void rename_file(const std::filesystem::path& from, const std::filesystem::path& to);
// "model.safetensors" or "model-0000i-of-0000N.safetensors".
bool is_shard_name(const std::string& name);
// A regular file (no link) that is a valid safetensors file and none of the inputs.
bool removable_shard(const std::filesystem::path& p, const std::vector<FileId>& inputs);
// A regular file of exactly `size` bytes that begins with `header`.
bool starts_with_bytes(const std::filesystem::path& p, const std::vector<uint8_t>& header,
                       uint64_t size);

}  // namespace moeckpt
