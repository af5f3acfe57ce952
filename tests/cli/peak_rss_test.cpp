// The closing line's peak RSS is the CLI's own. getrusage's ru_maxrss keeps the peak of the image
// that exec'd the process (torchrun's Python launcher, here a parent that touched 300 MiB);
// the CLI reports its own image's (VmHWM).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <regex>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace moeckpt {
namespace {

constexpr size_t kTouched = size_t{300} << 20;

TEST(PeakRss, IsTheCliOwnNotThatOfTheImageThatExecdIt) {
#ifdef MOECKPT_UNDER_ASAN
  GTEST_SKIP() << "resident set includes the sanitizer's shadow memory";
#endif
  test::TempDir dir;
  ASSERT_EQ(test::run_cli({"synth", (dir / "hf").string(), "--preset", "micro"}).exit_code, 0);
  const std::string out = (dir / "out").string();
  std::vector<std::string> argv_s{MOECKPT_CLI_PATH, "from-hf", (dir / "hf").string(),
                                  (dir / "native").string(), "--quiet"};
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    // Only async-signal-safe calls after fork: mmap, not malloc.
    void* p = ::mmap(nullptr, kTouched, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) ::_exit(126);
    std::memset(p, 1, kTouched);  // resident: this image's peak is above 300 MiB
    const int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ::dup2(fd, 1) < 0) ::_exit(127);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ASSERT_GT(pid, 0);
  int status = 0;
  struct rusage ru {};
  ASSERT_EQ(::wait4(pid, &status, 0, &ru), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  // The setup worked: seen from outside, the child's peak includes the image before the exec.
  EXPECT_GE(static_cast<uint64_t>(ru.ru_maxrss) * 1024, kTouched);
  const std::string text = test::read_text(out);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(text, m, std::regex("peak RSS (\\d+) MiB"))) << text;
  EXPECT_LT(std::stoull(m[1]), 200u) << text;  // a micro conversion: tens of MiB
}

}  // namespace
}  // namespace moeckpt
