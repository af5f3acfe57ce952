// MOECKPT_ISA through the CLI: a value the kernels do not know is a usage error (exit 2, one line
// naming the variable, the value and the accepted values) for every command, before any work;
// `--version` and the closing line of a conversion name the ISA in use.
#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;

// Runs the CLI with MOECKPT_ISA set to `isa` (nullopt: unset), then restores the test's own.
test::CommandResult run_with_isa(const std::optional<std::string>& isa,
                                 const std::vector<std::string>& args) {
  const char* before = std::getenv("MOECKPT_ISA");
  const std::optional<std::string> saved =
      before ? std::optional<std::string>(before) : std::nullopt;
  if (isa)
    ::setenv("MOECKPT_ISA", isa->c_str(), 1);
  else
    ::unsetenv("MOECKPT_ISA");
  auto r = test::run_cli(args);
  if (saved)
    ::setenv("MOECKPT_ISA", saved->c_str(), 1);
  else
    ::unsetenv("MOECKPT_ISA");
  return r;
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(KernelIsa, AnUnknownValueIsAUsageErrorForEveryCommand) {
  test::TempDir dir;
  const auto hf = (dir / "hf").string();
  ASSERT_EQ(run_with_isa(std::nullopt, {"synth", hf, "--preset", "micro"}).exit_code, 0);
  const std::vector<std::vector<std::string>> commands{
      {"--version"},
      {"synth", (dir / "s").string(), "--preset", "micro"},
      {"from-hf", hf, (dir / "n").string(), "--quiet"},
      {"dequantize", hf, (dir / "d").string(), "--quiet"},
      {"inspect", hf},
      {"verify", hf, hf},
  };
  for (const auto& args : commands) {
    const auto r = run_with_isa("foo", args);
    EXPECT_EQ(r.exit_code, 2) << args[0] << ": " << r.err;
    EXPECT_EQ(r.err,
              "moeckpt: error: environment variable MOECKPT_ISA=\"foo\" names no kernel ISA "
              "(expected scalar, avx2 or avx512, or MOECKPT_ISA unset)\n")
        << args[0];
    EXPECT_TRUE(r.out.empty()) << args[0] << ": " << r.out;
  }
  for (const char* name : {"s", "n", "d"}) EXPECT_FALSE(fs::exists(dir / name)) << name;
  // The help still shows.
  EXPECT_EQ(run_with_isa("foo", {"--help"}).exit_code, 0);
}

TEST(KernelIsa, VersionAndClosingLineNameTheIsaInUse) {
  auto r = run_with_isa(std::nullopt, {"--version"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_TRUE(r.out.starts_with("moeckpt 0.1.0 (FP8 kernels: ")) << r.out;
  bool known = false;  // unset: the CPU's best, with nothing more to say
  for (const char* name : {"scalar", "avx2", "avx512"})
    known = known || r.out == std::string("moeckpt 0.1.0 (FP8 kernels: ") + name + ")\n";
  EXPECT_TRUE(known) << r.out;
  // An empty value is as unset.
  EXPECT_EQ(run_with_isa("", {"--version"}).out, r.out);
  r = run_with_isa("scalar", {"--version"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.out.starts_with("moeckpt 0.1.0 (FP8 kernels: scalar")) << r.out;

  test::TempDir dir;
  const auto hf = (dir / "hf").string();
  ASSERT_EQ(run_with_isa(std::nullopt, {"synth", hf, "--preset", "micro"}).exit_code, 0);
  r = run_with_isa("scalar", {"from-hf", hf, (dir / "n").string(), "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, ", FP8 kernels scalar")) << r.out;
  r = run_with_isa(std::nullopt, {"to-hf", (dir / "n").string(), (dir / "b").string(), "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, ", FP8 kernels ")) << r.out;
}

}  // namespace
}  // namespace moeckpt
