// The content checksum of a shard (io/checksum.hpp), two ways: read back from the file
// (io::file_checksum, what --resume and finalize do) and computed from the bytes as a writer
// hands them over in pieces (io::ChunkedChecksum, what a conversion does). Both print the same
// value; peak RSS can be measured from outside (/usr/bin/time -f %M).
// Usage: moeckpt_checksum_bench FILE file|pieces [PIECE_BYTES]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "io/checksum.hpp"
#include "io/file.hpp"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s FILE file|pieces [PIECE_BYTES]\n", argv[0]);
    return 2;
  }
  const std::string path = argv[1], mode = argv[2];
  const auto t0 = std::chrono::steady_clock::now();
  std::string sum;
  if (mode == "file") {
    sum = moeckpt::io::file_checksum(path);
  } else if (mode == "pieces") {
    // Pieces of an odd size (not chunk-aligned), handed over in reverse order: the worst case
    // for gathering.
    const uint64_t piece = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 23'000'017;
    auto f = moeckpt::io::File::open_read(path);
    const uint64_t size = f.size();
    moeckpt::io::ChunkedChecksum c(size);
    std::vector<uint8_t> buf(piece);
    for (uint64_t end = size; end > 0;) {
      const uint64_t start = end > piece ? end - piece : 0;
      std::span<uint8_t> part(buf.data(), end - start);
      f.pread_exact(start, part);
      c.add(start, part);
      end = start;
    }
    sum = c.finish(f);
  } else {
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s %s %.3f s\n", mode.c_str(), sum.c_str(), s);
  return 0;
}
