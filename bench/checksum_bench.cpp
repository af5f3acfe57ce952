// The manifest checksum of a just-written shard, three ways, one per run so that peak RSS can be
// measured from outside (/usr/bin/time -f %M):
//   whole-map   one mapping of the whole file (the way before: every page stays resident)
//   windowed    io::own_file_checksum: 16 MiB mapped windows, each unmapped after hashing
//   pread       io::file_checksum: 8 MiB pread buffer
// Usage: moeckpt_checksum_bench FILE whole-map|windowed|pread
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "io/checksum.hpp"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s FILE whole-map|windowed|pread\n", argv[0]);
    return 2;
  }
  const std::string path = argv[1], mode = argv[2];
  const auto t0 = std::chrono::steady_clock::now();
  std::string sum;
  if (mode == "whole-map") {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat st {};
    if (fd < 0 || ::fstat(fd, &st) != 0) return 1;
    const auto size = static_cast<size_t>(st.st_size);
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return 1;
    ::madvise(p, size, MADV_SEQUENTIAL);
    const auto h = XXH3_128bits(p, size);
    ::munmap(p, size);
    ::close(fd);
    char buf[40];
    std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                  static_cast<unsigned long long>(h.low64));
    sum = buf;
  } else if (mode == "windowed") {
    sum = moeckpt::io::own_file_checksum(path);
  } else if (mode == "pread") {
    sum = moeckpt::io::file_checksum(path);
  } else {
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s %s %.3f s\n", mode.c_str(), sum.c_str(), s);
  return 0;
}
