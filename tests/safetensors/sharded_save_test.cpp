// A sharded save (DCP's HF writer): tensors assembled from pieces in several files, against the
// whole tensors they were cut from, for random tilings, and every refusal.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>

#include "moeckpt/error.hpp"
#include "moeckpt/numerics.hpp"
#include "moeckpt/safetensors.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;

struct Piece {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape, offsets;
  std::vector<uint8_t> bytes;
};

// One rank's file as torch's writer (safetensors' serializer: __metadata__ first) or Automodel's
// (its streamed header: __metadata__ last) lays it out.
void write_piece_file(const fs::path& path, const std::vector<Piece>& pieces,
                      bool automodel = false, const std::string& version = "1.0") {
  nlohmann::ordered_json header, info = nlohmann::ordered_json::object();
  for (const auto& p : pieces) info[p.name] = {{"saved_offsets", p.offsets}};
  const nlohmann::ordered_json md = {{"DCP_SHARDING_INFO", info.dump()}, {"DCP_VERSION", version}};
  if (!automodel) header["__metadata__"] = md;
  std::vector<uint8_t> data;
  for (const auto& p : pieces) {
    header[p.name] = {{"dtype", p.dtype},
                      {"shape", p.shape},
                      {"data_offsets", {data.size(), data.size() + p.bytes.size()}}};
    data.insert(data.end(), p.bytes.begin(), p.bytes.end());
  }
  if (automodel) header["__metadata__"] = md;
  test::write_bytes(path, test::raw_safetensors(header.dump(), data));
}

std::string shard_name(int rank, int index = 1, int n = 1) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "shard-%05d-model-%05d-of-%05d.safetensors", rank + 1, index, n);
  return buf;
}

// The elements of box [lo, lo + size) of a row-major tensor `shape`, element size `es`.
std::vector<uint8_t> cut(const std::vector<uint8_t>& full, const std::vector<uint64_t>& shape,
                         const std::vector<uint64_t>& lo, const std::vector<uint64_t>& size,
                         size_t es) {
  std::vector<uint8_t> out;
  uint64_t n = 1;
  for (auto s : size) n *= s;
  for (uint64_t i = 0; i < n; ++i) {
    uint64_t rest = i, g = 0, stride = 1;
    std::vector<uint64_t> idx(size.size());
    for (size_t d = size.size(); d-- > 0;) {
      idx[d] = rest % size[d];
      rest /= size[d];
    }
    for (size_t d = shape.size(); d-- > 0;) {
      g += (idx[d] + lo[d]) * stride;
      stride *= shape[d];
    }
    out.insert(out.end(), full.begin() + static_cast<std::ptrdiff_t>(g * es),
               full.begin() + static_cast<std::ptrdiff_t>((g + 1) * es));
  }
  return out;
}

void expect_refused(const fs::path& dir, const std::vector<std::string>& fragments) {
  try {
    Checkpoint::open(dir);
    FAIL() << "accepted; expected: " << fragments.front();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    for (const auto& f : fragments) EXPECT_NE(what.find(f), std::string::npos) << what;
  }
}

TEST(ShardedSave, RandomTilingsReadAsTheWholeTensor) {
  std::mt19937_64 rng(11);
  const std::vector<std::pair<std::string, size_t>> dtypes = {
      {"F32", 4}, {"BF16", 2}, {"I64", 8}, {"U8", 1}, {"BOOL", 1}};
  for (int trial = 0; trial < 200; ++trial) {
    test::TempDir dir;
    const size_t nd = 1 + rng() % 3;
    std::vector<uint64_t> shape(nd);
    for (auto& s : shape) s = 1 + rng() % 9;
    const auto [dtype, es] = dtypes[rng() % dtypes.size()];
    uint64_t numel = 1;
    for (auto s : shape) numel *= s;
    std::vector<uint8_t> full(numel * es);
    for (auto& b : full) b = static_cast<uint8_t>(dtype == "BOOL" ? rng() % 2 : rng());
    // Boxes by random cuts of random boxes (rows, columns, both: FSDP, TP, 2-D meshes).
    std::vector<std::pair<std::vector<uint64_t>, std::vector<uint64_t>>> boxes = {
        {std::vector<uint64_t>(nd, 0), shape}};
    for (int k = 0, cuts = static_cast<int>(rng() % 6); k < cuts; ++k) {
      auto& [lo, size] = boxes[rng() % boxes.size()];
      const size_t d = rng() % nd;
      if (size[d] < 2) continue;
      const uint64_t at = 1 + rng() % (size[d] - 1);
      auto lo2 = lo, size2 = size;
      lo2[d] += at;
      size2[d] -= at;
      size[d] = at;
      boxes.push_back({lo2, size2});
    }
    const int ranks = 1 + static_cast<int>(rng() % 4);
    std::vector<std::vector<Piece>> files(static_cast<size_t>(ranks));
    for (const auto& [lo, size] : boxes)
      files[rng() % files.size()].push_back({"w", dtype, size, lo, cut(full, shape, lo, size, es)});
    // An empty FSDP piece on some rank that holds none of this tensor.
    for (auto& f : files)
      if (f.empty()) {
        auto size = shape;
        size[0] = 0;
        auto lo = std::vector<uint64_t>(nd, 0);
        lo[0] = shape[0];
        f.push_back({"w", dtype, size, lo, {}});
      }
    for (size_t r = 0; r < files.size(); ++r) {
      // Two pieces of one tensor never share a file: one file per rank and piece here.
      for (size_t i = 0; i < files[r].size(); ++i)
        write_piece_file(dir / shard_name(static_cast<int>(r * 16 + i)), {files[r][i]});
    }
    const auto ck = Checkpoint::open(dir.path());
    ASSERT_NE(ck.sharded_save(), nullptr);
    const auto* e = ck.find("w");
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->info->shape, shape) << trial;
    EXPECT_EQ(ck.read_all(*e), full) << trial;
    for (int k = 0; k < 20; ++k) {  // any byte range, aligned or not
      const uint64_t a = rng() % (full.size() + 1), b = a + rng() % (full.size() - a + 1);
      std::vector<uint8_t> part(b - a);
      ck.read(*e, a, part);
      EXPECT_TRUE(
          std::equal(part.begin(), part.end(), full.begin() + static_cast<std::ptrdiff_t>(a)))
          << trial << " [" << a << ", " << b << ")";
    }
  }
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

