#include "job/conversion_manifest.hpp"

#include <nlohmann/json.hpp>

#include "core/strict_json.hpp"
#include "io/file.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt {
namespace {
constexpr const char* kFormat = "moeckpt-conversion-manifest-2";
constexpr const char* kWholeFileFormat = "moeckpt-conversion-manifest-1";  // before record lines

nlohmann::ordered_json shard_record(const std::string& name, const ConversionManifest::Shard& s) {
  return {{"shard", name}, {"size", s.size}, {"xxh3_128", s.checksum}};
}

[[noreturn]] void malformed(const std::filesystem::path& path, const std::string& name,
                            const std::string& what) {
  fail(ErrorKind::kDestination, path.string(), name, what);
}

// The format before record lines: one object, {"format", "fingerprint", "shards": {name: ...}}.
ConversionManifest load_whole_file(const std::filesystem::path& path, const std::string& text) {
  ConversionManifest m;
  try {
    auto j = parse_strict_json(text, path.string());
    if (!j.is_object() || j.value("format", "") != kWholeFileFormat ||
        !j["fingerprint"].is_string() || !j["shards"].is_object())
      malformed(path, "", "not a moeckpt conversion manifest");
    m.fingerprint = j["fingerprint"].get<std::string>();
    for (const auto& [name, v] : j["shards"].items()) {
      if (!v.is_object() || !v["size"].is_number_unsigned() || !v["xxh3_128"].is_string())
        malformed(path, name, "malformed shard entry in the conversion manifest");
      m.shards[name] = {v["size"].get<uint64_t>(), v["xxh3_128"].get<std::string>()};
    }
  } catch (const nlohmann::json::exception& e) {
    malformed(path, "", std::string("malformed conversion manifest: ") + e.what());
  }
  return m;
}

}  // namespace

std::optional<ConversionManifest> ConversionManifest::load(const std::filesystem::path& dir) {
  const auto path = dir / kManifestFileName;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::nullopt;
  const auto text = io::read_small_file(path, 256ull << 20);
  if (!is_record_lines(text)) return load_whole_file(path, text);
  ConversionManifest m;
  try {
    auto lines = parse_record_lines(text, path.string());
    if (lines.empty() || !lines[0].is_object() || lines[0].value("format", "") != kFormat ||
        !lines[0]["fingerprint"].is_string())
      malformed(path, "", "not a moeckpt conversion manifest");
    m.fingerprint = lines[0]["fingerprint"].get<std::string>();
    for (size_t i = 1; i < lines.size(); ++i) {
      auto& v = lines[i];  // not const: a missing key reads as null
      if (!v.is_object() || !v["shard"].is_string() || !v["size"].is_number_unsigned() ||
          !v["xxh3_128"].is_string())
        malformed(path, "",
                  "malformed shard entry in the conversion manifest (line " +
                      std::to_string(i + 1) + ")");
      m.shards[v["shard"].get<std::string>()] = {v["size"].get<uint64_t>(),
                                                 v["xxh3_128"].get<std::string>()};
    }
  } catch (const nlohmann::json::exception& e) {
    malformed(path, "", std::string("malformed conversion manifest: ") + e.what());
  }
  return m;
}

RecordAppender ConversionManifest::save(const std::filesystem::path& dir) const {
  nlohmann::ordered_json header;
  header["format"] = kFormat;
  header["fingerprint"] = fingerprint;
  std::string text = record_line(header);
  for (const auto& [name, s] : shards) text += record_line(shard_record(name, s));
  io::write_file_atomically(dir / kManifestFileName, text);
  return RecordAppender(dir / kManifestFileName);
}

void ConversionManifest::append_shard(RecordAppender& file, const std::string& name,
                                      const Shard& shard) {
  file.append(shard_record(name, shard));
}

}  // namespace moeckpt
