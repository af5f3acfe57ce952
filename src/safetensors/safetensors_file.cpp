#include <sys/stat.h>

#include "io/file.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"

namespace moeckpt {

namespace {

struct FileState {
  uint64_t size = 0;
  int64_t mtime_ns = 0;
};

FileState state_of(int fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail(ErrorKind::kIo, path, "", "cannot stat the open file");
  return {static_cast<uint64_t>(st.st_size),
          static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec};
}

}  // namespace

SafetensorsFile::SafetensorsFile(std::unique_ptr<io::File> file, Header header)
    : file_(std::move(file)), header_(std::move(header)) {
  const auto st = state_of(file_->fd(), file_->path());
  size_at_open_ = st.size;
  mtime_ns_at_open_ = st.mtime_ns;
}
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  auto file = std::make_unique<io::File>(io::File::open_read(path));
  const std::string& name = file->path();
  uint64_t size = file->size();
  if (size < 8)
    fail(ErrorKind::kMalformedFile, name, "",
         "file of " + std::to_string(size) + " bytes is too short", "at least 8 bytes");
  uint8_t prefix[8];
  file->pread_exact(0, prefix);
  uint64_t n = Header::header_length(std::span<const uint8_t, 8>(prefix), size, name);
  std::vector<uint8_t> text(n);
  file->pread_exact(8, text);
  Header header = Header::parse(text, size - 8 - n, name);
  SafetensorsFile sf(std::move(file), std::move(header));
  if (sf.size_at_open_ != size)
    fail(ErrorKind::kIo, sf.path(), "",
         "file changed while its header was read (size " + std::to_string(size) + " -> " +
             std::to_string(sf.size_at_open_) + " bytes)",
         "the file to stay unchanged during the conversion");
  return sf;
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
    fail(ErrorKind::kMalformedFile, path(), tensor.name,
         "read of " + std::to_string(out.size()) + " bytes at " + std::to_string(offset) +
             " is outside the tensor's " + std::to_string(tensor.nbytes()) + " bytes");
  try {
    file_->pread_exact(header_.data_offset() + tensor.begin + offset, out);
  } catch (const Error& e) {
    check_unchanged(tensor);
    fail(e.info().kind, path(), tensor.name, e.info().what);
  }
  // Bytes read after an in-place rewrite may mix old and new contents: refuse them.
  check_unchanged(tensor);
}

void SafetensorsFile::check_unchanged(const TensorInfo& tensor) const {
  const auto now = state_of(file_->fd(), path());
  if (now.size < size_at_open_)
    fail(ErrorKind::kIo, path(), tensor.name,
         "file shrank from " + std::to_string(size_at_open_) + " to " + std::to_string(now.size) +
             " bytes while being read (truncated by another process?)",
         "the file to stay unchanged during the conversion");
  if (now.size != size_at_open_ || now.mtime_ns != mtime_ns_at_open_)
    fail(ErrorKind::kIo, path(), tensor.name,
         now.size != size_at_open_
             ? "file changed while being read (it grew from " + std::to_string(size_at_open_) +
                   " to " + std::to_string(now.size) + " bytes)"
             : std::string("file changed while being read (modified since it was opened)"),
         "the file to stay unchanged during the conversion");
}

std::vector<uint8_t> SafetensorsFile::read_all(const TensorInfo& tensor) const {
  std::vector<uint8_t> bytes(tensor.nbytes());
  read(tensor, 0, bytes);
  return bytes;
}

}  // namespace moeckpt
