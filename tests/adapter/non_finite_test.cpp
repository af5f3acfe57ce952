// A finite but huge scale whose product with a block's codes is not finite in the output dtype is
// refused at validation (from-hf, dequantize, inspect agree), exactly: the same scale over a block
// of small codes is accepted, and the compat mode reproduces the reference (inf) instead.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/inspect.hpp"
#include "moeckpt/numerics.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {
namespace fs = std::filesystem;

// Overwrites `bytes` at element offset `at` of tensor `name` in a checkpoint folder.
void patch(const fs::path& dir, const std::string& name, uint64_t byte_offset,
           const std::vector<uint8_t>& bytes) {
  auto ck = Checkpoint::open(dir);
  const auto* e = ck.find(name);
  ASSERT_NE(e, nullptr) << name;
  const auto& file = ck.file_of(*e);
  const uint64_t at = ck.shard(e->shard).header().data_offset() + e->info->begin + byte_offset;
  auto all = test::read_bytes(file);
  std::memcpy(all.data() + at, bytes.data(), bytes.size());
  test::write_bytes(file, all);
}

std::vector<uint8_t> f32_bytes(float v) {
  std::vector<uint8_t> b(4);
  std::memcpy(b.data(), &v, 4);
  return b;
}

class NonFinite : public ::testing::Test {
 protected:
  void SetUp() override {
    SynthOptions o;
    o.seed = 3;
    synthesize_checkpoint(dir_ / "hf", o);
  }
  bool refused(const fs::path& src, Dtype dt, Compat compat = Compat::kNone) {
    FromHfOptions o;
    o.dtype = dt;
    o.compat = compat;
    try {
      from_hf_dir(src, dir_ / "out", o);
    } catch (const Error& e) {
      last_ = e.what();
      EXPECT_FALSE(fs::exists(dir_ / "out" / "model.safetensors"));
      return true;
    }
    fs::remove_all(dir_ / "out");
    return false;
  }
  test::TempDir dir_;
  std::string last_;
};

constexpr const char* kWeight = "model.layers.1.mlp.experts.2.down_proj.weight";
constexpr const char* kWeightScale = "model.layers.1.mlp.experts.2.down_proj.weight_scale_inv";

TEST_F(NonFinite, AHugeScaleOverLargeCodesIsRefusedInEveryDtype) {
  for (float scale : {1e37f, 3e36f, std::numeric_limits<float>::max() / 100}) {
    SCOPED_TRACE(scale);
    fs::remove_all(dir_ / "hf2");
    fs::copy(dir_ / "hf", dir_ / "hf2");
    patch(dir_ / "hf2", kWeightScale, 0 /* entry [0, 0] */, f32_bytes(scale));
    EXPECT_TRUE(refused(dir_ / "hf2", Dtype::BF16));
    EXPECT_NE(last_.find("scale entry [0, 0]"), std::string::npos) << last_;
    EXPECT_NE(last_.find("not finite in BF16"), std::string::npos) << last_;
    EXPECT_TRUE(refused(dir_ / "hf2", Dtype::F32));
    // inspect makes the same check; dequantize too.
    InspectOptions io;
    auto r = inspect_checkpoint(dir_ / "hf2", io);
    ASSERT_FALSE(r.problems.empty());
    EXPECT_NE(r.problems.front().find("not finite"), std::string::npos) << r.problems.front();
    EXPECT_THROW(dequantize_dir(dir_ / "hf2", dir_ / "dq", {}), Error);
    // The compat mode reproduces the reference: the product is inf, no refusal.
    EXPECT_FALSE(refused(dir_ / "hf2", Dtype::BF16, Compat::kAutomodel07));
  }
}

TEST_F(NonFinite, TheSameScaleOverSmallCodesIsAccepted) {
  // Codes of magnitude <= 2^-3 in block [0, 0] (128 rows x 128 columns): times 1e37 that
  // is 1.25e36.
  auto ck = Checkpoint::open(dir_ / "hf");
  const auto* w = ck.find(kWeight);
  const uint64_t cols = w->info->shape[1];
  const uint64_t rows = std::min<uint64_t>(128, w->info->shape[0]);
  for (uint64_t r = 0; r < rows; ++r)
    patch(dir_ / "hf", kWeight, r * cols,
          std::vector<uint8_t>(std::min<uint64_t>(128, cols), 0x28));
  patch(dir_ / "hf", kWeightScale, 0, f32_bytes(1e37f));
  EXPECT_FALSE(refused(dir_ / "hf", Dtype::BF16)) << last_;
  from_hf_dir(dir_ / "hf", dir_ / "ok", {});
  auto out = Checkpoint::open(dir_ / "ok");
  const auto* g = out.find("model.layers.1.mlp.experts.down_projs");
  auto bytes = out.read_all(*g);
  for (size_t i = 0; i + 1 < bytes.size(); i += 2)
    ASSERT_NE(static_cast<uint16_t>(bytes[i] | bytes[i + 1] << 8) & 0x7F80, 0x7F80) << i;
}

}  // namespace
}  // namespace moeckpt
