// Input files that shrink or change while a conversion reads them: a clean moeckpt::Error naming
// the file and the tensor (reads are pread, never mmap, so no SIGBUS), never garbage.
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>

#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/synth.hpp"
#include "moeckpt/tensor_key.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;

fs::path micro(const test::TempDir& dir) {
  SynthOptions o;
  o.preset = "micro";
  o.seed = 1;
  synthesize_checkpoint(dir / "hf", o);
  return dir / "hf";
}

// Reads through a CheckpointSource and runs `hook` before read number `when` (1-based).
class HookedSource final : public TensorSource {
 public:
  HookedSource(const CheckpointSource& inner, int when, std::function<void()> hook)
      : inner_(inner), when_(when), hook_(std::move(hook)) {
    tensors_ = inner.tensors();
    index();
  }
  void read(const SourceTensor& t, uint64_t offset, std::span<uint8_t> out) const override {
    if (++reads_ == when_) hook_();
    inner_.read(inner_.tensors()[static_cast<size_t>(&t - tensors_.data())], offset, out);
  }
  std::map<std::string, std::string> metadata(size_t part) const override {
    return inner_.metadata(part);
  }
  size_t parts() const override { return inner_.parts(); }
  int reads() const { return reads_; }

 private:
  const CheckpointSource& inner_;
  int when_;
  std::function<void()> hook_;
  mutable std::atomic<int> reads_{0};
};

// The shard that holds `tensor`.
fs::path shard_of(const fs::path& dir, const std::string& tensor) {
  CheckpointSource src({dir});
  return src.find(tensor)->file;
}

void expect_error(const std::function<void()>& f, const std::string& fragment,
                  const std::string& file) {
  try {
    f();
    FAIL() << "no error; expected " << fragment;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    EXPECT_EQ(e.info().file, file) << e.what();
    EXPECT_FALSE(e.info().tensor.empty()) << e.what();
  }
}

TEST(HostileInput, ShardTruncatedMidConversionIsACleanError) {
  test::TempDir dir;
  const auto hf = micro(dir);
  const std::string victim = "model.layers.1.mlp.experts.3.down_proj.weight";
  const auto shard = shard_of(hf, victim);
  CheckpointSource inner({hf});
  auto config = ModelConfig::load(hf / "config.json");
  // Planning reads the scales; the data pass then runs one task at a time, and the shard loses
  // its data area after the first few reads.
  HookedSource src(inner, 3, [&] { fs::resize_file(shard, 64); });
  FromHfOptions o;
  o.prescan_scales = false;
  auto plan = plan_from_hf(src, config, o);
  ExecOptions exec;
  exec.threads = 1;
  expect_error([&] { run_in_memory(plan, src, exec); }, "while being read", shard.string());
  EXPECT_GE(src.reads(), 3);
}

TEST(HostileInput, ShardTruncatedBetweenPlanAndExecuteSaysItShrank) {
  test::TempDir dir;
  const auto hf = micro(dir);
  const auto shard = shard_of(hf, "model.layers.1.mlp.experts.2.gate_proj.weight");
  CheckpointSource src({hf});
  auto plan = plan_from_hf(src, ModelConfig::load(hf / "config.json"), {});
  const auto size = fs::file_size(shard);
  fs::resize_file(shard, size / 2);
  expect_error([&] { run_in_memory(plan, src); },
               "file shrank from " + std::to_string(size) + " to " + std::to_string(size / 2) +
                   " bytes while being read",
               shard.string());
}

TEST(HostileInput, FileRewrittenInPlaceIsRefused) {
  test::TempDir dir;
  const auto hf = micro(dir);
  const auto shard = shard_of(hf, "model.layers.0.mlp.up_proj.weight");
  CheckpointSource src({hf});
  auto plan = plan_from_hf(src, ModelConfig::load(hf / "config.json"), {});
  {  // same size, other bytes at the end of the file, and a new modification time
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-4, std::ios::end);
    f.write("\x11\x22\x33\x44", 4);
  }
  fs::last_write_time(shard, fs::last_write_time(shard) + std::chrono::seconds(5));
  expect_error([&] { run_in_memory(plan, src); }, "file changed while being read", shard.string());
}

TEST(HostileInput, FileReplacedByRenameKeepsReadingTheOpenedFile) {
  test::TempDir dir;
  const auto hf = micro(dir);
  const std::string name = "model.layers.0.mlp.up_proj.weight";
  const auto shard = shard_of(hf, name);
  auto ck = Checkpoint::open(hf);
  const auto before = ck.read_all(*ck.find(name));
  // A new file under the same name: the open descriptor still reads the old, consistent bytes.
  auto bytes = test::read_bytes(shard);
  std::fill(bytes.end() - 1000, bytes.end(), uint8_t{0x7F});
  test::write_bytes(dir / "replacement", bytes);
  fs::rename(dir / "replacement", shard);
  EXPECT_EQ(ck.read_all(*ck.find(name)), before);
}

// Planning refuses tensors whose size a header declares before anything is allocated for them:
// a header cannot promise more bytes than its file holds.
TEST(HostileInput, HeaderCannotDeclareMoreBytesThanTheFileHolds) {
  test::TempDir dir;
  test::write_bytes(
      dir / kSingleFileName,
      test::raw_safetensors(
          R"({"x":{"dtype":"F32","shape":[1048576,1048576],"data_offsets":[0,4398046511104]}})",
          {}));
  try {
    Checkpoint::open(dir.path());
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moeckpt
