#pragma once
// Helpers shared by tests: temporary folders, crafting raw safetensors bytes, running the CLI.
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

// MOECKPT_UNDER_ASAN: the tests are built with AddressSanitizer (resident sets then hold its
// shadow memory; its runtime needs descriptors of its own).
#if defined(__SANITIZE_ADDRESS__)
#define MOECKPT_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MOECKPT_UNDER_ASAN 1
#endif
#endif

namespace moeckpt::test {

// How many times a randomized trial (a kill at a random moment, a random launch order) repeats:
// `full` by default and under `scripts/test.sh --full`; `fast` (fewer runs of the same checks)
// when MOECKPT_TEST_TIER=fast, which `scripts/test.sh` sets (docs/TESTING.md).
int trials(int full, int fast);

// A fresh directory under the system temp dir, removed at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& s) const { return path_ / s; }

 private:
  std::filesystem::path path_;
};

// Holds the lock file `path` (created) the way a running worker holds its own, so that workers
// run meanwhile take that worker for still running; released (and unlinked, as its holder would)
// at destruction.
class HeldLockFile {
 public:
  explicit HeldLockFile(const std::filesystem::path& path);
  ~HeldLockFile();
  HeldLockFile(const HeldLockFile&) = delete;
  HeldLockFile& operator=(const HeldLockFile&) = delete;

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

// 8-byte little-endian length + header text + data bytes.
std::vector<uint8_t> raw_safetensors(const std::string& header, const std::vector<uint8_t>& data);
void write_bytes(const std::filesystem::path& p, const std::vector<uint8_t>& bytes);
void write_text(const std::filesystem::path& p, const std::string& text);
std::vector<uint8_t> read_bytes(const std::filesystem::path& p);
std::string read_text(const std::filesystem::path& p);

struct CommandResult {
  int exit_code;
  std::string out;
  std::string err;
  uint64_t peak_rss_bytes = 0;  // the child's, from wait4 (run_cli_measured only)
};
// The files a reader would take at face value in `dir` (everything but hidden names: temporary
// files, the lock, the manifest, a staging folder), with their bytes; and the hidden names.
std::map<std::string, std::vector<uint8_t>> final_files(const std::filesystem::path& dir);
std::vector<std::string> hidden_files(const std::filesystem::path& dir);

// Runs the built moeckpt CLI with the given arguments (shell-quoted).
CommandResult run_cli(const std::vector<std::string>& args);
// Starts the built CLI with `args` as a direct child (its output discarded) and returns its pid,
// for tests that signal it; the caller waits for it.
int spawn_cli(const std::vector<std::string>& args);
// The same, as a direct child whose peak resident set is read from outside (wait4's ru_maxrss).
CommandResult run_cli_measured(const std::vector<std::string>& args);
// The same, in a child whose open-file limit, soft and hard, is `max_open_files` (so that the
// CLI's own raise to the hard limit cannot lift it).
CommandResult run_cli_with_open_file_limit(const std::vector<std::string>& args,
                                           uint64_t max_open_files);

}  // namespace moeckpt::test
