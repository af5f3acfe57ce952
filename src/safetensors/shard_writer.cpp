#include <nlohmann/json.hpp>

#include <utility>

#include "io/checksum.hpp"
#include "io/direct_write.hpp"
#include "io/file.hpp"
#include "io/open_files.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors_writer.hpp"

namespace moeckpt {

uint64_t TensorSpec::nbytes() const {
  uint64_t bits = dtype_bits(dtype);
  for (auto d : shape)
    if (__builtin_mul_overflow(bits, d, &bits))
      fail(ErrorKind::kDestination, "", name, "tensor size overflows 64 bits");
  if (bits % 8)
    fail(ErrorKind::kDestination, "", name, "sub-byte tensor does not fill whole bytes");
  return bits / 8;
}

std::vector<uint8_t> encode_header(const std::vector<TensorSpec>& tensors,
                                   const std::map<std::string, std::string>& metadata,
                                   std::vector<uint64_t>* data_offsets) {
  using nlohmann::json;
  std::string text = "{";
  bool first = true;
  if (!metadata.empty()) {
    text += "\"__metadata__\":" + json(metadata).dump();
    first = false;
  }
  uint64_t offset = 0;
  if (data_offsets) data_offsets->clear();
  for (const auto& t : tensors) {
    uint64_t n = t.nbytes();
    if (data_offsets) data_offsets->push_back(offset);
    if (!first) text += ",";
    first = false;
    text += json(t.name).dump() + ":{\"dtype\":\"" + std::string(dtype_name(t.dtype)) +
            "\",\"shape\":" + json(t.shape).dump() + ",\"data_offsets\":[" +
            std::to_string(offset) + "," + std::to_string(offset + n) + "]}";
    offset += n;
  }
  text += "}";
  text.append((8 - text.size() % 8) % 8, ' ');  // data area starts 8-byte aligned
  std::vector<uint8_t> out(8 + text.size());
  uint64_t len = text.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<uint8_t>(len >> (8 * i));
  std::copy(text.begin(), text.end(), out.begin() + 8);
  return out;
}

ShardWriter::ShardWriter(std::filesystem::path final_path, std::vector<TensorSpec> tensors,
                         std::map<std::string, std::string> metadata, bool sparse)
    : final_path_(std::move(final_path)), tensors_(std::move(tensors)) {
  std::vector<uint64_t> offsets;
  auto header = encode_header(tensors_, metadata, &offsets);
  uint64_t data_size = 0;
  for (const auto& t : tensors_) data_size += t.nbytes();
  file_size_ = header.size() + data_size;
  file_offsets_.resize(offsets.size());
  for (size_t i = 0; i < offsets.size(); ++i) file_offsets_[i] = header.size() + offsets[i];
  written_ = std::make_unique<std::atomic<uint64_t>[]>(tensors_.size());
  temp_path_ = io::temporary_name_for(final_path_);
  io::File file = io::File::create_exclusive(temp_path_, final_path_);
  try {
    if (!sparse) file.preallocate(file_size_);
    file.truncate(file_size_);
    file.pwrite_all(0, header);
    checksum_ = std::make_unique<io::ChunkedChecksum>(file_size_);
    checksum_->add(0, header);
    const auto id = io::identity_of(file);
    std::error_code ec;
    auto absolute = std::filesystem::absolute(temp_path_, ec);
    // Every shard's file exists (and has its blocks) from here on; its descriptor is one of the
    // bounded set, so a checkpoint of thousands of shards does not hold thousands open.
    file_key_ = io::OpenFiles::instance().add(std::move(file), ec ? temp_path_ : absolute,
                                              io::OpenFiles::Use::kWrite, id);
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(temp_path_, ec);
    throw;
  }
}

ShardWriter::~ShardWriter() {
  if (file_key_) io::OpenFiles::instance().remove(file_key_);
  if (!committed_) {
    std::error_code ec;
    std::filesystem::remove(temp_path_, ec);
  }
}

void ShardWriter::write(size_t i, uint64_t offset, std::span<const uint8_t> bytes) {
  const auto& t = tensors_.at(i);
  uint64_t n = t.nbytes();
  if (offset > n || bytes.size() > n - offset)
    fail(ErrorKind::kDestination, final_path_.string(), t.name,
         "piece of " + std::to_string(bytes.size()) + " bytes at " + std::to_string(offset) +
             " does not fit the tensor's " + std::to_string(n) + " bytes");
  const auto file = io::OpenFiles::instance().get(file_key_);
  // Hashed from the caller's buffer on its way out (no read-back of the file).
  checksum_->add(file_offsets_[i] + offset, bytes);
  uint64_t buffered = 0;
  {
    // Writes to one file serialize on its inode lock anyway; waiting here (asleep) instead of
    // spinning in the kernel leaves the CPU to the threads that are computing.
    std::lock_guard lock(write_mutex_);
    buffered = io::write_bypassing_cache(*file, file_offsets_[i] + offset, bytes, direct_);
  }
  written_[i] += bytes.size();
  // Start writeback of what sits dirty so the final fsync does not wait for all of it.
  if (buffered && (unflushed_ += buffered) >= kWritebackBytes) {
    unflushed_ = 0;
    file->start_writeback();
  }
}

void ShardWriter::leave_hole(size_t i) {
  written_[i] = tensors_.at(i).nbytes();
}

void ShardWriter::commit() {
  for (size_t i = 0; i < tensors_.size(); ++i)
    if (written_[i].load() != tensors_[i].nbytes())
      fail(ErrorKind::kDestination, final_path_.string(), tensors_[i].name,
           "only " + std::to_string(written_[i].load()) + " of " +
               std::to_string(tensors_[i].nbytes()) + " bytes were written");
  {
    // The last use of the descriptor: fsync covers what earlier (closed) descriptors wrote too,
    // and a writeback error nobody has seen yet is reported to this one.
    const auto file = io::OpenFiles::instance().take(std::exchange(file_key_, 0));
    checksum_text_ = checksum_->finish(*file);
    file->sync();
    if (file.use_count() == 1) file->close();  // its error counts; a holder left closes it later
  }
  std::error_code ec;
  std::filesystem::rename(temp_path_, final_path_, ec);
  if (ec)
    fail(ErrorKind::kDestination, final_path_.string(), "",
         "cannot rename temporary file into place: " + ec.message());
  committed_ = true;
  io::sync_directory(final_path_.parent_path().empty() ? "." : final_path_.parent_path());
}

}  // namespace moeckpt
