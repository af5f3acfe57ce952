#include "io/file.hpp"

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>

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

// An open() failure: the limit reached, with a hint, when it is one on open files.
[[noreturn]] void fail_open(ErrorKind kind, const std::string& path, const std::string& doing,
                            int err) {
  if (err == EMFILE || err == ENFILE)
    fail(kind, path, "", doing + ": " + open_error_text(err),
         "a higher open-file limit (ulimit -n), or fewer files open at once");
  fail(kind, path, "", doing + ": " + errno_text(err));
}

// A descriptor just opened must be a regular file (a FIFO or device in its place is refused).
void require_regular(int fd, const std::string& shown) {
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(ErrorKind::kMalformedFile, shown, "",
         std::string("is not a regular file (") + file_type_name(st.st_mode) + ")",
         "a regular file");
  }
}

}  // namespace

std::string open_error_text(int err) {
  if (err == EMFILE) {
    const uint64_t limit = open_file_limit();
    return "too many open files: this process has reached its limit" +
           (limit ? " of " + std::to_string(limit) : std::string()) +
           " open descriptors (RLIMIT_NOFILE, ulimit -n)";
  }
  if (err == ENFILE) return "too many open files in the system (the kernel's file table is full)";
  return errno_text(err);
}

uint64_t open_file_limit() noexcept {
  struct rlimit rl {};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return 0;
  return static_cast<uint64_t>(rl.rlim_cur);
}

void raise_open_file_limit() noexcept {
  struct rlimit rl {};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == rl.rlim_max) return;
  rlim_t want = rl.rlim_max;
#ifdef __linux__
  // An unlimited hard limit still stops at fs.nr_open (setrlimit refuses more).
  std::ifstream nr_open("/proc/sys/fs/nr_open");
  unsigned long long n = 0;
  if (nr_open >> n && n > 0 && (want == RLIM_INFINITY || want > n)) want = static_cast<rlim_t>(n);
#endif
#ifdef __APPLE__
  if (want == RLIM_INFINITY || want > OPEN_MAX) want = OPEN_MAX;
#endif
  if (want == RLIM_INFINITY || want <= rl.rlim_cur) return;
  rl.rlim_cur = want;
  (void)::setrlimit(RLIMIT_NOFILE, &rl);  // refused: the soft limit stays as it was
}

File File::open_read(const std::filesystem::path& path) {
  // Non-blocking open: a FIFO (or a device) in place of a file would otherwise block open()
  // forever; the type is checked on the descriptor, then reads block as usual.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) fail_open(ErrorKind::kIo, path.string(), "cannot open for reading", errno);
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
  if (fd < 0) fail_open(ErrorKind::kDestination, shown.string(), "cannot create", errno);
  return File(fd, shown.string());
}

File File::open_write(const std::filesystem::path& path,
                      const std::filesystem::path& name_in_errors) {
  const auto& shown = name_in_errors.empty() ? path : name_in_errors;
  // O_NONBLOCK: a FIFO in its place does not block the open (no effect on a regular file).
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
  if (fd < 0)
    fail_open(ErrorKind::kDestination, shown.string(), "cannot reopen for writing", errno);
  require_regular(fd, shown.string());
  return File(fd, shown.string());
}

File File::open_append(const std::filesystem::path& path) {
  // O_NONBLOCK: a FIFO in its place does not block the open (no effect on a regular file).
  int fd =
      ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) fail_open(ErrorKind::kDestination, path.string(), "cannot open for appending", errno);
  require_regular(fd, path.string());
  return File(fd, path.string());
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

namespace {

// Writes all of `bytes` at `offset`, retrying short writes and EINTR. With `refusable`, an EINVAL
// before any byte went through returns false (a file system that takes O_DIRECT but not the
// transfer); every other failure is an error naming `path`.
bool pwrite_loop(int fd, const std::string& path, uint64_t offset, std::span<const uint8_t> bytes,
                 bool refusable) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = injected_enospc(bytes.size() - done)
                    ? (errno = ENOSPC, -1)
                    : ::pwrite(fd, bytes.data() + done, bytes.size() - done,
                               static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (refusable && errno == EINVAL && done == 0) return false;
      fail(ErrorKind::kDestination, path, "",
           "write error at byte " + std::to_string(offset + done) + ": " + errno_text(errno));
    }
    // A short direct write ends on a block boundary or at an error reported next time.
    done += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

void File::pwrite_all(uint64_t offset, std::span<const uint8_t> bytes) const {
  pwrite_loop(fd_, path_, offset, bytes, false);
}

bool File::pwrite_direct(uint64_t offset, std::span<const uint8_t> bytes) const {
  const int flags = ::fcntl(fd_, F_GETFL);
  if (flags < 0 || ::fcntl(fd_, F_SETFL, flags | O_DIRECT) != 0) return false;
  struct Restore {
    int fd, flags;
    ~Restore() { ::fcntl(fd, F_SETFL, flags); }
  } restore{fd_, flags};
  // Refused before the first block: nothing written, the caller writes buffered.
  return pwrite_loop(fd_, path_, offset, bytes, true);
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

void File::sync_data() const {
  if (::fdatasync(fd_) != 0)
    fail(ErrorKind::kDestination, path_, "", "fdatasync: " + errno_text(errno));
}

void File::append_all(std::span<const uint8_t> bytes) const {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = injected_enospc(bytes.size() - done)
                    ? (errno = ENOSPC, -1)
                    : ::write(fd_, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(ErrorKind::kDestination, path_, "", "append failed: " + errno_text(errno));
    }
    done += static_cast<size_t>(n);
  }
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
