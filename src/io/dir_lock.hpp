#pragma once
// An exclusive lock on a destination folder, held through a lock file. flock() dies with the
// process (a SIGKILLed conversion never leaves a stale lock); the file itself stays until release.
#include <chrono>
#include <filesystem>
#include <string>

#include "moeckpt/error.hpp"

namespace moeckpt::io {

inline constexpr const char* kLockFileName = ".moeckpt.lock";

// The lock is held by another live process (every other failure to lock is a plain Error).
class LockBusy : public Error {
 public:
  using Error::Error;
};

class DirectoryLock {
 public:
  // Takes the lock (file `file_name` in `dir`) or throws: another process (or another conversion
  // in this one) holds it. A lock held by someone else is retried for `patience` (a peer probing
  // it holds it for an instant).
  explicit DirectoryLock(const std::filesystem::path& dir,
                         const std::string& file_name = kLockFileName,
                         std::chrono::milliseconds patience = std::chrono::milliseconds(0));
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;
  ~DirectoryLock();  // removes the lock file, then unlocks

  // Whether a live process holds the lock file `path` (false when the file is absent). Takes and
  // drops the lock at once when nobody holds it; never creates or removes the file.
  static bool is_held(const std::filesystem::path& path);

  // Removes the lock file `path` that a dead process left behind, the way its holder would have:
  // taken, then unlinked while held, so that nobody taking it meanwhile is left holding a removed
  // file. Returns false (and leaves it) when a live process holds it; true when absent or removed.
  static bool remove_if_free(const std::filesystem::path& path);

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

}  // namespace moeckpt::io
