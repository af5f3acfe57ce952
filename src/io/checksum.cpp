#include "io/checksum.hpp"

#include <sys/mman.h>
#include <xxhash.h>

#include <fmt/format.h>

#include <memory>
#include <vector>

#include "io/file.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt::io {
namespace {

std::string hex(XXH128_hash_t h) {
  return fmt::format("{:016x}{:016x}", h.high64, h.low64);
}

struct StateDeleter {
  void operator()(XXH3_state_t* s) const noexcept { XXH3_freeState(s); }
};

}  // namespace

std::string file_checksum(const std::filesystem::path& path) {
  File f = File::open_read(path);
  const uint64_t size = f.size();
  std::unique_ptr<XXH3_state_t, StateDeleter> state(XXH3_createState());
  if (!state || XXH3_128bits_reset(state.get()) != XXH_OK)
    fail(ErrorKind::kIo, path.string(), "", "out of memory");
  std::vector<uint8_t> buf(std::min<uint64_t>(size, 8ull << 20));
  for (uint64_t off = 0; off < size; off += buf.size()) {
    std::span<uint8_t> part(buf.data(), std::min<uint64_t>(buf.size(), size - off));
    f.pread_exact(off, part);
    XXH3_128bits_update(state.get(), part.data(), part.size());
  }
  return hex(XXH3_128bits_digest(state.get()));
}

std::string own_file_checksum(const std::filesystem::path& path) {
  File f = File::open_read(path);
  const uint64_t size = f.size();
  std::unique_ptr<XXH3_state_t, StateDeleter> state(XXH3_createState());
  if (!state || XXH3_128bits_reset(state.get()) != XXH_OK)
    fail(ErrorKind::kIo, path.string(), "", "out of memory");
  // Bounded windows: mapped file pages count in the resident set (and in a job scheduler's memory
  // accounting) while mapped, so a whole-file mapping of a 5 GB shard would add 5 GB to the peak.
  for (uint64_t off = 0; off < size; off += kChecksumWindowBytes) {
    const uint64_t len = std::min<uint64_t>(kChecksumWindowBytes, size - off);
    void* p = ::mmap(nullptr, len, PROT_READ, MAP_SHARED, f.fd(), static_cast<off_t>(off));
    if (p == MAP_FAILED) return file_checksum(path);
    ::madvise(p, len, MADV_SEQUENTIAL);
    XXH3_128bits_update(state.get(), p, len);
    ::munmap(p, len);
  }
  return hex(XXH3_128bits_digest(state.get()));
}

std::string text_checksum(std::string_view text) {
  return hex(XXH3_128bits(text.data(), text.size()));
}

}  // namespace moeckpt::io