TEST(ShardedSave, AutomodelSaveReadsInItsHfDtypesOrACast) {
  test::TempDir dir;
  const std::vector<float> w = {1.0f, 1.00390625f, -3.3e38f, 1e-40f,
                                0.1f, -0.0f,       65504.f,  std::nanf("")};
  write_piece_file(dir / shard_name(0),
                   {{"w", "F32", {2, 2}, {0, 0}, f32_bytes({w[0], w[1], w[2], w[3]})},
                    {"bias", "F32", {2}, {0}, f32_bytes({0.5f, 0.25f})},
                    {"ids", "I64", {1}, {0}, std::vector<uint8_t>(8, 7)}},
                   true);
  write_piece_file(dir / shard_name(1),
                   {{"w", "F32", {2, 2}, {2, 0}, f32_bytes({w[4], w[5], w[6], w[7]})}}, true);
  fs::create_directories(dir / kShardedMetadataDir);
  test::write_text(dir / kShardedMetadataDir / "fqn_to_file_index_mapping.json",
                   R"({"bias": 2, "ids": 1, "w": 1})");
  test::write_text(dir / kShardedMetadataDir / "fqn_to_dtype_mapping.json",
                   R"({"bias": "F32", "ids": "I64", "w": "BF16"})");
  auto expect_w = [&](const Checkpoint& ck, Dtype as) {
    const auto* e = ck.find("w");
    ASSERT_EQ(e->info->dtype, as);
    const auto got = ck.read_all(*e);
    for (size_t i = 0; i < w.size(); ++i) {
      uint16_t bits;
      std::memcpy(&bits, got.data() + 2 * i, 2);
      // torch's .to(bfloat16) of a tensor makes a NaN 0xFFFF.
      const uint16_t want = as == Dtype::F16   ? numerics::f32_to_f16_rne(w[i])
                            : std::isnan(w[i]) ? uint16_t{0xFFFF}
                                               : numerics::f32_to_bf16_rne(w[i]);
      EXPECT_EQ(bits, want) << i;
    }
  };
  const auto ck = Checkpoint::open(dir.path());
  EXPECT_EQ(ck.sharded_save()->writer, ShardedWriter::kAutomodel);
  EXPECT_EQ(ck.sharded_save()->output_files, 2);
  EXPECT_EQ(ck.find("bias")->pieces->output_file, 2);
  expect_w(ck, Dtype::BF16);
  EXPECT_EQ(ck.find("bias")->info->dtype, Dtype::F32);
  // Automodel's cast: F32-mapped and integer tensors kept.
  const auto cast = Checkpoint::open(dir.path(), Dtype::F16);
  expect_w(cast, Dtype::F16);
  EXPECT_EQ(cast.find("bias")->info->dtype, Dtype::F32);
  EXPECT_EQ(cast.find("ids")->info->dtype, Dtype::I64);
  EXPECT_EQ(cast.read_all(*cast.find("ids")), std::vector<uint8_t>(8, 7));
}

