#include "io/file.hpp"

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "moeckpt/error.hpp"

namespace moeckpt::io {
namespace {

std::string errno_text(int err) {
  return std::strerror(err);
}

// Fault injection for the disk-full tests: MOECKPT_FAULT_ENOSPC_AFTER_BYTES=N makes writes fail
// with ENOSPC once N bytes have been written by this process (for file systems where
// preallocation does not catch a full disk up front).
std::atomic<int64_t>& enospc_budget() {
  static std::atomic<int64_t> budget = [] {
    const char* v = std::getenv("MOECKPT_FAULT_ENOSPC_AFTER_BYTES");
    return v ? std::atoll(v) : int64_t{-1};
  }();
  return budget;
}

bool injected_enospc(size_t bytes) {
  auto& b = enospc_budget();
  if (b.load(std::memory_order_relaxed) < 0) return false;
  return b.fetch_sub(static_cast<int64_t>(bytes)) < static_cast<int64_t>(bytes);
}

}  // namespace

File File::open_read(const std::filesystem::path& path) {
  // Non-blocking open: a FIFO (or a device) in place of a file would otherwise block open()
  // forever; the type is checked on the descriptor, then reads block as usual.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0)
    fail(ErrorKind::kIo, path.string(), "", "cannot open for reading: " + errno_text(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(ErrorKind::kMalformedFile, path.string(), "",
         std::string("is not a regular file (") + file_type_name(st.st_mode) + ")",
         "a regular file");
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    const int err = errno;
    ::close(fd);
    fail(ErrorKind::kIo, path.string(), "", "cannot set blocking mode: " + errno_text(err));
  }
  return File(fd, path.string());
}

const char* file_type_name(unsigned mode) noexcept {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return "regular file";
    case S_IFDIR:
      return "a directory";
    case S_IFIFO:
      return "a FIFO";
    case S_IFCHR:
      return "a character device";
    case S_IFBLK:
      return "a block device";
    case S_IFSOCK:
      return "a socket";
    case S_IFLNK:
      return "a symbolic link";
    default:
      return "an unknown file type";
  }
}

File File::create_exclusive(const std::filesystem::path& path,
                            const std::filesystem::path& name_in_errors) {
  const auto& shown = name_in_errors.empty() ? path : name_in_errors;
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0)
    fail(ErrorKind::kDestination, shown.string(), "", "cannot create: " + errno_text(errno));
  return File(fd, shown.string());
}

File::File(File&& other) noexcept : fd_(other.fd_), path_(std::move(other.path_)) {
  other.fd_ = -1;
}

File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    path_ = std::move(other.path_);
    other.fd_ = -1;
  }
  return *this;
}

File::~File() {
  if (fd_ >= 0) ::close(fd_);
}

uint64_t File::size() const {
  struct stat st {};
  if (::fstat(fd_, &st) != 0) fail(ErrorKind::kIo, path_, "", "cannot stat: " + errno_text(errno));
  return static_cast<uint64_t>(st.st_size);
}

void File::pread_exact(uint64_t offset, std::span<uint8_t> out) const {
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n =
        ::pread(fd_, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(ErrorKind::kIo, path_, "",
           "read error at byte " + std::to_string(offset + done) + ": " + errno_text(errno));
    }
    if (n == 0)
      fail(ErrorKind::kIo, path_, "",
           "file ended at byte " + std::to_string(offset + done) + " while reading " +
               std::to_string(out.size()) + " bytes at " + std::to_string(offset) +
               " (was it truncated or changed while being read?)");
    done += static_cast<size_t>(n);
  }
}

void File::pwrite_all(uint64_t offset, std::span<const uint8_t> bytes) const {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = injected_enospc(bytes.size() - done)
                    ? (errno = ENOSPC, -1)
                    : ::pwrite(fd_, bytes.data() + done, bytes.size() - done,
                               static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(ErrorKind::kDestination, path_, "",
           "write error at byte " + std::to_string(offset + done) + ": " + errno_text(errno));
    }
    done += static_cast<size_t>(n);
  }
}

