#include <algorithm>

#include "core/strict_json.hpp"
#include "io/file.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"
#include "safetensors/sharded_assembly.hpp"

namespace moeckpt {
namespace fs = std::filesystem;

bool is_plain_file_name(std::string_view name) noexcept {
  if (name.empty() || name == "." || name == "..") return false;
  for (char c : name)
    if (c == '/' || c == '\\' || c == '\0') return false;
  return true;
}

namespace {

constexpr uint64_t kMaxIndexBytes = 512ull << 20;

}  // namespace

Checkpoint Checkpoint::open(const fs::path& dir, std::optional<Dtype> cast) {
  Checkpoint ck;
  ck.dir_ = dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    fail(ErrorKind::kInvalidArgument, dir.string(), "",
         "not a checkpoint folder (no such directory)");
  if (is_sharded_save(dir)) {
    auto data = open_sharded_save(dir, ck.shards_, cast);
    for (size_t i = 0; i < data->tensors.size(); ++i) {
      const auto& t = data->tensors[i];
      const size_t first = t.pieces.empty() ? 0 : t.pieces.front().file;
      ck.entries_.emplace(t.name, Entry{&data->infos[i], first, &t});
      ck.total_bytes_ += data->infos[i].nbytes();
    }
    ck.sharded_ = std::move(data);
  } else if (cast) {
    fail(ErrorKind::kInvalidArgument, dir.string(), "",
         "a dtype cast applies to a sharded save, which this folder is not",
         "shard-RRRRR-model-IIIII-of-NNNNN.safetensors files");
  } else {
    ck.open_consolidated();
  }
  ck.names_.reserve(ck.entries_.size());
  for (const auto& [name, _] : ck.entries_) ck.names_.push_back(name);
  std::sort(ck.names_.begin(), ck.names_.end());
  return ck;
}

void Checkpoint::read(const Entry& entry, uint64_t offset, std::span<uint8_t> out) const {
  if (entry.pieces)
    read_assembled(*entry.pieces, shards_, offset, out);
  else
    shards_[entry.shard].read(*entry.info, offset, out);
}

std::vector<uint8_t> Checkpoint::read_all(const Entry& entry) const {
  std::vector<uint8_t> out(entry.info->nbytes());
  read(entry, 0, out);
  return out;
}

void Checkpoint::prefetch(const Entry& entry, uint64_t offset, uint64_t bytes) const noexcept {
  if (entry.pieces)
    prefetch_assembled(*entry.pieces, shards_, offset, bytes);
  else
    shards_[entry.shard].prefetch(*entry.info, offset, bytes);
}

const ShardedSave* Checkpoint::sharded_save() const noexcept {
  return sharded_ ? &sharded_->save : nullptr;
}

void Checkpoint::open_consolidated() {
  Checkpoint& ck = *this;
  const fs::path& dir = dir_;
  std::error_code ec;

  const fs::path index_path = dir / kIndexFileName;
  const std::string index_name = index_path.string();
  // shard file name -> tensors the index puts there
  std::map<std::string, std::vector<std::string>> expected;
  if (fs::exists(index_path, ec)) {
    ck.has_index_ = true;
    auto doc =
        parse_strict_json(io::read_small_file(index_path, kMaxIndexBytes), index_name, "index");
    if (!doc.is_object())
      fail(ErrorKind::kMalformedFile, index_name, "", "index is not a JSON object");
    auto wm = doc.find("weight_map");
    if (wm == doc.end() || !wm->is_object())
      fail(ErrorKind::kMalformedFile, index_name, "", "index has no \"weight_map\" object",
           "{\"weight_map\": {tensor: shard file}}");
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it->is_string())
        fail(ErrorKind::kMalformedFile, index_name, it.key(),
             "weight_map value is not a file name");
      const auto& shard = it->get_ref<const std::string&>();
      if (!is_plain_file_name(shard))
        fail(ErrorKind::kMalformedFile, index_name, it.key(),
             "shard name \"" + shard + "\" is not a plain file name inside the checkpoint folder",
             "no '/', '\\', '..' or absolute paths");
      if (!shard.ends_with(".safetensors"))
        fail(ErrorKind::kMalformedFile, index_name, it.key(),
             "weight_map names \"" + shard + "\" as a shard, which is not a .safetensors file",
             "shard files named *.safetensors");
      expected[shard].push_back(it.key());
    }
    std::optional<uint64_t> total_size;
    if (auto md = doc.find("metadata"); md != doc.end() && !md->is_null()) {
      if (!md->is_object())
        fail(ErrorKind::kMalformedFile, index_name, "", "index \"metadata\" is not an object");
      for (auto it = md->begin(); it != md->end(); ++it) ck.index_metadata_[it.key()] = it->dump();
      if (auto ts = md->find("total_size"); ts != md->end() && !ts->is_null()) {
        // Some writers emit total_size as a float; accept it when it is a whole number.
        if (ts->is_number_unsigned()) {
          total_size = ts->get<uint64_t>();
        } else if (ts->is_number_float() && ts->get<double>() >= 0 && ts->get<double>() < 1.8e19 &&
                   ts->get<double>() ==
                       static_cast<double>(static_cast<uint64_t>(ts->get<double>()))) {
          total_size = static_cast<uint64_t>(ts->get<double>());
        } else {
          fail(ErrorKind::kMalformedFile, index_name, "",
               "metadata.total_size " + ts->dump() + " is not a byte count");
        }
      }
    }
    for (const auto& [shard, names] : expected) {
      ck.shards_.push_back(SafetensorsFile::open(dir / shard));
      const auto& sf = ck.shards_.back();
      for (const auto& n : names)
        if (!sf.header().find(n))
          fail(ErrorKind::kMalformedFile, sf.path(), n,
               "the index places this tensor in this shard but the shard lacks it");
      if (sf.header().tensors().size() != names.size()) {
        for (const auto& t : sf.header().tensors()) {
          auto w = wm->find(t.name);
          if (w == wm->end())
            fail(ErrorKind::kMalformedFile, sf.path(), t.name,
                 "tensor is in the shard but not in the index's weight_map");
          if (w->get<std::string>() == shard) continue;
          fail(ErrorKind::kMalformedFile, sf.path(), t.name,
               "tensor is in this shard but the index places it in " + w->get<std::string>());
        }
      }
    }
    for (size_t s = 0; s < ck.shards_.size(); ++s)
      for (const auto& t : ck.shards_[s].header().tensors()) {
        ck.entries_.emplace(t.name, Entry{&t, s});
        ck.total_bytes_ += t.nbytes();
      }
    if (total_size && *total_size != ck.total_bytes_)
      fail(ErrorKind::kMalformedFile, index_name, "",
           "metadata.total_size is " + std::to_string(*total_size) + " but the shards hold " +
               std::to_string(ck.total_bytes_) + " tensor bytes",
           "the sum of all tensor sizes");
  } else {
    const fs::path single = dir / kSingleFileName;
    if (!fs::exists(single, ec))
      fail(
          ErrorKind::kInvalidArgument, dir.string(), "",
          std::string("no checkpoint here: neither ") + kIndexFileName + " nor " + kSingleFileName);
    ck.shards_.push_back(SafetensorsFile::open(single));
    for (const auto& t : ck.shards_[0].header().tensors()) {
      ck.entries_.emplace(t.name, Entry{&t, 0});
      ck.total_bytes_ += t.nbytes();
    }
  }
}

const Checkpoint::Entry* Checkpoint::find(std::string_view name) const {
  auto it = entries_.find(std::string(name));
  return it == entries_.end() ? nullptr : &it->second;
}

}  // namespace moeckpt
