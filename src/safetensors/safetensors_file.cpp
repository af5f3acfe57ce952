#include <fcntl.h>
#include <sys/stat.h>

#include <utility>

#include "io/file.hpp"
#include "io/open_files.hpp"
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

SafetensorsFile::SafetensorsFile(std::string path, Header header, uint64_t size, int64_t mtime_ns)
    : path_(std::move(path)),
      header_(std::move(header)),
      size_at_open_(size),
      mtime_ns_at_open_(mtime_ns) {}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : file_key_(std::exchange(other.file_key_, 0)),
      path_(std::move(other.path_)),
      header_(std::move(other.header_)),
      size_at_open_(other.size_at_open_),
      mtime_ns_at_open_(other.mtime_ns_at_open_) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    if (file_key_) io::OpenFiles::instance().remove(file_key_);
    file_key_ = std::exchange(other.file_key_, 0);
    path_ = std::move(other.path_);
    header_ = std::move(other.header_);
    size_at_open_ = other.size_at_open_;
    mtime_ns_at_open_ = other.mtime_ns_at_open_;
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() {
  if (file_key_) io::OpenFiles::instance().remove(file_key_);
}

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  io::File file = io::File::open_read(path);
  const std::string name = file.path();
  uint64_t size = file.size();
  if (size < 8)
    fail(ErrorKind::kMalformedFile, name, "",
         "file of " + std::to_string(size) + " bytes is too short", "at least 8 bytes");
  uint8_t prefix[8];
  file.pread_exact(0, prefix);
  uint64_t n = Header::header_length(std::span<const uint8_t, 8>(prefix), size, name);
  std::vector<uint8_t> text(n);
  file.pread_exact(8, text);
  Header header = Header::parse(text, size - 8 - n, name);
  // What later reads (and a reopen) are checked against, taken after the header was read.
  const auto id = io::identity_of(file);
  if (id.size != size)
    fail(ErrorKind::kIo, name, "",
         "file changed while its header was read (size " + std::to_string(size) + " -> " +
             std::to_string(id.size) + " bytes)",
         "the file to stay unchanged during the conversion");
  SafetensorsFile sf(name, std::move(header), id.size, id.mtime_ns);
  std::error_code ec;
  auto absolute = std::filesystem::absolute(path, ec);
  sf.file_key_ = io::OpenFiles::instance().add(std::move(file), ec ? path : absolute,
                                               io::OpenFiles::Use::kRead, id);
  return sf;
}

void SafetensorsFile::read(const TensorInfo& tensor, uint64_t offset,
                           std::span<uint8_t> out) const {
  if (offset > tensor.nbytes() || out.size() > tensor.nbytes() - offset)
    fail(ErrorKind::kMalformedFile, path(), tensor.name,
         "read of " + std::to_string(out.size()) + " bytes at " + std::to_string(offset) +
             " is outside the tensor's " + std::to_string(tensor.nbytes()) + " bytes");
  std::shared_ptr<io::File> file;
  try {
    file = io::OpenFiles::instance().get(file_key_);
  } catch (const Error& e) {  // closed for the open-file limit, and not the same file anymore
    fail(e.info().kind, path(), tensor.name, e.info().what, e.info().expected);
  }
  try {
    file->pread_exact(header_.data_offset() + tensor.begin + offset, out);
  } catch (const Error& e) {
    check_unchanged(*file, tensor);
    fail(e.info().kind, path(), tensor.name, e.info().what);
  }
  // Bytes read after an in-place rewrite may mix old and new contents: refuse them.
  check_unchanged(*file, tensor);
}

void SafetensorsFile::prefetch(const TensorInfo& tensor, uint64_t offset,
                               uint64_t bytes) const noexcept {
  try {
    const auto file = io::OpenFiles::instance().get(file_key_);
    ::posix_fadvise(file->fd(), static_cast<off_t>(header_.data_offset() + tensor.begin + offset),
                    static_cast<off_t>(bytes), POSIX_FADV_WILLNEED);
  } catch (...) {
    // A hint only: the read that follows reports what is wrong.
  }
}

void SafetensorsFile::check_unchanged(const io::File& file, const TensorInfo& tensor) const {
  const auto now = state_of(file.fd(), path());
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
