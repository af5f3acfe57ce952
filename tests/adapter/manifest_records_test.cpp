// The conversion manifest grows by one synced line per finished shard (record lines): never
// rewritten while a conversion runs, read back whole, with a last line a crash cut short ignored.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include "job/conversion_manifest.hpp"
#include "job/distributed_records.hpp"
#include "moeckpt/error.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;

const std::string kSumA(32, 'a'), kSumB(32, 'b');

uint64_t inode(const fs::path& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 ? st.st_ino : 0;
}

TEST(ManifestRecords, EachShardAppendsOneLineToTheSameFile) {
  test::TempDir dir;
  ConversionManifest m{"fp", {{"model-00001-of-00003.safetensors", {100, kSumA}}}};
  auto file = m.save(dir.path());
  const auto path = dir / kManifestFileName;
  const auto ino = inode(path);
  const auto size = fs::file_size(path);
  ConversionManifest::append_shard(file, "model-00002-of-00003.safetensors", {200, kSumB});
  EXPECT_EQ(inode(path), ino) << "the manifest was rewritten, not appended to";
  const auto line = fs::file_size(path) - size;
  ConversionManifest::append_shard(file, "model-00003-of-00003.safetensors", {300, kSumB});
  EXPECT_EQ(fs::file_size(path) - size, 2 * line) << "a record's cost grew with the record";
  const auto back = ConversionManifest::load(dir.path());
  ASSERT_TRUE(back);
  EXPECT_EQ(back->fingerprint, "fp");
  ASSERT_EQ(back->shards.size(), 3u);
  EXPECT_EQ(back->shards.at("model-00002-of-00003.safetensors").size, 200u);
  EXPECT_EQ(back->shards.at("model-00003-of-00003.safetensors").checksum, kSumB);
}

TEST(ManifestRecords, ALastLineCutShortIsIgnoredAnyOtherDamageRefused) {
  test::TempDir dir;
  ConversionManifest m{"fp", {{"a.safetensors", {100, kSumA}}}};
  (void)m.save(dir.path());
  const auto path = dir / kManifestFileName;
  const auto whole = test::read_text(path);
  // Half a line; zeros where an unsynced append extended the file; a line with zeros inside.
  const std::vector<std::string> tails{std::string(R"({"shard":"b.safetensors","si)"),
                                       std::string(40, '\0'),
                                       std::string("{\"shard\":\"b\0\0\0\0\"}\n", 18)};
  for (const auto& tail : tails) {
    test::write_text(path, whole + tail);
    const auto back = ConversionManifest::load(dir.path());
    ASSERT_TRUE(back);
    EXPECT_EQ(back->shards.size(), 1u);
  }
  // A damaged line with a record after it is not what a crash leaves: refused.
  test::write_text(path, whole + "{\"shard\":\"b.safet\n" +
                             R"({"shard":"c.safetensors","size":9,"xxh3_128":")" + kSumB + "\"}\n");
  EXPECT_THROW(ConversionManifest::load(dir.path()), Error);
}

TEST(ManifestRecords, TheWholeFileFormatOfEarlierVersionsIsRead) {
  test::TempDir dir;
  // As the earlier versions wrote it: one object, pretty-printed.
  const nlohmann::ordered_json old{
      {"format", "moeckpt-conversion-manifest-1"},
      {"fingerprint", "fp"},
      {"shards", {{"a.safetensors", {{"size", 100}, {"xxh3_128", kSumA}}}}}};
  test::write_text(dir / kManifestFileName, old.dump(2) + "\n");
  const auto back = ConversionManifest::load(dir.path());
  ASSERT_TRUE(back);
  EXPECT_EQ(back->fingerprint, "fp");
  EXPECT_EQ(back->shards.at("a.safetensors").checksum, kSumA);
}

TEST(ManifestRecords, AWorkerManifestRecordsShardsAndItsFailure) {
  test::TempDir dir;
  WorkerManifest w{"fp", 1, 2, {{"a.safetensors", {100, kSumA}}}, std::nullopt};
  auto file = w.save(dir.path());
  WorkerManifest::append_shard(file, "b.safetensors", {200, kSumB});
  WorkerManifest::append_failure(file, "interrupted");
  const auto back = WorkerManifest::load(dir.path(), 1, 2);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->shards.size(), 2u);
  ASSERT_TRUE(back->failure);
  EXPECT_EQ(*back->failure, "interrupted");
  // The same records under another worker's name are refused.
  std::filesystem::copy_file(dir.path() / worker_manifest_name(1, 2),
                             dir.path() / worker_manifest_name(0, 2));
  EXPECT_THROW(WorkerManifest::load(dir.path(), 0, 2), Error) << "another worker's name";
}

}  // namespace
}  // namespace moeckpt
