#include "moeckpt/tensor_source.hpp"

#include <cstring>

#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"

namespace moeckpt {

const SourceTensor* TensorSource::find(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

std::vector<uint8_t> TensorSource::read_all(const SourceTensor& t) const {
  std::vector<uint8_t> out(t.nbytes);
  read(t, 0, out);
  return out;
}

void TensorSource::index() {
  by_name_.clear();
  for (size_t i = 0; i < tensors_.size(); ++i) by_name_.emplace(tensors_[i].name, i);
}

CheckpointSource::CheckpointSource(const std::vector<std::filesystem::path>& dirs,
                                   std::optional<Dtype> cast) {
  for (const auto& d : dirs)
    checkpoints_.push_back(std::make_unique<Checkpoint>(Checkpoint::open(d, cast)));
  for (size_t p = 0; p < checkpoints_.size(); ++p) {
    const auto& ck = *checkpoints_[p];
    for (const auto& name : ck.names()) {
      const auto* e = ck.find(name);
      tensors_.push_back(
          {name, e->info->dtype, e->info->shape, ck.file_of(*e), p, e->info->nbytes()});
    }
  }
  index();
}

CheckpointSource::~CheckpointSource() = default;

void CheckpointSource::read(const SourceTensor& t, uint64_t offset, std::span<uint8_t> out) const {
  if (t.stored) return read(*t.stored, t.slice_offset + offset, out);
  const auto& ck = *checkpoints_.at(t.part);
  ck.read(*ck.find(t.name), offset, out);
  bytes_read_ += out.size();
}

void CheckpointSource::prefetch(const SourceTensor& t, uint64_t offset, uint64_t bytes) const {
  if (t.stored) return prefetch(*t.stored, t.slice_offset + offset, bytes);
  const auto& ck = *checkpoints_.at(t.part);
  const auto* e = ck.find(t.name);
  ck.prefetch(*e, offset, bytes);
}

std::map<std::string, std::string> CheckpointSource::metadata(size_t part) const {
  const auto& ck = *checkpoints_.at(part);
  return ck.shard_count() ? ck.shard(0).header().metadata() : std::map<std::string, std::string>{};
}

std::vector<const SourceTensor*> CheckpointSource::all(std::string_view name) const {
  std::vector<const SourceTensor*> out;
  for (const auto& t : tensors_)
    if (t.name == name) out.push_back(&t);
  return out;
}

MemorySource::MemorySource(std::vector<Entry> entries,
                           std::map<std::string, std::string> index_metadata,
                           const std::map<std::string, uint64_t>& windows)
    : index_metadata_(std::move(index_metadata)) {
  for (auto& e : entries) {
    uint64_t bits = dtype_bits(e.dtype);
    for (auto d : e.shape)
      if (__builtin_mul_overflow(bits, d, &bits))
        fail(ErrorKind::kInvalidArgument, "", e.name, "tensor size overflows");
    const auto window = windows.find(e.name);
    const bool windowed = window != windows.end();
    const uint64_t offset = windowed ? window->second : 0;
    if (windowed ? offset > bits / 8 || e.bytes.size() > bits / 8 - offset
                 : bits / 8 != e.bytes.size())
      fail(ErrorKind::kInvalidArgument, "", e.name,
           "has " + std::to_string(e.bytes.size()) + " bytes" +
               (windowed ? " at offset " + std::to_string(offset) : std::string()) +
               " but its dtype and shape need " + std::to_string(bits / 8));
    tensors_.push_back({e.name, e.dtype, e.shape, "<memory>", 0, bits / 8});
    bytes_.push_back(e.bytes);
    window_offsets_.push_back(offset);
  }
  index();
  std::unordered_map<std::string, int> seen;
  for (const auto& t : tensors_)
    if (seen[t.name]++)
      fail(ErrorKind::kInvalidArgument, "<memory>", t.name, "duplicate tensor name");
}

std::span<const uint8_t> MemorySource::bytes(const SourceTensor& t) const {
  return bytes_.at(static_cast<size_t>(&t - tensors_.data()));
}

void MemorySource::read(const SourceTensor& t, uint64_t offset, std::span<uint8_t> out) const {
  if (t.stored) return read(*t.stored, t.slice_offset + offset, out);
  const auto b = bytes(t);
  const uint64_t w = window_offsets_.at(static_cast<size_t>(&t - tensors_.data()));
  if (offset < w || offset - w > b.size() || out.size() > b.size() - (offset - w))
    fail(ErrorKind::kInvalidArgument, "<memory>", t.name,
         "read of bytes [" + std::to_string(offset) + ", " + std::to_string(offset + out.size()) +
             ") outside the " + std::to_string(b.size()) + " bytes held from offset " +
             std::to_string(w));
  std::memcpy(out.data(), b.data() + (offset - w), out.size());
}

std::map<std::string, std::string> CheckpointSource::index_metadata(size_t part) const {
  return checkpoints_.at(part)->index_metadata();
}

}  // namespace moeckpt
