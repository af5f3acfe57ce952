#pragma once
// The record an unfinished conversion keeps in its destination: what it is converting (a
// fingerprint of inputs, options and output layout) and which shards are finished, with their
// checksums. --resume trusts a shard only if its size, header and checksum match this record.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>

namespace moeckpt {

inline constexpr const char* kManifestFileName = ".moeckpt-manifest.json";

struct ConversionManifest {
  struct Shard {
    uint64_t size = 0;
    std::string checksum;  // XXH3-128, hex
  };
  std::string fingerprint;
  std::map<std::string, Shard> shards;  // by file name

  // nullopt when the folder has no manifest; throws when it has a malformed one.
  static std::optional<ConversionManifest> load(const std::filesystem::path& dir);
  void save(const std::filesystem::path& dir) const;  // atomically
};

}  // namespace moeckpt
