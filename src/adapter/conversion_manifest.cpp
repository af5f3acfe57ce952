#include "adapter/conversion_manifest.hpp"

#include <nlohmann/json.hpp>

#include "core/strict_json.hpp"
#include "io/file.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt {
namespace {
constexpr const char* kFormat = "moeckpt-conversion-manifest-1";
}

std::optional<ConversionManifest> ConversionManifest::load(const std::filesystem::path& dir) {
  const auto path = dir / kManifestFileName;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::nullopt;
  const auto text = io::read_small_file(path, 64ull << 20);
  ConversionManifest m;
  try {
    auto j = parse_strict_json(text, path.string());
    if (!j.is_object() || j.value("format", "") != kFormat || !j["fingerprint"].is_string() ||
        !j["shards"].is_object())
      fail(ErrorKind::kDestination, path.string(), "", "not a moeckpt conversion manifest");
    m.fingerprint = j["fingerprint"].get<std::string>();
    for (const auto& [name, v] : j["shards"].items()) {
      if (!v.is_object() || !v["size"].is_number_unsigned() || !v["xxh3_128"].is_string())
        fail(ErrorKind::kDestination, path.string(), name,
             "malformed shard entry in the conversion manifest");
      m.shards[name] = {v["size"].get<uint64_t>(), v["xxh3_128"].get<std::string>()};
    }
  } catch (const nlohmann::json::exception& e) {
    fail(ErrorKind::kDestination, path.string(), "",
         std::string("malformed conversion manifest: ") + e.what());
  }
  return m;
}

void ConversionManifest::save(const std::filesystem::path& dir) const {
  nlohmann::ordered_json j;
  j["format"] = kFormat;
  j["fingerprint"] = fingerprint;
  j["shards"] = nlohmann::ordered_json::object();
  for (const auto& [name, s] : shards)
    j["shards"][name] = {{"size", s.size}, {"xxh3_128", s.checksum}};
  io::write_file_atomically(dir / kManifestFileName, j.dump(2) + "\n");
}

}  // namespace moeckpt
