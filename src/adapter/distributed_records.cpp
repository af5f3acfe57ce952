#include "adapter/distributed_records.hpp"

#include <fmt/format.h>

#include <charconv>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/strict_json.hpp"
#include "io/file.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt {
namespace fs = std::filesystem;

namespace {
constexpr const char* kJobFormat = "moeckpt-distributed-job-1";
constexpr const char* kWorkerFormat = "moeckpt-worker-manifest-1";
constexpr uint64_t kMaxRecordBytes = 1ull << 30;

[[noreturn]] void malformed(const fs::path& path, const std::string& what) {
  fail(ErrorKind::kDestination, path.string(), "",
       "malformed distributed-conversion record: " + what,
       "the records a moeckpt worker wrote (remove the folder to start over)");
}

nlohmann::json load_json(const fs::path& path) {
  try {
    return parse_strict_json(io::read_small_file(path, kMaxRecordBytes), path.string());
  } catch (const nlohmann::json::exception& e) {
    malformed(path, e.what());
  }
}

bool is_count(const nlohmann::json& j) {
  return j.is_number_unsigned();
}
}  // namespace

std::string worker_manifest_name(int64_t worker, int64_t workers) {
  return fmt::format(".moeckpt-worker-{:05d}-of-{:05d}.json", worker, workers);
}

std::string worker_lock_name(int64_t worker, int64_t workers) {
  return fmt::format(".moeckpt-worker-{:05d}-of-{:05d}.lock", worker, workers);
}

std::optional<std::pair<int64_t, int64_t>> parse_worker_manifest_name(const std::string& name) {
  static const std::regex pattern(R"(\.moeckpt-worker-(\d{5,})-of-(\d{5,})\.json)");
  std::smatch m;
  if (!std::regex_match(name, m, pattern)) return std::nullopt;
  int64_t k = 0, n = 0;
  const auto a = m[1].str(), b = m[2].str();
  if (std::from_chars(a.data(), a.data() + a.size(), k).ec != std::errc() ||
      std::from_chars(b.data(), b.data() + b.size(), n).ec != std::errc() || n < 1 || k >= n)
    return std::nullopt;
  return std::make_pair(k, n);
}

std::vector<std::pair<int64_t, int64_t>> worker_manifests_in(const fs::path& dir) {
  std::vector<std::pair<int64_t, int64_t>> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (auto kn = parse_worker_manifest_name(e.path().filename().string())) out.push_back(*kn);
  std::sort(out.begin(), out.end());
  return out;
}

std::optional<JobRecord> JobRecord::load(const fs::path& dir) {
  const auto path = dir / kJobFileName;
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(path, ec))) return std::nullopt;
  auto j = load_json(path);  // not const: a missing key reads as null
  if (!j.is_object() || j.value("format", "") != kJobFormat || !j["fingerprint"].is_string() ||
      !is_count(j["workers"]) || j["workers"].get<uint64_t>() < 1 || !j["shards"].is_array() ||
      !(j["index"].is_null() || j["index"].is_string()))
    malformed(path, "not a moeckpt job record");
  JobRecord r;
  r.fingerprint = j["fingerprint"].get<std::string>();
  r.workers = static_cast<int64_t>(j["workers"].get<uint64_t>());
  for (auto s : j["shards"]) {
    if (!s.is_object() || !s["name"].is_string() || !is_count(s["size"]) ||
        !is_count(s["header_bytes"]) || !s["header_xxh3_128"].is_string() ||
        !is_count(s["worker"]) || s["worker"].get<uint64_t>() >= static_cast<uint64_t>(r.workers))
      malformed(path, "a shard entry is not {name, size, header_bytes, header_xxh3_128, worker}");
    r.shards.push_back({s["name"].get<std::string>(), s["size"].get<uint64_t>(),
                        s["header_bytes"].get<uint64_t>(), s["header_xxh3_128"].get<std::string>(),
                        static_cast<int64_t>(s["worker"].get<uint64_t>())});
  }
  if (j["index"].is_string()) r.index = j["index"].get<std::string>();
  return r;
}

void JobRecord::save(const fs::path& dir, int64_t worker) const {
  nlohmann::ordered_json j;
  j["format"] = kJobFormat;
  j["fingerprint"] = fingerprint;
  j["workers"] = workers;
  j["shards"] = nlohmann::ordered_json::array();
  for (const auto& s : shards)
    j["shards"].push_back({{"name", s.name},
                           {"size", s.size},
                           {"header_bytes", s.header_bytes},
                           {"header_xxh3_128", s.header_checksum},
                           {"worker", s.worker}});
  j["index"] = index ? nlohmann::ordered_json(*index) : nlohmann::ordered_json(nullptr);
  io::write_file_atomically(dir / kJobFileName, j.dump(1) + "\n", static_cast<uint64_t>(worker));
}

std::optional<WorkerManifest> WorkerManifest::load(const fs::path& dir, int64_t worker,
                                                   int64_t workers) {
  const auto path = dir / worker_manifest_name(worker, workers);
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(path, ec))) return std::nullopt;
  auto j = load_json(path);  // not const: a missing key reads as null
  if (!j.is_object() || j.value("format", "") != kWorkerFormat || !j["fingerprint"].is_string() ||
      !is_count(j["worker"]) || !is_count(j["workers"]) || !j["shards"].is_object() ||
      !(j["failure"].is_null() || j["failure"].is_string()) ||
      j["worker"].get<uint64_t>() != static_cast<uint64_t>(worker) ||
      j["workers"].get<uint64_t>() != static_cast<uint64_t>(workers))
    malformed(path, "not the manifest of worker " + std::to_string(worker) + " of " +
                        std::to_string(workers));
  WorkerManifest m;
  m.fingerprint = j["fingerprint"].get<std::string>();
  m.worker = worker;
  m.workers = workers;
  for (auto it = j["shards"].begin(); it != j["shards"].end(); ++it) {
    const auto& name = it.key();
    auto v = it.value();
    if (!v.is_object() || !is_count(v["size"]) || !v["xxh3_128"].is_string())
      malformed(path, "shard entry " + name + " is not {size, xxh3_128}");
    m.shards[name] = {v["size"].get<uint64_t>(), v["xxh3_128"].get<std::string>()};
  }
  if (j["failure"].is_string()) m.failure = j["failure"].get<std::string>();
  return m;
}

void WorkerManifest::save(const fs::path& dir) const {
  nlohmann::ordered_json j;
  j["format"] = kWorkerFormat;
  j["fingerprint"] = fingerprint;
  j["worker"] = worker;
  j["workers"] = workers;
  j["shards"] = nlohmann::ordered_json::object();
  for (const auto& [name, s] : shards)
    j["shards"][name] = {{"size", s.size}, {"xxh3_128", s.checksum}};
  j["failure"] = failure ? nlohmann::ordered_json(*failure) : nlohmann::ordered_json(nullptr);
  io::write_file_atomically(dir / worker_manifest_name(worker, workers), j.dump(2) + "\n");
}

}  // namespace moeckpt
