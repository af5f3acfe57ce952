// A --max-memory below what a conversion needs is refused with the smallest budget that works:
// that budget converts, and one byte less is refused again with the same number (the planner's
// task size grows with the budget, so a budget computed from the plan at the refused budget alone
// was refused again with a larger one).
#include <gtest/gtest.h>

#include <regex>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace moeckpt {
namespace {

using test::run_cli;

// The budget a refusal names, or 0 when it names none.
uint64_t suggested_budget(const std::string& err) {
  static const std::regex re("of at least ([0-9]+) bytes");
  std::smatch m;
  return std::regex_search(err, m, re) ? std::stoull(m[1].str()) : 0;
}

// `args` (a conversion into `dst`, without --max-memory) at a tiny budget, at the budget that
// refusal names less one byte, and at that budget.
void expect_first_suggestion_works(const std::vector<std::string>& args, const std::string& dst) {
  auto with_budget = [&](uint64_t budget, const std::string& out) {
    auto a = args;
    a.push_back(out);
    for (const auto& s : {std::string("--quiet"), std::string("--max-memory")}) a.push_back(s);
    a.push_back(std::to_string(budget));
    return run_cli(a);
  };
  const auto first = with_budget(1000, dst + "-1000");
  ASSERT_EQ(first.exit_code, 1) << first.err;
  const uint64_t need = suggested_budget(first.err);
  ASSERT_GT(need, 1000u) << first.err;
  const auto below = with_budget(need - 1, dst + "-below");
  EXPECT_EQ(below.exit_code, 1) << args[0] << " --max-memory " << need - 1;
  EXPECT_EQ(suggested_budget(below.err), need) << below.err;
  EXPECT_FALSE(std::filesystem::exists(dst + "-below"));
  const auto at = with_budget(need, dst);
  EXPECT_EQ(at.exit_code, 0) << args[0] << " --max-memory " << need << ": " << at.err;
}

TEST(MemoryBudget, TheSuggestedBudgetIsTheSmallestThatWorks) {
  for (const std::string preset : {"tiny", "v26-tiny", "deepseek-v3-tiny"}) {
    SCOPED_TRACE(preset);
    test::TempDir dir;
    const auto hf = (dir / "hf").string(), native = (dir / "native").string();
    ASSERT_EQ(run_cli({"synth", hf, "--preset", preset}).exit_code, 0);
    expect_first_suggestion_works({"from-hf", hf}, native);
    expect_first_suggestion_works({"to-hf", native}, (dir / "back").string());
    expect_first_suggestion_works({"from-hf", hf, "--ep-size", "2", "--ep-rank", "all"},
                                  (dir / "ep").string());
    expect_first_suggestion_works({"to-hf", (dir / "ep" / "ep-rank-0-of-2").string(),
                                   (dir / "ep" / "ep-rank-1-of-2").string()},
                                  (dir / "ep-back").string());
    if (preset == "v26-tiny") continue;  // a fused-QKV checkpoint is not dequantized in place
    const auto bf16 = (dir / "bf16").string();
    expect_first_suggestion_works({"dequantize", hf}, bf16);
    expect_first_suggestion_works({"quantize", bf16}, (dir / "fp8").string());
  }
}

}  // namespace
}  // namespace moeckpt