TEST(ShardedSave, Refusals) {
  auto two = [](const fs::path& d, std::vector<uint64_t> lo2, std::string dtype2 = "F32",
                std::vector<uint64_t> shape2 = {2, 4}) {
    write_piece_file(d / shard_name(0), {{"w", "F32", {2, 4}, {0, 0}, std::vector<uint8_t>(32)}});
    uint64_t n = 1;
    for (auto s : shape2) n *= s;
    write_piece_file(d / shard_name(1), {{"w", dtype2, shape2, lo2,
                                          std::vector<uint8_t>(n * (dtype2 == "F32" ? 4 : 2))}});
  };
  {
    test::TempDir d;
    two(d.path(), {3, 0});  // rows 2..3 are nobody's
    expect_refused(d.path(), {"tensor 'w'", "elements [2:3, 0:4] are in no piece"});
  }
  {
    test::TempDir d;
    two(d.path(), {1, 2});
    expect_refused(d.path(), {"tensor 'w'", "overlaps", "[1:2, 2:4]"});
  }
  {
    test::TempDir d;
    two(d.path(), {2, 0}, "BF16");
    expect_refused(d.path(), {"tensor 'w'", "BF16", "F32"});
  }
  {
    test::TempDir d;
    two(d.path(), {2}, "F32", {2});
    expect_refused(d.path(), {"tensor 'w'", "dimensions"});
  }
  {
    test::TempDir d;
    two(d.path(), {uint64_t{1} << 60, 0});
    expect_refused(d.path(), {"tensor 'w'", "not a valid offset"});
  }
  {
    test::TempDir d;
    two(d.path(), {2, 0});
    fs::rename(d / shard_name(1), d / shard_name(1, 1, 2));
    expect_refused(d.path(), {"files of two saves"});
  }
  {
    test::TempDir d;
    two(d.path(), {2, 0});
    write_piece_file(d / shard_name(1), {{"w", "F32", {2, 4}, {2, 0}, std::vector<uint8_t>(32)}},
                     false, "2.0");
    expect_refused(d.path(), {"DCP_VERSION"});
  }
  {
    test::TempDir d;
    two(d.path(), {2, 0});
    write_piece_file(d / shard_name(1), {{"w", "F32", {2, 4}, {2, 0}, std::vector<uint8_t>(32)}},
                     true);
    expect_refused(d.path(), {"automodel", "torch", "two saves"});
  }
  {
    test::TempDir d;
    two(d.path(), {2, 0});
    test::write_bytes(
        d / shard_name(2),
        test::raw_safetensors(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                              {0, 0, 0, 0}));
    expect_refused(d.path(), {"DCP_SHARDING_INFO"});
  }
  {
    test::TempDir d;
    two(d.path(), {2, 0});
    test::write_bytes(d / "consolidated.safetensors", test::read_bytes(d / shard_name(0)));
    expect_refused(d.path(), {"consolidated.safetensors", "not one of its files"});
  }
  {
    test::TempDir d;
    write_piece_file(d / "shard-00001-model-00001-of-1000000000000.safetensors",
                     {{"w", "F32", {1}, {0}, std::vector<uint8_t>(4)}});
    expect_refused(d.path(), {"1000000000000", "too large"});
  }
  {
    test::TempDir d;  // reads outside the tensor are refused, not filled from nowhere
    two(d.path(), {2, 0});
    const auto ck = Checkpoint::open(d.path());
    std::vector<uint8_t> out(8);
    EXPECT_THROW(ck.read(*ck.find("w"), 60, out), Error);
  }
  {
    test::TempDir d;  // Automodel's layout needs its mapping
    write_piece_file(d / shard_name(0), {{"w", "F32", {2}, {0}, std::vector<uint8_t>(8)}}, true);
    expect_refused(d.path(), {"fqn_to_file_index_mapping.json", "missing"});
    fs::create_directories(d / kShardedMetadataDir);
    test::write_text(d / kShardedMetadataDir / "fqn_to_file_index_mapping.json", R"({"w": 0})");
    expect_refused(d.path(), {"tensor 'w'", "file index 0"});
    test::write_text(d / kShardedMetadataDir / "fqn_to_file_index_mapping.json",
                     R"({"w": 1, "v": 1})");
    expect_refused(d.path(), {"tensor 'v'", "no file of the save holds a piece"});
    // The base checkpoint's FP8 scales and a tied output embedding: listed, never saved.
    test::write_text(d / kShardedMetadataDir / "fqn_to_file_index_mapping.json",
                     R"({"w": 1, "w_scale_inv": 1, "lm_head.weight": 1})");
    expect_refused(d.path(), {"tensor 'lm_head.weight'", "no file of the save holds a piece"});
    test::write_text(d / kShardedMetadataDir / "config.json", R"({"tie_word_embeddings": true})");
    EXPECT_EQ(Checkpoint::open(d.path()).names(), std::vector<std::string>{"w"});
    fs::remove(d / kShardedMetadataDir / "config.json");
    test::write_text(d / kShardedMetadataDir / "fqn_to_file_index_mapping.json", R"({})");
    expect_refused(d.path(), {"tensor 'w'", "no place"});
    test::write_text(d / kShardedMetadataDir / "fqn_to_file_index_mapping.json", R"({"w": 1})");
    test::write_text(d / kShardedMetadataDir / "fqn_to_dtype_mapping.json", R"({"w": "F12"})");
    expect_refused(d.path(), {"tensor 'w'", "not a safetensors dtype"});
    test::write_text(d / kShardedMetadataDir / "fqn_to_dtype_mapping.json", R"({"w": "F64"})");
    expect_refused(d.path(), {"tensor 'w'", "F32 to F64"});
    test::write_text(d / kShardedMetadataDir / "fqn_to_dtype_mapping.json", R"({"w": "BF16"})");
    EXPECT_EQ(Checkpoint::open(d.path()).find("w")->info->dtype, Dtype::BF16);
  }
}

}  // namespace
}  // namespace moeckpt
