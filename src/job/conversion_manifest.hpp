#pragma once
// The record an unfinished conversion keeps in its destination: what it is converting (a
// fingerprint of inputs, options and output layout) and which shards are finished, with their
// checksums. --resume trusts a shard only if its size, header and checksum match this record.
//
// The file is JSON Lines: a header line, then one line per finished shard. It is written whole
// (atomically) when a conversion starts or resumes, then each finished shard appends its line
// (append_shard: one write and one fdatasync, the same cost for the thousandth shard as for the
// first). A last line cut short by a crash is ignored: that shard is redone.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>

#include "job/record_lines.hpp"

namespace moeckpt {

inline constexpr const char* kManifestFileName = ".moeckpt-manifest.json";

struct ConversionManifest {
  struct Shard {
    uint64_t size = 0;
    std::string checksum;  // XXH3-128, hex
  };
  std::string fingerprint;
  std::map<std::string, Shard> shards;  // by file name

  // nullopt when the folder has no manifest; throws when it has a malformed one. Reads the
  // whole-file format of earlier versions too.
  static std::optional<ConversionManifest> load(const std::filesystem::path& dir);
  // Writes the whole manifest atomically and returns it open for append_shard.
  RecordAppender save(const std::filesystem::path& dir) const;
  // Records one finished shard: a line appended to the manifest save() wrote, and synced.
  static void append_shard(RecordAppender& file, const std::string& name, const Shard& shard);
};

}  // namespace moeckpt
