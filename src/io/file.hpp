#pragma once
// A file descriptor with exact positional reads and writes. Short reads are errors (a file that
// shrinks under us is reported, never turned into garbage or a SIGBUS).
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>

namespace moeckpt::io {

// The alignment of O_DIRECT transfers: offsets, sizes and memory (the largest logical block size
// in use; 512-byte devices accept it too).
inline constexpr uint64_t kDirectAlign = 4096;

class File {
 public:
  File() = default;
  static File open_read(const std::filesystem::path& path);
  // Creates a new file (fails if it exists), mode 0644. Errors after creation name
  // `name_in_errors` when given: the final name a temporary file is written for.
  static File create_exclusive(const std::filesystem::path& path,
                               const std::filesystem::path& name_in_errors = {});
  // Opens an existing regular file read-write, never through a symbolic link (a temporary file of
  // ours, reopened). Errors name `name_in_errors` when given.
  static File open_write(const std::filesystem::path& path,
                         const std::filesystem::path& name_in_errors = {});
  // Opens an existing regular file for appending (O_APPEND), never through a symbolic link.
  static File open_append(const std::filesystem::path& path);
  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File();

  bool is_open() const noexcept { return fd_ >= 0; }
  int fd() const noexcept { return fd_; }
  const std::string& path() const noexcept { return path_; }
  uint64_t size() const;

  void pread_exact(uint64_t offset, std::span<uint8_t> out) const;
  void pwrite_all(uint64_t offset, std::span<const uint8_t> bytes) const;
  // Reserves the blocks up front where the file system supports it (ENOSPC early, less
  // fragmentation).
  void preallocate(uint64_t size) const;
  void truncate(uint64_t size) const;
  void sync() const;
  // fdatasync: the data and the size (what is needed to read it back), not every timestamp.
  void sync_data() const;
  // Appends all of `bytes` in one write where the kernel allows (a file from open_append).
  void append_all(std::span<const uint8_t> bytes) const;
  // Asks the kernel to begin writing dirty pages back now (no wait; best effort).
  void start_writeback() const noexcept;
  // Writes `bytes` at `offset` through O_DIRECT, the descriptor switched to it for the call:
  // `offset`, `bytes.size()` and the memory must be aligned as the device needs (kDirectAlign is
  // enough everywhere). Returns false, having written nothing, where the file system takes no
  // O_DIRECT; a failure after the first block is an error as for pwrite_all.
  bool pwrite_direct(uint64_t offset, std::span<const uint8_t> bytes) const;
  void close();

 private:
  File(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_ = -1;
  std::string path_;
};

// What an open() that failed with `err` means, for messages: EMFILE and ENFILE say which limit on
// open files was reached (the process's, with its value, or the system's), not just "Too many
// open files".
std::string open_error_text(int err);
// The soft limit on this process's open descriptors (RLIMIT_NOFILE); 0 where unknown or unlimited.
uint64_t open_file_limit() noexcept;
// Raises the soft RLIMIT_NOFILE to the hard limit (capped by the kernel's fs.nr_open); best
// effort, for the command-line tool at start (a library leaves the process's limits alone).
void raise_open_file_limit() noexcept;

// fsync of a directory, so a rename inside it is durable.
void sync_directory(const std::filesystem::path& dir);

// Writes `text` to `path` through a temporary name: write, fsync, rename, fsync the directory.
// `writer_tag`: stands in for the process id in the temporary name, where processes on several
// machines (whose ids may coincide) write the same file.
void write_file_atomically(const std::filesystem::path& path, std::string_view text,
                           std::optional<uint64_t> writer_tag = std::nullopt);

std::string read_small_file(const std::filesystem::path& path, uint64_t max_bytes);

// A unique temporary name next to `final_path` (same directory, so rename is atomic).
// "a FIFO", "a directory", ... for a stat mode (messages).
const char* file_type_name(unsigned mode) noexcept;

std::filesystem::path temporary_name_for(const std::filesystem::path& final_path,
                                         std::optional<uint64_t> writer_tag = std::nullopt);
// The final name a temporary_name_for() name stands for; nullopt for any other name.
std::optional<std::string> final_name_of_temporary(std::string_view file_name);

}  // namespace moeckpt::io
