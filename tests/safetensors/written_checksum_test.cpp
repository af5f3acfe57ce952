// Shard checksums computed from the written pieces (io::ChunkedChecksum, as ShardWriter hands them
// over) against the same checksum read back from the file (io::file_checksum), and the bytes of
// shards whose large pieces went through O_DIRECT against the bytes handed over.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "io/checksum.hpp"
#include "io/file.hpp"
#include "moeckpt/safetensors_writer.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

std::filesystem::path write_file(const std::filesystem::path& p, const std::vector<uint8_t>& v) {
  std::ofstream(p, std::ios::binary)
      .write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size()));
  return p;
}

// Random cuts, random order; some pieces never added (holes read back from the file).
TEST(WrittenChecksum, AnySplitInAnyOrderEqualsTheFileChecksum) {
  test::TempDir dir;
  std::mt19937 rng(11);
  for (uint64_t size :
       std::vector<uint64_t>{0, 1, 4095, io::kChecksumChunkBytes, io::kChecksumChunkBytes + 1,
                             5 * io::kChecksumChunkBytes + 12345}) {
    const auto bytes = random_bytes(size, static_cast<uint32_t>(size));
    const auto path = write_file(dir.path() / "f", bytes);
    const auto want = io::file_checksum(path);
    for (int trial = 0; trial < 12; ++trial) {
      std::vector<uint64_t> cuts{0, size};
      const int n = static_cast<int>(rng() % 40);
      for (int i = 0; i < n && size > 0; ++i) cuts.push_back(rng() % size);
      std::sort(cuts.begin(), cuts.end());
      cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
      std::vector<size_t> order(cuts.size() - 1);
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng);
      io::ChunkedChecksum c(size);
      for (size_t k : order) {
        if (trial % 3 == 2 && rng() % 4 == 0) continue;  // a hole: read back at the end
        c.add(cuts[k], std::span(bytes).subspan(cuts[k], cuts[k + 1] - cuts[k]));
      }
      EXPECT_EQ(c.finish(io::File::open_read(path)), want) << size << " trial " << trial;
    }
  }
}

// More shared chunks at once than the gathering allows: the excess is read back, same checksum.
TEST(WrittenChecksum, GatheringBeyondItsBoundReadsBack) {
  test::TempDir dir;
  const uint64_t chunks = io::ChunkedChecksum::kMaxGatheredBytes / io::kChecksumChunkBytes + 8;
  const uint64_t size = chunks * io::kChecksumChunkBytes;
  const auto bytes = random_bytes(size, 5);
  const auto path = write_file(dir.path() / "f", bytes);
  io::ChunkedChecksum c(size);
  // The first half of every chunk first (each chunk left open), then every second half.
  const uint64_t half = io::kChecksumChunkBytes / 2;
  for (uint64_t k = 0; k < chunks; ++k)
    c.add(k * io::kChecksumChunkBytes, std::span(bytes).subspan(k * io::kChecksumChunkBytes, half));
  for (uint64_t k = 0; k < chunks; ++k)
    c.add(k * io::kChecksumChunkBytes + half,
          std::span(bytes).subspan(k * io::kChecksumChunkBytes + half, half));
  EXPECT_EQ(c.finish(io::File::open_read(path)), io::file_checksum(path));
}

// Pieces at every alignment, some large enough for direct transfers, from two threads: the file
// holds exactly what was handed over, and the writer's checksum is the file's.
TEST(WrittenChecksum, ShardWriterBytesAndChecksumMatchWhatWasWritten) {
  test::TempDir dir;
  std::vector<TensorSpec> specs;
  std::vector<std::vector<uint8_t>> data;
  const std::vector<uint64_t> sizes{3, 4096, 4097, 9 << 20, 12345, 1, 5 << 20, 8191, 4 << 20};
  for (size_t i = 0; i < sizes.size(); ++i) {
    specs.push_back({"t" + std::to_string(i), Dtype::U8, {sizes[i]}});
    data.push_back(random_bytes(static_cast<size_t>(sizes[i]), static_cast<uint32_t>(i + 1)));
  }
  ShardWriter w(dir.path() / "model.safetensors", specs);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t)
    threads.emplace_back([&, t] {
      for (size_t i = static_cast<size_t>(t); i < specs.size(); i += 2) {
        // Three pieces at odd offsets.
        const uint64_t n = data[i].size(), a = n / 3 + 1, b = 2 * n / 3 + 3;
        std::span<const uint8_t> all(data[i]);
        if (n < b + 1) {
          w.write(i, 0, all);
          continue;
        }
        w.write(i, b, all.subspan(b));
        w.write(i, 0, all.first(a));
        w.write(i, a, all.subspan(a, b - a));
      }
    });
  for (auto& t : threads) t.join();
  w.commit();
  const auto path = dir.path() / "model.safetensors";
  EXPECT_EQ(w.checksum(), io::file_checksum(path));
  const auto file = test::read_text(path);
  const uint64_t header = 8 + *reinterpret_cast<const uint64_t*>(file.data());
  uint64_t at = header;
  for (size_t i = 0; i < data.size(); ++i) {
    EXPECT_EQ(
        file.compare(at, data[i].size(),
                     std::string(reinterpret_cast<const char*>(data[i].data()), data[i].size())),
        0)
        << specs[i].name;
    at += data[i].size();
  }
  EXPECT_EQ(at, file.size());
}

}  // namespace
}  // namespace moeckpt
