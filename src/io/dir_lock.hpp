#pragma once
// An exclusive lock on a destination folder, held through a lock file. flock() dies with the
// process (a SIGKILLed conversion never leaves a stale lock); the file itself stays until release.
#include <filesystem>

namespace moeckpt::io {

inline constexpr const char* kLockFileName = ".moeckpt.lock";

class DirectoryLock {
 public:
  // Takes the lock or throws: another process (or another conversion in this one) holds it.
  explicit DirectoryLock(const std::filesystem::path& dir);
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;
  ~DirectoryLock();  // removes the lock file, then unlocks

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

}  // namespace moeckpt::io