void File::preallocate(uint64_t size) const {
  if (size == 0) return;
  int rc = ::posix_fallocate(fd_, 0, static_cast<off_t>(size));
  // Not every file system supports it (EOPNOTSUPP/EINVAL): then blocks are allocated on write.
  if (rc == ENOSPC)
    fail(ErrorKind::kDestination, path_, "",
         "no space left on device for " + std::to_string(size) + " bytes");
  if (rc != 0 && rc != EOPNOTSUPP && rc != EINVAL)
    fail(ErrorKind::kDestination, path_, "", "fallocate: " + errno_text(rc));
}

void File::truncate(uint64_t size) const {
  if (::ftruncate(fd_, static_cast<off_t>(size)) != 0)
    fail(ErrorKind::kDestination, path_, "", "cannot set size: " + errno_text(errno));
}

void File::sync() const {
  if (::fsync(fd_) != 0) fail(ErrorKind::kDestination, path_, "", "fsync: " + errno_text(errno));
}

void File::start_writeback() const noexcept {
#ifdef SYNC_FILE_RANGE_WRITE
  ::sync_file_range(fd_, 0, 0, SYNC_FILE_RANGE_WRITE);
#endif
}

void File::close() {
  if (fd_ >= 0) {
    int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0 && errno != EINTR)
      fail(ErrorKind::kDestination, path_, "", "close: " + errno_text(errno));
  }
}

void sync_directory(const std::filesystem::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    fail(ErrorKind::kDestination, dir.string(), "", "cannot open directory: " + errno_text(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL)
    fail(ErrorKind::kDestination, dir.string(), "", "fsync of directory: " + errno_text(err));
}

std::filesystem::path temporary_name_for(const std::filesystem::path& final_path,
                                         std::optional<uint64_t> writer_tag) {
  static std::atomic<unsigned> counter{0};
  const uint64_t writer = writer_tag ? *writer_tag : static_cast<uint64_t>(::getpid());
  auto name = "." + final_path.filename().string() + ".tmp." + std::to_string(writer) + "." +
              std::to_string(counter++);
  return final_path.parent_path() / name;
}

std::optional<std::string> final_name_of_temporary(std::string_view file_name) {
  // "." + final name + ".tmp." + pid + "." + counter
  auto digits = [](std::string_view d) {
    return !d.empty() &&
           std::all_of(d.begin(), d.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  const auto counter_dot = file_name.rfind('.');
  if (counter_dot == std::string_view::npos || !digits(file_name.substr(counter_dot + 1)))
    return std::nullopt;
  const auto head = file_name.substr(0, counter_dot);
  const auto pid_dot = head.rfind('.');
  if (pid_dot == std::string_view::npos || !digits(head.substr(pid_dot + 1))) return std::nullopt;
  const auto named = head.substr(0, pid_dot);
  constexpr std::string_view kTmp = ".tmp";
  if (!named.starts_with('.') || !named.ends_with(kTmp) || named.size() <= 1 + kTmp.size())
    return std::nullopt;
  return std::string(named.substr(1, named.size() - 1 - kTmp.size()));
}

void write_file_atomically(const std::filesystem::path& path, std::string_view text,
                           std::optional<uint64_t> writer_tag) {
  auto tmp = temporary_name_for(path, writer_tag);
  try {
    File f = File::create_exclusive(tmp, path);
    f.pwrite_all(0, {reinterpret_cast<const uint8_t*>(text.data()), text.size()});
    f.sync();
    f.close();
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec)
      fail(ErrorKind::kDestination, path.string(), "",
           "cannot rename temporary file into place: " + ec.message());
    sync_directory(path.has_parent_path() ? path.parent_path() : std::filesystem::path("."));
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
}

std::string read_small_file(const std::filesystem::path& path, uint64_t max_bytes) {
  File f = File::open_read(path);
  uint64_t size = f.size();
  if (size > max_bytes)
    fail(ErrorKind::kMalformedFile, path.string(), "",
         "file too large: " + std::to_string(size) + " bytes",
         "at most " + std::to_string(max_bytes));
  std::string text(size, '\0');
  f.pread_exact(0, {reinterpret_cast<uint8_t*>(text.data()), text.size()});
  return text;
}

}  // namespace moeckpt::io
