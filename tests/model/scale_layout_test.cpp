#include <gtest/gtest.h>

#include "moeckpt/model_config.hpp"
#include "moeckpt/scale_layout.hpp"

namespace moeckpt {
namespace {

// The real full-attention layer: 64 heads x 192 (Q), 4 kv heads x 192 (K), 4 x 128 (V).
TEST(FusedQkvLayout, MatchesThePublishedFullAttentionLayout) {
  auto l = FusedQkvLayout::make(64 * 192, 4 * 192, 4 * 128, 128);
  ASSERT_TRUE(l);
  EXPECT_EQ(l->scale_rows(Projection::kQ), 96);
  EXPECT_EQ(l->scale_rows(Projection::kK), 8);  // the plain grid would give 6
  EXPECT_EQ(l->scale_rows(Projection::kV), 4);
  EXPECT_TRUE(l->differs_from_plain());
  for (int64_t g = 0; g < 12288; ++g) {
    auto s = l->scale_source(Projection::kQ, g);
    ASSERT_EQ(s.owner, Projection::kQ);
    ASSERT_EQ(s.scale_row, g / 128);
  }
  for (int64_t g = 0; g < 768; ++g) {  // k row g uses k_s[2h + j // 128]
    auto s = l->scale_source(Projection::kK, g);
    int64_t h = g / 192, j = g % 192;
    ASSERT_EQ(s.owner, Projection::kK) << g;
    ASSERT_EQ(s.scale_row, 2 * h + j / 128) << g;
  }
  for (int64_t g = 0; g < 512; ++g) {  // v row: k_s[2h + 1] when j < 64, else v_s[h]
    auto s = l->scale_source(Projection::kV, g);
    int64_t h = g / 128, j = g % 128;
    if (j < 64) {
      ASSERT_EQ(s.owner, Projection::kK) << g;
      ASSERT_EQ(s.scale_row, 2 * h + 1) << g;
    } else {
      ASSERT_EQ(s.owner, Projection::kV) << g;
      ASSERT_EQ(s.scale_row, h) << g;
    }
  }
}

TEST(FusedQkvLayout, SlidingWindowLayersEqualThePlainGrid) {
  auto l = FusedQkvLayout::make(64 * 192, 8 * 192, 8 * 128, 128);
  ASSERT_TRUE(l);
  EXPECT_FALSE(l->differs_from_plain());
  EXPECT_EQ(l->scale_rows(Projection::kK), 12);
  EXPECT_EQ(l->scale_rows(Projection::kV), 8);
}

TEST(FusedQkvLayout, TinyPresetFormulas) {
  // Recipe: Qr = NH*hd/T, Sk = T*(cd(Qr+Kr,B) - cd(Qr,B)), Sv = T*(cd(Qr+Kr+Vr,B) - cd(Qr+Kr,B)).
  auto l = FusedQkvLayout::make(8 * 192, 4 * 192, 4 * 128, 128);
  ASSERT_TRUE(l);
  EXPECT_EQ(l->scale_rows(Projection::kQ), 12);
  EXPECT_EQ(l->scale_rows(Projection::kK), 8);
  EXPECT_EQ(l->scale_rows(Projection::kV), 4);
}

TEST(FusedQkvLayout, RaggedQueryPartSendsKRowsToAQScaleRow) {
  // Qr = 100 per shard: the first block of every shard holds Q rows 0..99 and K rows 0..27, so
  // those K rows use a q scale row.
  auto l = FusedQkvLayout::make(400, 200, 100, 128);
  ASSERT_TRUE(l);
  EXPECT_EQ(l->scale_rows(Projection::kQ), 4);  // one block per shard
  EXPECT_EQ(l->scale_rows(Projection::kK), 4);  // block 1 of each shard starts at 128 (inside K)
  EXPECT_EQ(l->scale_rows(Projection::kV), 0);  // V (150..174) starts no block
  auto s = l->scale_source(Projection::kK, 50 + 27);  // shard 1, K row 27 -> position 127
  EXPECT_EQ(s.owner, Projection::kQ);
  EXPECT_EQ(s.scale_row, 1);
  s = l->scale_source(Projection::kV, 3 * 25 + 5);  // shard 3, V row 5 -> position 155
  EXPECT_EQ(s.owner, Projection::kK);
  EXPECT_EQ(s.scale_row, 3);
}

TEST(FusedQkvLayout, RefusesRowsThatDoNotSplitOverFourShards) {
  EXPECT_FALSE(FusedQkvLayout::make(130, 8, 8, 128));
  EXPECT_FALSE(FusedQkvLayout::make(128, 6, 8, 128));
}

TEST(DetectFusedQkv, UsesTheKScaleRowCount) {
  AttentionDims full{64, 4, 192, 128, false};
  const std::array<int64_t, 3> rows{full.q_rows(), full.k_rows(), full.v_rows()};
  EXPECT_TRUE(detect_fused_qkv(full, 8, 128, rows));
  EXPECT_FALSE(detect_fused_qkv(full, 6, 128, rows));  // plain grid
  EXPECT_FALSE(detect_fused_qkv(full, 7, 128, rows));  // plain with one extra row
  AttentionDims swa{64, 8, 192, 128, true};
  EXPECT_FALSE(detect_fused_qkv(swa, 12, 128, {swa.q_rows(), swa.k_rows(), swa.v_rows()}));
}

TEST(DetectFusedQkv, NothingIsDerivedFromDimensionsTheWeightsContradict) {
  // A hostile config: 2^24 heads. The weights say otherwise, so no row-driven work happens.
  AttentionDims hostile{int64_t{1} << 24, 4, 192, 128, false};
  EXPECT_FALSE(detect_fused_qkv(hostile, 8, 128, {64 * 192, 4 * 192, 4 * 128}));
  AttentionDims full{64, 4, 192, 128, false};
  EXPECT_FALSE(detect_fused_qkv(full, 8, 128, {-1, 4 * 192, 4 * 128}));  // q missing
}

TEST(FusedQkvLayout, DiffersFromPlainCheckedPieceByPieceAgreesWithRowByRow) {
  // The breakpoint walk gives the row-by-row answer on every small layout.
  for (int64_t q : {0, 32, 64, 128, 256, 384, 512, 1024, 12288})
    for (int64_t k : {0, 32, 64, 128, 256, 512, 768})
      for (int64_t v : {0, 32, 64, 128, 256, 512})
        for (int64_t block : {32, 64, 128}) {
          auto l = FusedQkvLayout::make(q, k, v, block);
          if (!l) continue;
          bool row_by_row = false;
          for (Projection p : {Projection::kQ, Projection::kK, Projection::kV}) {
            if (l->scale_rows(p) != plain_scale_count(l->rows(p), block)) row_by_row = true;
            for (int64_t r = 0; r < l->rows(p) && !row_by_row; ++r) {
              auto s = l->scale_source(p, r);
              row_by_row = s.owner != p || s.scale_row != r / block;
            }
          }
          EXPECT_EQ(l->differs_from_plain(), row_by_row)
              << q << " " << k << " " << v << " " << block;
        }
}

}  // namespace
}  // namespace moeckpt
