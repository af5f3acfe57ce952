// quantization_config.weight_block_size must be the block size the scale grids were made with:
// extra trailing scale rows/columns are padding on some weights (Automodel's padded k scales,
// the fused K/V layout), but a block size that most grids contradict is refused before anything
// reads them as "extras" (from-hf, inspect and verify agree).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "adapter/block_size_check.hpp"
#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/inspect.hpp"
#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {
namespace fs = std::filesystem;

struct Grid {
  std::string weight;
  uint64_t rows, cols, scale_rows, scale_cols;
};

// Layer-like weights in 128-blocks: q, the full-attention k whose scale has 8 rows where the
// plain grid gives 6, v, o, and eight experts' gate/up/down.
std::vector<Grid> mimo_like_grids() {
  std::vector<Grid> g{{"attn.q_proj.weight", 3072, 1024, 24, 8},
                      {"attn.k_proj.weight", 768, 1024, 8, 8},
                      {"attn.v_proj.weight", 512, 1024, 4, 8},
                      {"attn.o_proj.weight", 1024, 2048, 8, 16}};
  for (int e = 0; e < 8; ++e) {
    const std::string p = "experts." + std::to_string(e) + ".";
    g.push_back({p + "gate_proj.weight", 256, 1024, 2, 8});
    g.push_back({p + "up_proj.weight", 256, 1024, 2, 8});
    g.push_back({p + "down_proj.weight", 1024, 256, 8, 2});
  }
  return g;
}

// Runs the check over weights and scales of these shapes (the check reads headers only).
void check(const std::vector<Grid>& grids, BlockSize block) {
  static const std::vector<uint8_t> zeros(3072 * 2048 * 4);
  std::vector<MemorySource::Entry> entries;
  for (const auto& g : grids) {
    entries.push_back(
        {g.weight, Dtype::F8_E4M3, {g.rows, g.cols}, std::span(zeros.data(), g.rows * g.cols)});
    entries.push_back({g.weight + "_scale_inv",
                       Dtype::F32,
                       {g.scale_rows, g.scale_cols},
                       std::span(zeros.data(), g.scale_rows * g.scale_cols * 4)});
  }
  MemorySource src(std::move(entries));
  check_block_size_matches_scales(src, *model_spec_for(ModelConfig{}), block);
}

std::string refusal(const std::vector<Grid>& grids, BlockSize block) {
  try {
    check(grids, block);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(BlockSize, TheRealBlockSizeIsAcceptedWithTheFusedKScaleRows) {
  EXPECT_NO_THROW(check(mimo_like_grids(), {128, 128}));
}

TEST(BlockSize, MultiplesAndSizesBeyondTheTensorsAreRefusedOnEitherAxis) {
  const auto g = mimo_like_grids();
  for (BlockSize b : {BlockSize{256, 128}, BlockSize{512, 128}, BlockSize{4096, 128}}) {
    const auto why = refusal(g, b);
    EXPECT_NE(why.find("fit 128-element blocks along rows"), std::string::npos) << why;
    EXPECT_NE(why.find("_scale_inv"), std::string::npos) << why;
  }
  for (BlockSize b : {BlockSize{128, 256}, BlockSize{128, 2048}}) {
    const auto why = refusal(g, b);
    EXPECT_NE(why.find("fit 128-element blocks along columns"), std::string::npos) << why;
  }
  for (BlockSize b : {BlockSize{256, 256}, BlockSize{65536, 65536}, BlockSize{1024, 1024}})
    EXPECT_NE(refusal(g, b).find("weight_block_size"), std::string::npos);
}

TEST(BlockSize, PaddingOnSomeWeightsIsAcceptedOnMostIsNot) {
  auto g = mimo_like_grids();
  g[4].scale_rows += 2;  // one expert's gate scale padded by two rows
  g[6].scale_cols += 1;  // one down scale padded by a column
  EXPECT_NO_THROW(check(g, {128, 128}));
  for (auto& grid : g) grid.scale_rows += 1;
  EXPECT_NE(refusal(g, {128, 128}).find("along rows"), std::string::npos);
}

TEST(BlockSize, RaggedEdgesAndNonSquareBlocksFitExactly) {
  std::vector<Grid> g{{"a.weight", 136, 40, 2, 1},
                      {"b.weight", 40, 136, 1, 2},
                      {"c.weight", 300, 1000, 5, 4},
                      {"d.weight", 64, 64, 1, 1}};
  // 300 rows in 64-row blocks: 5; 1000 columns in 256-column blocks: 4.
  std::vector<Grid> h{{"c.weight", 300, 1000, 5, 4}, {"e.weight", 129, 257, 3, 2}};
  EXPECT_NO_THROW(check(h, {64, 256}));
  EXPECT_NE(refusal(h, {128, 256}), "");  // 300 rows in 128-blocks are 3, not 5
  g.erase(g.begin() + 2);
  EXPECT_NO_THROW(check(g, {128, 128}));
}

class BlockSizeConfig : public ::testing::Test {
 protected:
  void SetUp() override { synthesize_checkpoint(dir_ / "hf", {}); }
  void set_block(nlohmann::json block) {
    const auto bytes = test::read_bytes(dir_ / "hf" / "config.json");
    auto cfg = nlohmann::json::parse(bytes.begin(), bytes.end());
    cfg["quantization_config"]["weight_block_size"] = std::move(block);
    test::write_text(dir_ / "hf" / "config.json", cfg.dump());
  }
  test::TempDir dir_;
};

TEST_F(BlockSizeConfig, FromHfAndInspectAgreeAndNameTheFile) {
  for (auto b : {nlohmann::json{256, 256}, nlohmann::json{128, 512}, nlohmann::json{8192, 128}}) {
    set_block(b);
    std::string from_hf, inspect;
    try {
      from_hf_dir(dir_ / "hf", dir_ / "out", {});
    } catch (const Error& e) {
      from_hf = e.what();
    }
    for (const auto& p : inspect_checkpoint(dir_ / "hf", {}).problems) inspect += p;
    EXPECT_NE(from_hf.find("weight_block_size"), std::string::npos) << b.dump() << from_hf;
    EXPECT_NE(from_hf.find(".safetensors"), std::string::npos) << from_hf;
    EXPECT_EQ(from_hf, inspect);
    EXPECT_FALSE(fs::exists(dir_ / "out"));
  }
  set_block({128, 128});  // the tiny preset has the padded full-attention k scale
  EXPECT_NO_THROW(from_hf_dir(dir_ / "hf", dir_ / "out", {}));
}

}  // namespace
}  // namespace moeckpt
