// Sharded checkpoint folders: the index and the shards must agree exactly.
#include <gtest/gtest.h>

#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;
using test::raw_safetensors;

// Two shards: a.safetensors holds x (4 bytes), b.safetensors holds y (2 bytes).
void make_two_shards(const fs::path& dir) {
  test::write_bytes(
      dir / "a.safetensors",
      raw_safetensors(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", {1, 2, 3, 4}));
  test::write_bytes(
      dir / "b.safetensors",
      raw_safetensors(R"({"y":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}})", {5, 6}));
}

void expect_refused(const fs::path& dir, const std::string& fragment) {
  try {
    Checkpoint::open(dir);
    FAIL() << "accepted; expected: " << fragment;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(Checkpoint, OpensIndexedShards) {
  test::TempDir dir;
  make_two_shards(dir.path());
  test::write_text(
      dir / kIndexFileName,
      R"({"metadata":{"total_size":6},"weight_map":{"x":"a.safetensors","y":"b.safetensors"}})");
  auto ck = Checkpoint::open(dir.path());
  EXPECT_TRUE(ck.has_index());
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(ck.read_all(*ck.find("y")), (std::vector<uint8_t>{5, 6}));
  EXPECT_EQ(ck.total_bytes(), 6u);
}

TEST(Checkpoint, RefusesIndexProblems) {
  struct Case {
    std::string index;
    std::string fragment;
  };
  const Case cases[] = {
      {R"({"weight_map":{"x":"a.safetensors","y":"missing.safetensors"}})", "cannot open"},
      {R"({"weight_map":{"x":"a.safetensors","y":"../b.safetensors"}})", "not a plain file name"},
      {R"({"weight_map":{"x":"a.safetensors","y":"/etc/passwd"}})", "not a plain file name"},
      {R"({"weight_map":{"x":"a.safetensors","y":"sub/b.safetensors"}})", "not a plain file name"},
      {R"({"weight_map":{"x":"a.safetensors","y":".."}})", "not a plain file name"},
      {R"({"weight_map":{"x":"a.safetensors","y":""}})", "not a plain file name"},
      {R"({"weight_map":{"x":"a.safetensors","y":"b.safetensors","z":"b.safetensors"}})",
       "lacks it"},
      {R"({"weight_map":{"x":"b.safetensors","y":"b.safetensors"}})", "lacks it"},
      {R"({"weight_map":{"x":"a.safetensors","y":"b.safetensors","x":"a.safetensors"}})",
       "duplicate key"},
      {R"({"weight_map":{"x":"a.safetensors","y":3}})", "not a file name"},
      {R"({"weightmap":{}})", "no \"weight_map\""},
      {R"({"weight_map":[]})", "no \"weight_map\""},
      {R"({"metadata":{"total_size":7},"weight_map":{"x":"a.safetensors","y":"b.safetensors"}})",
       "total_size"},
      {R"({"metadata":{"total_size":"6"},"weight_map":{"x":"a.safetensors","y":"b.safetensors"}})",
       "total_size"},
      {R"({"metadata":[],"weight_map":{"x":"a.safetensors","y":"b.safetensors"}})", "metadata"},
      {R"({"weight_map":{"x":"a.safetensors","y":"b.safetensors"})", "not valid JSON"},
      {R"([1,2])", "not a JSON object"},
  };
  for (const auto& c : cases) {
    test::TempDir dir;
    make_two_shards(dir.path());
    test::write_text(dir / kIndexFileName, c.index);
    SCOPED_TRACE(c.index);
    expect_refused(dir.path(), c.fragment);
  }
}

TEST(Checkpoint, RefusesShardTensorMissingFromIndex) {
  test::TempDir dir;
  make_two_shards(dir.path());
  test::write_bytes(dir / "c.safetensors",
                    raw_safetensors(R"({"p":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                                    R"("q":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                                    {7, 8}));
  test::write_text(
      dir / kIndexFileName,
      R"({"weight_map":{"x":"a.safetensors","y":"b.safetensors","p":"c.safetensors"}})");
  expect_refused(dir.path(), "'q': tensor is in the shard but not in the index");
}

TEST(Checkpoint, WrongShardPlacementIsNamed) {
  test::TempDir dir;
  make_two_shards(dir.path());
  // x is in a.safetensors, the index claims b: both files are opened, a's x is not expected.
  test::write_text(
      dir / kIndexFileName,
      R"({"weight_map":{"x":"b.safetensors","y":"b.safetensors","w":"a.safetensors"}})");
  expect_refused(dir.path(), "lacks it");
}

TEST(Checkpoint, RefusesMissingCheckpointAndInvalidShard) {
  test::TempDir dir;
  expect_refused(dir.path(), "no checkpoint here");
  expect_refused(dir / "nope", "no such directory");
  test::write_bytes(dir / kSingleFileName, {1, 2, 3});
  expect_refused(dir.path(), "too short");
}

TEST(Checkpoint, ReadOfAFileThatShrankIsACleanError) {
  test::TempDir dir;
  test::write_bytes(dir / kSingleFileName,
                    raw_safetensors(R"({"x":{"dtype":"U8","shape":[64],"data_offsets":[0,64]}})",
                                    std::vector<uint8_t>(64, 9)));
  auto ck = Checkpoint::open(dir.path());
  fs::resize_file(dir / kSingleFileName, 80);
  try {
    ck.read_all(*ck.find("x"));
    FAIL() << "read past the end of a truncated file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("file shrank from 127 to 80 bytes while being read"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("'x'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moeckpt
