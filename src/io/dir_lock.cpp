#include "io/dir_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "moeckpt/error.hpp"

namespace moeckpt::io {

DirectoryLock::DirectoryLock(const std::filesystem::path& dir) : path_(dir / kLockFileName) {
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

DirectoryLock::~DirectoryLock() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());
  ::close(fd_);
}

}  // namespace moeckpt::io
