#include "io/dir_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <thread>

#include "io/file.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt::io {
namespace {

// Lock files are never followed: a symlink or a hard link planted under a lock name would make
// the truncation and the PID written below land in someone else's file (a source checkpoint's
// config, a user's notes). O_NOFOLLOW refuses a symlink; a second name on the inode is refused
// before anything is written; a FIFO or device is refused without blocking (O_NONBLOCK).
int open_lock_file(const std::filesystem::path& path, int flags) {
  int fd = ::open(path.c_str(), flags | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int err = errno;
    if (err == ELOOP)
      fail(ErrorKind::kDestination, path.string(), "",
           "is a symbolic link in place of a lock file (never followed)",
           "a regular lock file written by moeckpt, or none: remove the link");
    errno = err;
    return -1;
  }
  struct stat st {};
  std::string wrong;
  if (::fstat(fd, &st) != 0)
    wrong = std::string("cannot stat: ") + std::strerror(errno);
  else if (!S_ISREG(st.st_mode))
    wrong = std::string("is ") + file_type_name(st.st_mode) + " in place of a lock file";
  else if (st.st_nlink == 0) {
    // Unlinked between our open and fstat: its holder released it. Not a planted link.
    ::close(fd);
    errno = ENOENT;
    return -1;
  } else if (st.st_nlink != 1)
    wrong = "has " + std::to_string(st.st_nlink) +
            " names (a hard link to another file in place of a lock file)";
  if (!wrong.empty()) {
    ::close(fd);
    fail(ErrorKind::kDestination, path.string(), "", wrong,
         "a regular lock file with one name, written by moeckpt, or none: remove it");
  }
  return fd;
}

}  // namespace

DirectoryLock::DirectoryLock(const std::filesystem::path& dir, const std::string& file_name,
                             std::chrono::milliseconds patience)
    : path_(dir / file_name) {
  const auto deadline = std::chrono::steady_clock::now() + patience;
  // A releasing holder unlinks the file while locked; whoever locked that unlinked inode must
  // retry on the new file, or two processes would each hold "the" lock.
  for (int attempt = 0; attempt < 100; ++attempt) {
    int fd = open_lock_file(path_, O_RDWR | O_CREAT);
    if (fd < 0 && errno == ENOENT) continue;  // opened as its holder released it: again
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
        throw LockBusy({ErrorKind::kDestination, dir.string(), "",
                        "another moeckpt conversion is writing into this folder",
                        "one conversion per destination (lock file " + path_.string() + ")"});
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
  int fd = open_lock_file(path, O_RDWR);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return false;
    if (err == EMFILE || err == ENFILE)
      fail(ErrorKind::kIo, path.string(), "",
           "cannot open the lock file: too many open files (" + std::string(std::strerror(err)) +
               ")",
           "a higher open-file limit (ulimit -n)");
    return true;
  }
  const bool held = ::flock(fd, LOCK_EX | LOCK_NB) != 0;
  ::close(fd);  // drops the lock if we took it
  return held;
}

bool DirectoryLock::remove_if_free(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(std::filesystem::symlink_status(path, ec))) return true;
  try {
    DirectoryLock taken(path.parent_path(), path.filename().string());
  } catch (const LockBusy&) {
    return false;
  }
  return true;
}

DirectoryLock::~DirectoryLock() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());
  ::close(fd_);
}

}  // namespace moeckpt::io
