#include "io/open_files.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "moeckpt/error.hpp"

namespace moeckpt::io {
namespace {

size_t default_capacity() {
  if (const char* v = std::getenv("MOECKPT_MAX_OPEN_FILES")) {
    size_t n = 0;
    const auto end = v + std::strlen(v);
    if (auto [p, e] = std::from_chars(v, end, n); e == std::errc() && p == end && n > 0) return n;
  }
  const uint64_t limit = open_file_limit();
  if (limit == 0) return 1024;  // unlimited
  return static_cast<size_t>(std::clamp<uint64_t>(limit / 4, 16, 1024));
}

}  // namespace

FileIdentity identity_of(const File& file) {
  struct stat st {};
  if (::fstat(file.fd(), &st) != 0)
    fail(ErrorKind::kIo, file.path(), "", std::string("cannot stat: ") + std::strerror(errno));
  return {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
          static_cast<uint64_t>(st.st_size),
          static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec};
}

OpenFiles& OpenFiles::instance() {
  // Never destroyed: files may still be released by static or interpreter teardown after exit.
  static OpenFiles* files = new OpenFiles(default_capacity());
  return *files;
}

OpenFiles::OpenFiles(size_t capacity) : capacity_(std::max<size_t>(1, capacity)) {}

uint64_t OpenFiles::add(File file, std::filesystem::path path, Use use, const FileIdentity& id) {
  std::vector<std::shared_ptr<File>> closing;  // destroyed after the lock is released
  auto shared = std::make_shared<File>(std::move(file));
  std::lock_guard lock(mutex_);
  const uint64_t key = next_key_++;
  lru_.push_front(key);
  std::string name = shared->path();
  entries_.emplace(
      key, Entry{std::move(path), std::move(name), use, id, std::move(shared), lru_.begin()});
  trim_locked(closing);
  return key;
}

std::shared_ptr<File> OpenFiles::reopen(const Entry& e) const {
  const auto kind = e.use == Use::kRead ? ErrorKind::kIo : ErrorKind::kDestination;
  std::optional<File> f;
  try {
    f.emplace(e.use == Use::kRead ? File::open_read(e.path) : File::open_write(e.path, e.name));
  } catch (const Error& err) {
    fail(kind, e.name, "",
         "was closed to stay within the open-file limit and cannot be opened again: " +
             err.info().what,
         err.info().expected.empty() ? "the file to stay in place during the conversion"
                                     : err.info().expected);
  }
  const auto now = identity_of(*f);
  if (now.dev != e.id.dev || now.ino != e.id.ino)
    fail(kind, e.name, "",
         "was replaced (another file under its name, device/inode differ) since it was opened; "
         "the replacement is not read",
         "the file to stay unchanged during the conversion");
  // The words of SafetensorsFile's checks on an open descriptor: the same change reads the same.
  if (e.use == Use::kRead && now.size < e.id.size)
    fail(kind, e.name, "",
         "file shrank from " + std::to_string(e.id.size) + " to " + std::to_string(now.size) +
             " bytes while being read (truncated by another process?)",
         "the file to stay unchanged during the conversion");
  if (e.use == Use::kRead && (now.size != e.id.size || now.mtime_ns != e.id.mtime_ns))
    fail(kind, e.name, "",
         now.size != e.id.size
             ? "file changed while being read (it grew from " + std::to_string(e.id.size) + " to " +
                   std::to_string(now.size) + " bytes)"
             : std::string("file changed while being read (modified since it was opened)"),
         "the file to stay unchanged during the conversion");
  return std::make_shared<File>(std::move(*f));
}

std::shared_ptr<File> OpenFiles::get(uint64_t key) {
  Entry wanted;
  {
    std::lock_guard lock(mutex_);
    auto it = entries_.find(key);
    if (it == entries_.end())
      fail(ErrorKind::kIo, "", "", "internal error: a file was used after it was released");
    if (it->second.file) {
      lru_.splice(lru_.begin(), lru_, it->second.lru);
      return it->second.file;
    }
    wanted = Entry{it->second.path, it->second.name, it->second.use, it->second.id, nullptr, {}};
  }
  auto file = reopen(wanted);  // system calls outside the lock
  std::vector<std::shared_ptr<File>> closing;
  std::lock_guard lock(mutex_);
  ++reopens_;
  auto it = entries_.find(key);
  if (it == entries_.end()) return file;  // released meanwhile: this use is the last one
  if (it->second.file) {                  // another thread reopened it meanwhile
    closing.push_back(std::move(file));
    lru_.splice(lru_.begin(), lru_, it->second.lru);
    return it->second.file;
  }
  it->second.file = file;
  lru_.push_front(key);
  it->second.lru = lru_.begin();
  trim_locked(closing);  // closes the least recently used, never this one (it is in front)
  return file;
}

std::shared_ptr<File> OpenFiles::take(uint64_t key) {
  auto file = get(key);
  remove(key);
  return file;
}

void OpenFiles::remove(uint64_t key) noexcept {
  std::shared_ptr<File> closing;  // destroyed after the lock is released
  std::lock_guard lock(mutex_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  if (it->second.file) {
    lru_.erase(it->second.lru);
    closing = std::move(it->second.file);
  }
  entries_.erase(it);
}

void OpenFiles::trim_locked(std::vector<std::shared_ptr<File>>& closing) {
  while (lru_.size() > capacity_) {
    auto& e = entries_.at(lru_.back());
    closing.push_back(std::move(e.file));
    e.file = nullptr;
    lru_.pop_back();
  }
}

size_t OpenFiles::capacity() const {
  std::lock_guard lock(mutex_);
  return capacity_;
}

void OpenFiles::set_capacity(size_t capacity) {
  std::vector<std::shared_ptr<File>> closing;
  std::lock_guard lock(mutex_);
  capacity_ = std::max<size_t>(1, capacity);
  trim_locked(closing);
}

size_t OpenFiles::open_count() const {
  std::lock_guard lock(mutex_);
  return lru_.size();
}

uint64_t OpenFiles::reopen_count() const {
  std::lock_guard lock(mutex_);
  return reopens_;
}

}  // namespace moeckpt::io
