#include "test_support.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string_view>

namespace moeckpt::test {
namespace fs = std::filesystem;

int trials(int full, int fast) {
  const char* tier = std::getenv("MOECKPT_TEST_TIER");
  if (tier == nullptr || std::string_view(tier).empty() || std::string_view(tier) == "full")
    return full;
  if (std::string_view(tier) == "fast") return fast;
  throw std::invalid_argument("MOECKPT_TEST_TIER=" + std::string(tier) + ": expected fast or full");
}

TempDir::TempDir() {
  static std::atomic<int> counter{0};
  path_ = fs::temp_directory_path() /
          ("moeckpt-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  fs::remove_all(path_);
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

HeldLockFile::HeldLockFile(const fs::path& path) : path_(path) {
  // Close-on-exec: a CLI child forked meanwhile must not share (and so keep) the lock.
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0 || ::flock(fd_, LOCK_EX) != 0)
    throw std::runtime_error("cannot hold the lock file " + path.string());
}

HeldLockFile::~HeldLockFile() {
  ::unlink(path_.c_str());
  ::close(fd_);
}

std::vector<uint8_t> raw_safetensors(const std::string& header, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out(8);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<uint8_t>(n >> (8 * i));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

void write_bytes(const fs::path& p, const std::vector<uint8_t>& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("cannot write " + p.string());
}

void write_text(const fs::path& p, const std::string& text) {
  write_bytes(p, std::vector<uint8_t>(text.begin(), text.end()));
}

std::string read_text(const fs::path& p) {
  const auto bytes = read_bytes(p);
  return std::string(bytes.begin(), bytes.end());
}

std::vector<uint8_t> read_bytes(const fs::path& p) {
  // One read of the whole file (the byte-at-a-time stream iterator was 7% of ctest's CPU).
  std::ifstream f(p, std::ios::binary | std::ios::ate);
  if (!f) return {};
  std::vector<uint8_t> out(static_cast<size_t>(f.tellg()));
  f.seekg(0);
  f.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(out.size()));
  out.resize(static_cast<size_t>(f.gcount()));
  return out;
}

static std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

static std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

CommandResult run_cli(const std::vector<std::string>& args) {
  TempDir tmp;
  std::string cmd = quote(MOECKPT_CLI_PATH);
  for (const auto& a : args) cmd += " " + quote(a);
  cmd += " >" + quote((tmp / "out").string()) + " 2>" + quote((tmp / "err").string());
  int status = std::system(cmd.c_str());
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return {code, slurp(tmp / "out"), slurp(tmp / "err")};
}

namespace {

// Forks the built CLI with `args`, its stdout and stderr sent to the given files.
pid_t fork_cli(const std::vector<std::string>& args, const std::string& out, const std::string& err,
               uint64_t max_open_files = 0) {
  std::vector<std::string> argv_s{MOECKPT_CLI_PATH};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (o < 0 || e < 0 || ::dup2(o, 1) < 0 || ::dup2(e, 2) < 0) ::_exit(127);
    if (max_open_files > 0) {
      const struct rlimit rl { max_open_files, max_open_files };
      if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) ::_exit(127);
    }
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

}  // namespace

int spawn_cli(const std::vector<std::string>& args) {
  return fork_cli(args, "/dev/null", "/dev/null");
}

CommandResult run_cli_measured(const std::vector<std::string>& args) {
  return run_cli_with_open_file_limit(args, 0);
}

CommandResult run_cli_with_open_file_limit(const std::vector<std::string>& args,
                                           uint64_t max_open_files) {
  TempDir tmp;
  const auto out = (tmp / "out").string(), err = (tmp / "err").string();
  const pid_t pid = fork_cli(args, out, err, max_open_files);
  int status = 0;
  struct rusage ru {};
  if (pid < 0 || ::wait4(pid, &status, 0, &ru) != pid) return {-1, "", "fork/wait4 failed", 0};
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return {code, slurp(tmp / "out"), slurp(tmp / "err"), static_cast<uint64_t>(ru.ru_maxrss) * 1024};
}

std::map<std::string, std::vector<uint8_t>> final_files(const fs::path& dir) {
  std::map<std::string, std::vector<uint8_t>> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (!name.starts_with(".") && fs::is_regular_file(e.path())) out[name] = read_bytes(e.path());
  }
  return out;
}

std::vector<std::string> hidden_files(const fs::path& dir) {
  std::vector<std::string> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().starts_with(".")) out.push_back(e.path().filename());
  return out;
}

}  // namespace moeckpt::test
