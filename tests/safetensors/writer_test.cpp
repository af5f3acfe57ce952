#include <gtest/gtest.h>

#include <numeric>

#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/safetensors_writer.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> iota_bytes(size_t n, uint8_t start) {
  std::vector<uint8_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

size_t count_files(const fs::path& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}

TEST(ShardWriter, WritesPiecesAtOffsetsAndReadsBack) {
  test::TempDir dir;
  auto path = dir / "x.safetensors";
  {
    ShardWriter w(path, {{"b", Dtype::BF16, {3, 2}}, {"a", Dtype::F32, {5}}}, {{"k", "v"}});
    auto b = iota_bytes(12, 0);
    auto a = iota_bytes(20, 100);
    // Out of order, in pieces.
    w.write(1, 8, std::span(a).subspan(8));
    w.write(0, 6, std::span(b).subspan(6));
    w.write(1, 0, std::span(a).first(8));
    w.write(0, 0, std::span(b).first(6));
    EXPECT_FALSE(fs::exists(path));  // nothing under the final name before commit
    w.commit();
  }
  EXPECT_EQ(count_files(dir.path()), 1u);  // no temporary left
  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f.header().data_offset() % 8, 0u);
  EXPECT_EQ(f.header().metadata().at("k"), "v");
  EXPECT_EQ(f.read_all(*f.header().find("b")), iota_bytes(12, 0));
  EXPECT_EQ(f.read_all(*f.header().find("a")), iota_bytes(20, 100));
  // Deterministic order: as given.
  EXPECT_EQ(f.header().tensors()[0].name, "b");
  std::vector<uint8_t> part(4);
  f.read(*f.header().find("a"), 16, part);
  EXPECT_EQ(part, (std::vector<uint8_t>{116, 117, 118, 119}));
  std::vector<uint8_t> too_far(8);
  EXPECT_THROW(f.read(*f.header().find("a"), 16, too_far), Error);
}

TEST(ShardWriter, HeaderIsPaddedWithSpacesToEightBytes) {
  for (std::string name : {"a", "ab", "abc", "abcd", "abcdefg"}) {
    auto h = encode_header({{name, Dtype::U8, {1}}}, {});
    EXPECT_EQ(h.size() % 8, 0u);
    EXPECT_EQ(h.back() == ' ' || h.back() == '}', true);
    auto bytes = h;
    bytes.push_back(7);
    auto parsed = Header::parse_file_bytes(bytes, "mem");
    EXPECT_EQ(parsed.find(name)->nbytes(), 1u);
  }
}

TEST(ShardWriter, IncompleteWriteIsRefusedAndLeavesNothing) {
  test::TempDir dir;
  auto path = dir / "x.safetensors";
  {
    ShardWriter w(path, {{"t", Dtype::U8, {8}}});
    w.write(0, 0, iota_bytes(4, 0));
    EXPECT_THROW(w.commit(), Error);
  }
  EXPECT_EQ(count_files(dir.path()), 0u);
  {
    ShardWriter w(path, {{"t", Dtype::U8, {8}}});
    EXPECT_THROW(w.write(0, 6, iota_bytes(4, 0)), Error);  // past the tensor's end
  }
  EXPECT_EQ(count_files(dir.path()), 0u);
}

TEST(CheckpointWriter, ShardsByByteLimitAndWritesIndexLast) {
  test::TempDir dir;
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 5; ++i) specs.push_back({"t" + std::to_string(i), Dtype::F32, {10}});
  specs.push_back({"big", Dtype::U8, {200}});  // larger than the limit: its own shard
  {
    CheckpointWriter w(dir.path(), specs,
                       {.max_shard_bytes = 100,
                        .metadata = {},
                        .index_metadata = {},
                        .completed = {},
                        .on_shard_committed = {},
                        .file_of = {}});
    EXPECT_EQ(w.shard_count(), 4u);  // {t0,t1} {t2,t3} {t4} {big}
    for (size_t i = 0; i < w.tensor_count(); ++i)
      w.write(i, 0, iota_bytes(w.spec(i).nbytes(), static_cast<uint8_t>(i)));
    EXPECT_FALSE(fs::exists(dir / kIndexFileName));
    w.commit();
  }
  EXPECT_TRUE(fs::exists(dir / kIndexFileName));
  EXPECT_TRUE(fs::exists(dir / "model-00004-of-00004.safetensors"));
  auto ck = Checkpoint::open(dir.path());
  EXPECT_EQ(ck.shard_count(), 4u);
  EXPECT_EQ(ck.total_bytes(), 5u * 40 + 200);
  for (size_t i = 0; i < 5; ++i) {
    auto* e = ck.find("t" + std::to_string(i));
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(ck.read_all(*e), iota_bytes(40, static_cast<uint8_t>(i)));
  }
  EXPECT_EQ(ck.read_all(*ck.find("big")), iota_bytes(200, 5));
}

TEST(CheckpointWriter, SingleShardIsModelSafetensorsWithoutIndex) {
  test::TempDir dir;
  {
    CheckpointWriter w(dir.path(), {{"t", Dtype::U8, {3}}});
    w.write(0, 0, iota_bytes(3, 1));
    w.commit();
  }
  EXPECT_TRUE(fs::exists(dir / kSingleFileName));
  EXPECT_FALSE(fs::exists(dir / kIndexFileName));
  auto ck = Checkpoint::open(dir.path());
  EXPECT_FALSE(ck.has_index());
  EXPECT_EQ(ck.read_all(*ck.find("t")), iota_bytes(3, 1));
}

}  // namespace
}  // namespace moeckpt
