// synth --sparse: the real layout as sparse files (holes for FP8 codes and large weights, real
// scales), which every command reads as a checkpoint of zero weights.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>

#include "moeckpt/error.hpp"
#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;

TEST(SparseSynth, SameLayoutAsTheDenseOneWithHolesForCodesAndRealScales) {
  test::TempDir dir;
  SynthOptions o;
  o.preset = "tiny";
  o.max_shard_bytes = 1 << 20;
  auto dense = synthesize_checkpoint(dir / "dense", o);
  o.sparse = true;
  auto sparse = synthesize_checkpoint(dir / "sparse", o);
  EXPECT_EQ(sparse.tensors, dense.tensors);
  EXPECT_EQ(sparse.total_bytes, dense.total_bytes);
  EXPECT_EQ(sparse.shards, dense.shards);
  uint64_t allocated = 0, size = 0;
  for (const auto& e : fs::directory_iterator(dir / "sparse")) {
    if (e.path().extension() != ".safetensors") continue;
    struct stat st {};
    ASSERT_EQ(::stat(e.path().c_str(), &st), 0);
    allocated += static_cast<uint64_t>(st.st_blocks) * 512;
    size += static_cast<uint64_t>(st.st_size);
    // The same header bytes as the dense checkpoint's shard of that name.
    const auto a = test::read_bytes(e.path()),
               b = test::read_bytes(dir / "dense" / e.path().filename());
    ASSERT_EQ(a.size(), b.size());
    uint64_t len = 0;
    for (int i = 0; i < 8; ++i) len |= static_cast<uint64_t>(a[static_cast<size_t>(i)]) << (8 * i);
    EXPECT_TRUE(std::equal(a.begin(), a.begin() + static_cast<std::ptrdiff_t>(8 + len), b.begin()))
        << e.path();
  }
  EXPECT_LT(allocated * 2, size) << "the codes should be holes";
  // Every scale is real (positive, finite) and every FP8 code zero: inspect's data scan passes and
  // from-hf converts it.
  auto r = test::run_cli({"inspect", (dir / "sparse").string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = test::run_cli({"from-hf", (dir / "sparse").string(), (dir / "native").string(), "--quiet"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // A layout synthesized by export has no sparse form.
  SynthOptions fused;
  fused.preset = "v26-tiny";
  fused.sparse = true;
  EXPECT_THROW(synthesize_checkpoint(dir / "fused", fused), Error);
}

}  // namespace
}  // namespace moeckpt
