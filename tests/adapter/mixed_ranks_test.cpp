// EP rank folders of different checkpoints are never merged: each rank's metadata carries a
// fingerprint of the source (config, tensor headers, the content of scales and small tensors), and
// every rank's config.json must be the same.
#include <gtest/gtest.h>

#include <fstream>

#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {
namespace fs = std::filesystem;

class MixedRanks : public ::testing::Test {
 protected:
  void SetUp() override {
    SynthOptions a, b;
    a.seed = 1;
    b.seed = 2;  // the same architecture, other values: what two fine-tunes look like
    synthesize_checkpoint(dir_ / "a", a);
    synthesize_checkpoint(dir_ / "b", b);
    fs::copy(dir_ / "a", dir_ / "a_copy");  // the same checkpoint at another path
  }
  fs::path rank(const std::string& src, int r, int w = 2) {
    FromHfOptions o;
    o.ep_size = w;
    o.ep_rank = r;
    const auto out = dir_ / (src + "_r" + std::to_string(r) + "of" + std::to_string(w));
    if (!fs::exists(out)) from_hf_dir(dir_ / src, out, o);
    return out;
  }
  std::string refusal(const std::vector<fs::path>& parts) {
    try {
      to_hf_dirs(parts, dir_ / "out", {}, std::nullopt);
    } catch (const Error& e) {
      EXPECT_FALSE(fs::exists(dir_ / "out" / "model.safetensors"));
      return e.what();
    }
    fs::remove_all(dir_ / "out");
    return "";
  }
  test::TempDir dir_;
};

TEST_F(MixedRanks, RanksOfTwoCheckpointsAreRefused) {
  auto m = refusal({rank("a", 0), rank("b", 1)});
  EXPECT_NE(m.find("was converted from another checkpoint than"), std::string::npos) << m;
  m = refusal({rank("b", 0), rank("a", 1)});
  EXPECT_NE(m.find("moeckpt.source_fingerprint"), std::string::npos) << m;
  // Three ranks, one foreign in the middle.
  m = refusal({rank("a", 0, 3), rank("b", 1, 3), rank("a", 2, 3)});
  EXPECT_NE(m.find("another checkpoint"), std::string::npos) << m;
}

TEST_F(MixedRanks, RanksOfOneCheckpointAreAcceptedWhereverItWas) {
  EXPECT_EQ(refusal({rank("a", 0), rank("a_copy", 1)}), "");
  to_hf_dirs({rank("a", 0), rank("a_copy", 1)}, dir_ / "merged", {}, std::nullopt);
  to_hf_dirs({rank("a", 0, 1)}, dir_ / "single", {}, std::nullopt);
  auto x = Checkpoint::open(dir_ / "merged"), y = Checkpoint::open(dir_ / "single");
  ASSERT_EQ(x.names(), y.names());
  for (const auto& n : x.names()) EXPECT_EQ(x.read_all(*x.find(n)), y.read_all(*y.find(n))) << n;
}

TEST_F(MixedRanks, ARankWithAnotherConfigIsRefused) {
  const auto r0 = rank("a", 0), r1 = rank("a", 1);
  std::ifstream in(r1 / "config.json");
  std::string text((std::istreambuf_iterator<char>(in)), {});
  in.close();
  const auto at = text.find('{');
  ASSERT_NE(at, std::string::npos);
  text.insert(at + 1, "\"extra_field\": 1, ");
  test::write_text(r1 / "config.json", text);
  auto m = refusal({r0, r1});
  EXPECT_NE(m.find("differs from"), std::string::npos) << m;
}

}  // namespace
}  // namespace moeckpt
