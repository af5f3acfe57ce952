#include "io/dir_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <thread>

#include "moeckpt/error.hpp"

namespace moeckpt::io {

DirectoryLock::DirectoryLock(const std::filesystem::path& dir, const std::string& file_name,
                             std::chrono::milliseconds patience)
    : path_(dir / file_name) {
  const auto deadline = std::chrono::steady_clock::now() + patience;
  // A releasing holder unlinks the file while locked; whoever locked that unlinked inode must
  // retry on the new file, or two processes would each hold "the" lock.
  for (int attempt = 0; attempt < 100; ++attempt) {
    int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
      fail(ErrorKind::kDestination, path_.string(), "",
           std::string("cannot create lock file: ") + std::strerror(errno));
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      int err = errno;
      ::close(fd);
      if (err == EWOULDBLOCK && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        --attempt;
        continue;
      }
      if (err == EWOULDBLOCK)
        fail(ErrorKind::kDestination, dir.string(), "",
             "another moeckpt conversion is writing into this folder",
             "one conversion per destination (lock file " + path_.string() + ")");
      fail(ErrorKind::kDestination, path_.string(), "",
           std::string("cannot lock: ") + std::strerror(err));
    }
    struct stat held {
    }, now{};
    if (::fstat(fd, &held) == 0 && ::stat(path_.c_str(), &now) == 0 && held.st_ino == now.st_ino &&
        held.st_dev == now.st_dev) {
      fd_ = fd;
      std::string pid = std::to_string(::getpid()) + "\n";
      // Who holds it, for a human looking at the folder; failure to write it is harmless.
      if (::ftruncate(fd, 0) == 0 && ::pwrite(fd, pid.data(), pid.size(), 0) < 0) errno = 0;
      return;
    }
    ::close(fd);
  }
  fail(ErrorKind::kDestination, path_.string(), "", "lock file keeps being replaced");
}

bool DirectoryLock::is_held(const std::filesystem::path& path) {
  // Read-write: NFS emulates flock with POSIX locks, and an exclusive one needs a writable
  // descriptor. Any failure other than a missing file counts as held: a live worker is never
  // taken for a dead one.
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return errno != ENOENT;
  const bool held = ::flock(fd, LOCK_EX | LOCK_NB) != 0;
  ::close(fd);  // drops the lock if we took it
  return held;
}

DirectoryLock::~DirectoryLock() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());
  ::close(fd_);
}

}  // namespace moeckpt::io
