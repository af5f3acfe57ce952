#include "job/distributed_records.hpp"

#include <fmt/format.h>

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include <algorithm>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <set>

#include "core/printable.hpp"
#include "core/strict_json.hpp"
#include "io/file.hpp"
#include "job/record_lines.hpp"
#include "moeckpt/distributed.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"

namespace moeckpt {
namespace fs = std::filesystem;

namespace {
constexpr const char* kJobFormat = "moeckpt-distributed-job-1";
constexpr const char* kWorkerFormat = "moeckpt-worker-manifest-2";
constexpr const char* kWholeFileWorkerFormat = "moeckpt-worker-manifest-1";  // before record lines
constexpr const char* kLaunchFormat = "moeckpt-distributed-launch-1";
// The job record holds the index text (a few MB for the largest published models); a worker
// manifest one line per shard. Parsing costs a multiple of the file: bounded here.
constexpr uint64_t kMaxJobRecordBytes = 64ull << 20;
constexpr uint64_t kMaxManifestBytes = 16ull << 20;
// Far beyond any shard; keeps sums of sizes from wrapping.
constexpr uint64_t kMaxShardBytes = uint64_t{1} << 50;

[[noreturn]] void malformed(const fs::path& path, const std::string& what) {
  fail(ErrorKind::kDestination, path.string(), "",
       "malformed distributed-conversion record: " + what,
       "the records a moeckpt worker wrote (remove the folder to start over)");
}

nlohmann::json load_json(const fs::path& path, uint64_t max_bytes) {
  try {
    return parse_strict_json(io::read_small_file(path, max_bytes), path.string());
  } catch (const nlohmann::json::exception& e) {
    malformed(path, e.what());
  }
}

bool is_count(const nlohmann::json& j) {
  return j.is_number_unsigned();
}

bool is_count_in(const nlohmann::json& j, uint64_t lo, uint64_t hi) {
  return j.is_number_unsigned() && j.get<uint64_t>() >= lo && j.get<uint64_t>() <= hi;
}

// An XXH3-128 as the tool writes it: 32 lowercase hex digits.
bool is_checksum(const nlohmann::json& j) {
  if (!j.is_string()) return false;
  const auto& s = j.get_ref<const std::string&>();
  return s.size() == 32 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// A shard name a worker may have written into the folder: a plain *.safetensors file name.
bool is_shard_file_name(const nlohmann::json& j) {
  return j.is_string() && is_plain_file_name(j.get_ref<const std::string&>()) &&
         j.get_ref<const std::string&>().ends_with(".safetensors");
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
      std::from_chars(b.data(), b.data() + b.size(), n).ec != std::errc() || n < 1 ||
      n > kMaxWorkers || k >= n)
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

void claim_for_launch(const fs::path& dir, const std::string& fingerprint, int64_t workers) {
  const auto path = dir / kLaunchFileName;
  nlohmann::ordered_json mine;
  mine["format"] = kLaunchFormat;
  mine["fingerprint"] = fingerprint;
  mine["workers"] = workers;
  // A complete file under a unique temporary name, then link(): the claim appears whole, and only
  // if no claim is there (link never replaces). Workers on several hosts may share a pid: the
  // temporary's tag is random.
  std::random_device rd;
  const uint64_t tag = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  const auto tmp = io::temporary_name_for(path, tag);
  {
    io::File f = io::File::create_exclusive(tmp, path);
    const std::string text = mine.dump(1) + "\n";
    f.pwrite_all(0, {reinterpret_cast<const uint8_t*>(text.data()), text.size()});
    f.sync();
    f.close();
  }
  int rc = ::link(tmp.c_str(), path.c_str());
  int err = errno;
  if (rc != 0 && (err == EPERM || err == EOPNOTSUPP || err == ENOSYS || err == EMLINK)) {
    // A file system without hard links (exFAT, some FUSE and SMB mounts): a rename that never
    // replaces does the same.
    rc = ::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE);
    err = errno;
  }
  std::error_code ec;
  fs::remove(tmp, ec);
  if (rc == 0) {
    io::sync_directory(dir);
    return;
  }
  if (err != EEXIST)
    fail(ErrorKind::kDestination, path.string(), "",
         std::string("cannot create the launch record: ") + std::strerror(err));
  auto j = load_json(path, kMaxManifestBytes);
  if (!j.is_object() || j.value("format", "") != kLaunchFormat || !j["fingerprint"].is_string() ||
      !is_count_in(j["workers"], 1, static_cast<uint64_t>(kMaxWorkers)))
    malformed(path, "not a moeckpt launch record");
  if (j["fingerprint"].get<std::string>() == fingerprint) return;
  const auto theirs = j["workers"].get<uint64_t>();
  fail(ErrorKind::kDestination, dir.string(), "",
       theirs == static_cast<uint64_t>(workers)
           ? fmt::format("destination belongs to another conversion (a launch of {} workers with "
                         "other inputs or options)",
                         theirs)
           : fmt::format("destination belongs to another conversion (a launch with {} workers; "
                         "this one has {})",
                         theirs, workers),
       fmt::format("that launch relaunched with {} ({} workers, the same command), or an empty "
                   "folder",
                   option_ref(CallerOption::kResume), theirs));
}

std::optional<JobRecord> JobRecord::load(const fs::path& dir) {
  const auto path = dir / kJobFileName;
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(path, ec))) return std::nullopt;
  auto j = load_json(path, kMaxJobRecordBytes);  // not const: a missing key reads as null
  if (!j.is_object() || j.value("format", "") != kJobFormat || !j["fingerprint"].is_string() ||
      !j["shards"].is_array() || !(j["index"].is_null() || j["index"].is_string()))
    malformed(path, "not a moeckpt job record");
  // Every number is range-checked before it sizes anything (a forged count must not allocate).
  if (!is_count_in(j["workers"], 1, static_cast<uint64_t>(kMaxWorkers)))
    malformed(path, fmt::format("\"workers\" is not a count from 1 to {}", kMaxWorkers));
  JobRecord r;
  r.fingerprint = j["fingerprint"].get<std::string>();
  r.workers = static_cast<int64_t>(j["workers"].get<uint64_t>());
  std::set<std::string> names;
  for (auto s : j["shards"]) {
    if (!s.is_object() || !is_shard_file_name(s["name"]) ||
        !is_count_in(s["size"], 8, kMaxShardBytes) ||
        !is_count_in(s["header_bytes"], 8, std::min(kMaxHeaderBytes + 8, kMaxShardBytes)) ||
        !is_checksum(s["header_xxh3_128"]) ||
        !is_count_in(s["worker"], 0, static_cast<uint64_t>(r.workers - 1)))
      malformed(path,
                "a shard entry is not {name: a *.safetensors file name, size, header_bytes (8 to "
                "the header limit), header_xxh3_128 (32 hex digits), worker (below workers)}");
    if (s["header_bytes"].get<uint64_t>() > s["size"].get<uint64_t>())
      malformed(path,
                "shard " + s["name"].get<std::string>() + " has more header bytes than bytes");
    if (!names.insert(s["name"].get<std::string>()).second)
      malformed(path, "shard " + s["name"].get<std::string>() + " is listed twice");
    r.shards.push_back({s["name"].get<std::string>(), s["size"].get<uint64_t>(),
                        s["header_bytes"].get<uint64_t>(), s["header_xxh3_128"].get<std::string>(),
                        static_cast<int64_t>(s["worker"].get<uint64_t>())});
  }
  if (r.shards.empty()) malformed(path, "it lists no shards");
  if (j["index"].is_string()) r.index = j["index"].get<std::string>();
  if (!r.index && r.shards.size() != 1)
    malformed(path, "it has no index but " + std::to_string(r.shards.size()) + " shards");
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
  const auto text = io::read_small_file(path, kMaxManifestBytes);
  std::vector<nlohmann::json> lines;  // not const: a missing key reads as null
  if (is_record_lines(text)) {
    lines = parse_record_lines(text, path.string());
  } else {  // the whole-file format: its header, shard entries and failure as lines
    auto j = parse_strict_json(text, path.string());
    if (!j.is_object() || j.value("format", "") != kWholeFileWorkerFormat ||
        !j["shards"].is_object())
      malformed(path, "not the manifest of worker " + std::to_string(worker) + " of " +
                          std::to_string(workers));
    lines.push_back({{"format", j["format"]},
                     {"fingerprint", j["fingerprint"]},
                     {"worker", j["worker"]},
                     {"workers", j["workers"]}});
    for (auto it = j["shards"].begin(); it != j["shards"].end(); ++it) {
      auto v = it.value();
      if (!v.is_object())
        malformed(path, "shard entry " + printable(it.key()) + " is not {size, xxh3_128}");
      lines.push_back({{"shard", it.key()}, {"size", v["size"]}, {"xxh3_128", v["xxh3_128"]}});
    }
    if (!j["failure"].is_null()) lines.push_back({{"failure", j["failure"]}});
  }
  if (lines.empty()) malformed(path, "it is empty");
  auto& h = lines.front();
  if (!h.is_object() ||
      (h.value("format", "") != kWorkerFormat && h.value("format", "") != kWholeFileWorkerFormat) ||
      !h["fingerprint"].is_string() || !is_count(h["worker"]) || !is_count(h["workers"]) ||
      h["worker"].get<uint64_t>() != static_cast<uint64_t>(worker) ||
      h["workers"].get<uint64_t>() != static_cast<uint64_t>(workers))
    malformed(path, "not the manifest of worker " + std::to_string(worker) + " of " +
                        std::to_string(workers));
  WorkerManifest m;
  m.fingerprint = h["fingerprint"].get<std::string>();
  m.worker = worker;
  m.workers = workers;
  for (size_t i = 1; i < lines.size(); ++i) {
    auto& v = lines[i];
    if (v.is_object() && v.contains("failure")) {
      if (v.size() != 1 || !v["failure"].is_string())
        malformed(path, "line " + std::to_string(i + 1) + " is not {failure: text}");
      m.failure = v["failure"].get<std::string>();
      continue;
    }
    if (!v.is_object() || !is_shard_file_name(v["shard"]) ||
        !is_count_in(v["size"], 8, kMaxShardBytes) || !is_checksum(v["xxh3_128"]))
      malformed(path, "line " + std::to_string(i + 1) +
                          " is not {shard: a *.safetensors name, size, xxh3_128 (32 hex digits)}");
    m.shards[v["shard"].get<std::string>()] = {v["size"].get<uint64_t>(),
                                               v["xxh3_128"].get<std::string>()};
  }
  return m;
}

RecordAppender WorkerManifest::save(const fs::path& dir) const {
  nlohmann::ordered_json header;
  header["format"] = kWorkerFormat;
  header["fingerprint"] = fingerprint;
  header["worker"] = worker;
  header["workers"] = workers;
  std::string text = record_line(header);
  for (const auto& [name, s] : shards)
    text += record_line({{"shard", name}, {"size", s.size}, {"xxh3_128", s.checksum}});
  if (failure) text += record_line({{"failure", *failure}});
  const auto path = dir / worker_manifest_name(worker, workers);
  io::write_file_atomically(path, text);
  return RecordAppender(path);
}

void WorkerManifest::append_shard(RecordAppender& file, const std::string& name,
                                  const ConversionManifest::Shard& shard) {
  file.append({{"shard", name}, {"size", shard.size}, {"xxh3_128", shard.checksum}});
}

void WorkerManifest::append_failure(RecordAppender& file, const std::string& what) {
  file.append({{"failure", what}});
}

}  // namespace moeckpt
