#include "io/file.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"

namespace moeckpt {

SafetensorsFile::SafetensorsFile(std::unique_ptr<io::File> file, Header header)
    : file_(std::move(file)), header_(std::move(header)) {}
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  auto file = std::make_unique<io::File>(io::File::open_read(path));
  const std::string& name = file->path();
  uint64_t size = file->size();
  if (size < 8)
    fail(name, "", "file of " + std::to_string(size) + " bytes is too short", "at least 8 bytes");
  uint8_t prefix[8];
  file->pread_exact(0, prefix);
  uint64_t n = Header::header_length(std::span<const uint8_t, 8>(prefix), size, name);
  std::vector<uint8_t> text(n);
  file->pread_exact(8, text);
  Header header = Header::parse(text, size - 8 - n, name);
  return SafetensorsFile(std::move(file), std::move(header));
}

const std::string& SafetensorsFile::path() const noexcept {
  return file_->path();
}
int SafetensorsFile::fd() const noexcept {
  return file_->fd();
}

void SafetensorsFile::read(const TensorInfo& tensor, uint64_t offset,
                           std::span<uint8_t> out) const {
  if (offset > tensor.nbytes() || out.size() > tensor.nbytes() - offset)
    fail(path(), tensor.name,
         "read of " + std::to_string(out.size()) + " bytes at " + std::to_string(offset) +
             " is outside the tensor's " + std::to_string(tensor.nbytes()) + " bytes");
  try {
    file_->pread_exact(header_.data_offset() + tensor.begin + offset, out);
  } catch (const Error& e) {
    fail(path(), tensor.name, e.info().what);
  }
}

std::vector<uint8_t> SafetensorsFile::read_all(const TensorInfo& tensor) const {
  std::vector<uint8_t> bytes(tensor.nbytes());
  read(tensor, 0, bytes);
  return bytes;
}

}  // namespace moeckpt
