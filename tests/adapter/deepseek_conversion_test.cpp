// The DeepSeek-V3 format through the folder commands: from-hf (EP 1 and every rank of an uneven
// split), to-hf of one folder or of every rank's together, --quant none, verify of each result
// against the input (every value bitwise, every FP8 code), on both latent-attention variants.
#include <gtest/gtest.h>

#include "moeckpt/adapter.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/synth.hpp"
#include "moeckpt/verify.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {
namespace fs = std::filesystem;

void expect_bitwise(const VerifyReport& r, bool fp8_codes) {
  EXPECT_TRUE(r.ok());
  EXPECT_TRUE(r.only_in_a.empty() && r.only_in_b.empty() && r.shape_mismatch.empty());
  uint64_t fp8 = 0;
  for (const auto& [name, f] : r.families) {
    EXPECT_EQ(f.bitwise_equal, f.elements) << name;
    EXPECT_EQ(f.fp8_equal, f.fp8_elements) << name;
    fp8 += f.fp8_elements;
  }
  if (fp8_codes) {
    EXPECT_GT(fp8, 0u);
  }
}

TEST(DeepSeekConversion, EveryCommandKeepsEveryValue) {
  for (const char* preset : {"deepseek-v3-tiny", "deepseek-v3-tiny-q-proj"}) {
    SCOPED_TRACE(preset);
    test::TempDir dir;
    SynthOptions o;
    o.preset = preset;
    o.seed = 5;
    synthesize_checkpoint(dir / "hf", o);
    from_hf_dir(dir / "hf", dir / "native", {});
    expect_bitwise(verify_checkpoints(dir / "hf", dir / "native", {}), false);
    std::vector<fs::path> ranks;
    for (int64_t r = 0; r < 3; ++r) {  // 8 experts over 3 ranks
      FromHfOptions ep;
      ep.ep_size = 3;
      ep.ep_rank = r;
      ranks.push_back(dir / ("ep" + std::to_string(r)));
      from_hf_dir(dir / "hf", ranks.back(), ep);
    }
    to_hf_dirs({dir / "native"}, dir / "back", {}, std::nullopt);
    to_hf_dirs(ranks, dir / "back_ranks", {}, std::nullopt);
    // The synthesized values are exact in FP8: the published layout comes back code for code.
    expect_bitwise(verify_checkpoints(dir / "hf", dir / "back", {}), true);
    auto a = Checkpoint::open(dir / "back"), b = Checkpoint::open(dir / "back_ranks");
    ASSERT_EQ(a.names(), b.names());
    for (const auto& n : a.names()) EXPECT_EQ(a.read_all(*a.find(n)), b.read_all(*b.find(n))) << n;
    ToHfOptions none;
    none.quant = QuantMode::kNone;
    to_hf_dirs({dir / "native"}, dir / "bf16", none, std::nullopt);
    expect_bitwise(verify_checkpoints(dir / "hf", dir / "bf16", {}), false);
    auto bf16 = Checkpoint::open(dir / "bf16");
    for (const auto& n : bf16.names()) {
      EXPECT_FALSE(n.ends_with("_scale_inv")) << n;
      EXPECT_NE(bf16.find(n)->info->dtype, Dtype::F8_E4M3) << n;
    }
  }
}

}  // namespace
}  // namespace moeckpt
