// An HF folder's layout is decided by the planner from the tensor names alone
// (ToHfOptions::Order::kByName): the CLI's to-hf of a native folder (a CheckpointSource, by name)
// and to_hf_dir_from_memory of the same tensors in any order (Python's to_hf_dir) write the same
// bytes, and so does a distributed plan. Only the in-memory to_hf of the Python adapter asks for
// the source's order (kSource), as Automodel's to_hf orders its result.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "moeckpt/adapter.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {
namespace fs = std::filesystem;

class FolderLayout : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    SynthOptions o;
    o.preset = GetParam();
    synthesize_checkpoint(dir_ / "hf", o);
    from_hf_dir(dir_ / "hf", dir_ / "native", {});
    config_ = ModelConfig::load(dir_ / "native" / "config.json");
    auto ck = Checkpoint::open(dir_ / "native");
    for (const auto& n : ck.names()) {
      const auto* e = ck.find(n);
      names_.push_back(n);
      dtypes_.push_back(e->info->dtype);
      shapes_.push_back(e->info->shape);
      bytes_.push_back(ck.read_all(*e));
    }
  }
  MemorySource memory(std::vector<size_t> order) const {
    std::vector<MemorySource::Entry> entries;
    for (size_t i : order) entries.push_back({names_[i], dtypes_[i], shapes_[i], bytes_[i]});
    return MemorySource(std::move(entries));
  }
  std::vector<size_t> permutation(unsigned seed) const {
    std::vector<size_t> order(names_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    if (seed == 0)
      std::reverse(order.begin(), order.end());
    else
      std::shuffle(order.begin(), order.end(), std::mt19937(seed));
    return order;
  }
  test::TempDir dir_;
  ModelConfig config_;
  std::vector<std::string> names_;
  std::vector<Dtype> dtypes_;
  std::vector<std::vector<uint64_t>> shapes_;
  std::vector<std::vector<uint8_t>> bytes_;
};

TEST_P(FolderLayout, MemoryInAnyOrderWritesWhatTheFolderConversionWrites) {
  const bool fused = std::string(GetParam()).starts_with("v26");  // no cast of a fused layout
  uint64_t total = 0;
  for (const auto& b : bytes_) total += b.size();
  for (QuantMode q : {QuantMode::kBlock, QuantMode::kCast, QuantMode::kNone}) {
    if (fused && q == QuantMode::kCast) continue;
    ToHfOptions o;
    o.quant = q;
    if (fused) o.tp_size = 4;  // the native folder records it; tensors in memory do not
    ConvertOptions c;
    c.max_shard_bytes = total / 5;  // several shards: their boundaries depend on the order too
    const auto tag = std::to_string(static_cast<int>(q));
    to_hf_dirs({dir_ / "native"}, dir_ / ("cli" + tag), o, std::nullopt, c);
    const auto want = test::final_files(dir_ / ("cli" + tag));
    for (unsigned seed : {0u, 1u, 2u}) {
      const auto src = memory(permutation(seed));
      const auto out = dir_ / ("mem" + tag + "-" + std::to_string(seed));
      to_hf_dir_from_memory(src, config_, out, o, 0, c);
      EXPECT_EQ(test::final_files(out), want) << "quant " << tag << " order " << seed;
      // The distributed plan of the same tensors: the same shards.
      const auto d = plan_export_distribution(src, config_, o, {}, c.max_shard_bytes, 2);
      std::vector<std::string> shards;
      for (const auto& [name, bytes] : want)
        if (name.ends_with(".safetensors")) shards.push_back(name);
      EXPECT_EQ(d.shards, shards);
    }
  }
}

TEST_P(FolderLayout, OnlyKSourceFollowsTheSourceOrder) {
  const auto src = memory(permutation(0));
  ToHfOptions by_name;
  by_name.quant = QuantMode::kNone;
  ToHfOptions as_given = by_name;
  as_given.order = ToHfOptions::Order::kSource;
  std::vector<std::string> a, b;
  for (const auto& t : plan_to_hf(src, config_, by_name, {0}).outputs) a.push_back(t.name);
  for (const auto& t : plan_to_hf(src, config_, as_given, {0}).outputs) b.push_back(t.name);
  EXPECT_NE(a, b);
  std::vector<std::string> sa = a, sb = b;
  std::sort(sa.begin(), sa.end());
  std::sort(sb.begin(), sb.end());
  EXPECT_EQ(sa, sb);
  // The reversed source's first tensor (the last name) comes first only with kSource.
  const auto last = *std::max_element(names_.begin(), names_.end());
  EXPECT_EQ(b.front().rfind(last.substr(0, last.rfind('.')), 0), 0u) << b.front();
}

INSTANTIATE_TEST_SUITE_P(Presets, FolderLayout,
                         ::testing::Values("micro", "deepseek-v3-micro", "v26-tiny"));

}  // namespace
}  // namespace moeckpt
