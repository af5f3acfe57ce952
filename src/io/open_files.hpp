#pragma once
// A bound on the descriptors this process keeps open for checkpoint files: every input shard and
// every output shard being written is registered here, open, with what it was then, and at most
// capacity() of them stay open (least recently used closed first). One closed to make room is
// reopened by path when it is used again, and refused unless it is still the file registered:
// the same device and inode and, for a file read, the same size and modification time. So a file
// replaced by rename keeps being read from the opened inode while its descriptor is open, and once
// that descriptor was closed the replacement is refused, never read.
#include <cstdint>
#include <filesystem>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/file.hpp"

namespace moeckpt::io {

// What identifies an opened file: where it lives and, for one that is read, its size and
// modification time then.
struct FileIdentity {
  uint64_t dev = 0;
  uint64_t ino = 0;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
};
FileIdentity identity_of(const File& file);

class OpenFiles {
 public:
  enum class Use {
    kRead,   // reopened read-only; inode, size and modification time must be unchanged
    kWrite,  // one of our temporary outputs: reopened read-write; same inode (it grows as written)
  };
  // The process's registry. Its capacity is fixed when first used: MOECKPT_MAX_OPEN_FILES, else a
  // quarter of the soft open-file limit, between 16 and 1024 (room for everything else the
  // process opens: locks, manifests, an interpreter's own files).
  static OpenFiles& instance();
  explicit OpenFiles(size_t capacity);
  OpenFiles(const OpenFiles&) = delete;
  OpenFiles& operator=(const OpenFiles&) = delete;

  // Registers `file`, opened at `path` (absolute: a later chdir must not redirect a reopen) and
  // identified by `id`. Returns its key. Its descriptor (or another's) may be closed at once to
  // stay within capacity().
  uint64_t add(File file, std::filesystem::path path, Use use, const FileIdentity& id);
  // The open file of `key`; holding the pointer keeps its descriptor open (a read in progress).
  // Reopens it when it was closed, and throws when it is no longer the file registered.
  std::shared_ptr<File> get(uint64_t key);
  // Forgets `key` and returns its file open (reopened if need be) for a last use, such as an
  // output's fsync and checked close.
  std::shared_ptr<File> take(uint64_t key);
  // Forgets `key`; its descriptor closes once nobody holds it.
  void remove(uint64_t key) noexcept;

  size_t capacity() const;
  void set_capacity(size_t capacity);  // at least 1; closes what is over it
  size_t open_count() const;           // descriptors kept open here
  uint64_t reopen_count() const;       // reopens so far

 private:
  struct Entry {
    std::filesystem::path path;  // to reopen
    std::string name;            // for messages: the name the file was opened under
    Use use = Use::kRead;
    FileIdentity id;
    std::shared_ptr<File> file;         // null while closed
    std::list<uint64_t>::iterator lru;  // valid while open
  };
  std::shared_ptr<File> reopen(const Entry& e) const;
  // Moves the descriptors over capacity (least recently used first) into `closing`, which the
  // caller destroys after unlocking: close() is a system call.
  void trim_locked(std::vector<std::shared_ptr<File>>& closing);

  mutable std::mutex mutex_;
  size_t capacity_;
  uint64_t next_key_ = 1;
  uint64_t reopens_ = 0;
  std::unordered_map<uint64_t, Entry> entries_;
  std::list<uint64_t> lru_;  // keys of the open entries, most recently used first
};

}  // namespace moeckpt::io
