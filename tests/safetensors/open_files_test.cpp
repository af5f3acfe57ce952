// More checkpoint files than open descriptors: io::OpenFiles keeps at most its capacity open,
// reopens by path, and refuses a file that is not the one first opened.
#include <gtest/gtest.h>

#include <fstream>

#include "io/open_files.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/safetensors_writer.hpp"
#include "moeckpt/synth.hpp"
#include "moeckpt/tensor_source.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;

// Sets the process's capacity for one test, and restores it.
class Capacity {
 public:
  explicit Capacity(size_t n) : before_(io::OpenFiles::instance().capacity()) {
    io::OpenFiles::instance().set_capacity(n);
  }
  ~Capacity() { io::OpenFiles::instance().set_capacity(before_); }

 private:
  size_t before_;
};

fs::path many_shards(const test::TempDir& dir) {
  SynthOptions o;
  o.preset = "tiny";
  o.seed = 3;
  o.max_shard_bytes = 1;  // a shard per tensor: 257 files
  synthesize_checkpoint(dir / "hf", o);
  return dir / "hf";
}

TEST(OpenFiles, ACheckpointOfMoreShardsThanDescriptorsReadsTheSame) {
  test::TempDir dir;
  const auto hf = many_shards(dir);
  std::map<std::string, std::vector<uint8_t>> expected;
  {
    CheckpointSource src({hf});
    ASSERT_GT(src.checkpoint(0).shard_count(), 200u);
    for (const auto& t : src.tensors()) expected[t.name] = src.read_all(t);
  }
  Capacity cap(8);
  const auto reopens = io::OpenFiles::instance().reopen_count();
  CheckpointSource src({hf});
  EXPECT_LE(io::OpenFiles::instance().open_count(), 8u);
  for (int pass = 0; pass < 2; ++pass)
    for (const auto& t : src.tensors()) EXPECT_EQ(src.read_all(t), expected.at(t.name)) << t.name;
  EXPECT_LE(io::OpenFiles::instance().open_count(), 8u);
  EXPECT_GT(io::OpenFiles::instance().reopen_count(), reopens);
}

// The guarantee of FileReplacedByRenameKeepsReadingTheOpenedFile, once the descriptor was closed
// to make room: the replacement is refused, never read.
TEST(OpenFiles, AFileReplacedByRenameWhileClosedIsRefused) {
  test::TempDir dir;
  const auto hf = many_shards(dir);
  Capacity cap(2);
  auto ck = Checkpoint::open(hf);
  const auto& first = ck.shard(0);
  ASSERT_FALSE(first.header().tensors().empty());
  const auto& t = first.header().tensors().front();
  (void)first.read_all(t);
  for (size_t s = 1; s < 4; ++s) (void)ck.shard(s).read_all(ck.shard(s).header().tensors().front());
  auto bytes = test::read_bytes(first.path());
  test::write_bytes(dir / "replacement", bytes);  // the same bytes, another inode
  fs::rename(dir / "replacement", first.path());
  try {
    (void)first.read_all(t);
    FAIL() << "read a file replaced while its descriptor was closed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("was replaced"), std::string::npos) << e.what();
    EXPECT_EQ(e.info().file, first.path());
    EXPECT_EQ(e.info().tensor, t.name);
  }
}

TEST(OpenFiles, AFileRewrittenInPlaceWhileClosedIsRefused) {
  test::TempDir dir;
  const auto hf = many_shards(dir);
  Capacity cap(2);
  auto ck = Checkpoint::open(hf);
  const auto& first = ck.shard(0);
  const auto& t = first.header().tensors().front();
  (void)first.read_all(t);
  for (size_t s = 1; s < 4; ++s) (void)ck.shard(s).read_all(ck.shard(s).header().tensors().front());
  {
    std::fstream f(first.path(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-4, std::ios::end);
    f.write("\x11\x22\x33\x44", 4);
  }
  fs::last_write_time(first.path(), fs::last_write_time(first.path()) + std::chrono::seconds(5));
  try {
    (void)first.read_all(t);
    FAIL() << "read a file rewritten while its descriptor was closed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("file changed while being read"), std::string::npos)
        << e.what();
  }
}

TEST(OpenFiles, ShardsAreWrittenThroughABoundedSetOfDescriptors) {
  test::TempDir dir;
  Capacity cap(3);
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 50; ++i) specs.push_back({"t" + std::to_string(i), Dtype::F32, {4}});
  ShardingOptions o;
  o.max_shard_bytes = 16;  // one tensor a shard
  {
    CheckpointWriter w(dir.path(), specs, o);
    EXPECT_LE(io::OpenFiles::instance().open_count(), 3u);
    // Interleaved: every shard half written, then every shard finished.
    const std::vector<uint8_t> half(8, 7);
    for (size_t i = 0; i < specs.size(); ++i) w.write(i, 0, half);
    for (size_t i = 0; i < specs.size(); ++i) w.write(i, 8, half);
    w.commit();
  }
  EXPECT_EQ(io::OpenFiles::instance().open_count(), 0u);
  CheckpointSource src({dir.path()});
  for (const auto& t : src.tensors()) EXPECT_EQ(src.read_all(t), std::vector<uint8_t>(16, 7));
}

}  // namespace
}  // namespace moeckpt
