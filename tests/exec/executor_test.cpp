// The executor: same bytes whatever the task size, thread count and memory budget; an EP rank
// reads only its own experts.
#include <gtest/gtest.h>

#include "model/mimo/mimo_tensor_names.hpp"
#include "moeckpt/adapter.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;

void expect_same_checkpoint(const fs::path& a, const fs::path& b) {
  auto ca = Checkpoint::open(a), cb = Checkpoint::open(b);
  ASSERT_EQ(ca.names(), cb.names());
  for (const auto& n : ca.names()) {
    EXPECT_EQ(ca.find(n)->info->shape, cb.find(n)->info->shape) << n;
    EXPECT_EQ(ca.read_all(*ca.find(n)), cb.read_all(*cb.find(n))) << n;
  }
}

TEST(SplitRows, CoversEveryRowOnceAtAlignedCuts) {
  auto parts = split_rows(1000, 100, 12'800, 128);
  ASSERT_EQ(parts.size(), 8u);
  EXPECT_EQ(parts.front(), std::make_pair(int64_t{0}, int64_t{128}));
  EXPECT_EQ(parts.back(), std::make_pair(int64_t{896}, int64_t{1000}));
  EXPECT_EQ(split_rows(5, 1 << 20, 1, 1).size(), 5u);  // one row per task at minimum
  EXPECT_EQ(split_rows(0, 10, 100, 1).size(), 1u);
  EXPECT_EQ(split_rows(300, 0, 100, 128).size(), 1u);  // zero-width rows: one task
}

TEST(Executor, TinyTasksManyThreadsAndASmallBudgetGiveTheSameBytes) {
  test::TempDir dir;
  synthesize_checkpoint(dir / "hf", {});
  ConvertOptions plain;
  plain.exec.threads = 1;
  ConvertOptions stressed;
  stressed.exec.threads = 4;
  stressed.exec.max_memory = 12 << 20;  // a few tiny tasks in flight at once
  stressed.max_shard_bytes = 3 << 20;   // several shards too
  for (Compat compat : {Compat::kNone, Compat::kAutomodel07}) {
    const std::string tag = compat == Compat::kNone ? "default" : "compat";
    FromHfOptions big, small;
    big.compat = small.compat = compat;
    small.task_bytes = 1000;  // ~2 rows per dequant task
    from_hf_dir(dir / "hf", dir / ("n1_" + tag), big, plain);
    from_hf_dir(dir / "hf", dir / ("n2_" + tag), small, stressed);
    expect_same_checkpoint(dir / ("n1_" + tag), dir / ("n2_" + tag));
  }
  for (QuantMode q : {QuantMode::kBlock, QuantMode::kCast, QuantMode::kNone}) {
    const std::string tag = std::to_string(static_cast<int>(q));
    ToHfOptions big, small;
    big.quant = small.quant = q;
    small.task_bytes = 1000;
    to_hf_dirs({dir / "n1_default"}, dir / ("h1_" + tag), big, std::nullopt, plain);
    to_hf_dirs({dir / "n1_default"}, dir / ("h2_" + tag), small, std::nullopt, stressed);
    expect_same_checkpoint(dir / ("h1_" + tag), dir / ("h2_" + tag));
  }
}

TEST(Executor, AnEpRankReadsOnlyItsExperts) {
  test::TempDir dir;
  SynthOptions o;
  o.experts = 16;
  synthesize_checkpoint(dir / "hf", o);
  CheckpointSource src({dir / "hf"});
  auto config = ModelConfig::load(dir / "hf" / "config.json");
  FromHfOptions rank;
  rank.ep_size = 8;
  rank.ep_rank = 3;  // experts 6 and 7
  auto plan = plan_from_hf(src, config, rank);
  MemorySink sink(plan.outputs);
  execute(plan, src, sink);
  uint64_t needed = 0, experts_total = 0, scales = 0;
  for (const auto& t : src.tensors()) {
    auto k = classify_tensor_name(t.name);
    bool expert = k.kind == TensorKind::kExpertProj && !k.mtp;
    if (expert) experts_total += t.nbytes;
    if (!expert || *k.expert == 6 || *k.expert == 7) {
      needed += t.nbytes;
      if (k.is_scale) scales += t.nbytes;
    }
  }
  // Every byte needed once, except full-attention k scales, which the k and v tasks both read
  // (the first 64 V rows of a head use a k scale row): 64 bytes per full layer at tiny size; and
  // the scales the rank uses, which planning also reads to refuse bad values before any output.
  EXPECT_GE(src.bytes_read(), needed + scales);
  EXPECT_LE(src.bytes_read(), needed + scales + 2 * 64);
  uint64_t all = 0;
  for (const auto& t : src.tensors()) all += t.nbytes;
  EXPECT_LT(src.bytes_read(), all - experts_total / 2);
}

}  // namespace
}  // namespace moeckpt
