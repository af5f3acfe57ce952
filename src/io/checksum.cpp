#include "io/checksum.hpp"

#include <xxhash.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "io/file.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt::io {
namespace {

std::string hex(XXH128_hash_t h) {
  return fmt::format("{:016x}{:016x}", h.high64, h.low64);
}

void digest_into(const uint8_t* p, size_t n, uint8_t* out) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits(p, n));
  std::memcpy(out, c.digest, sizeof c.digest);
}

std::string combine(const std::vector<uint8_t>& digests) {
  return hex(XXH3_128bits(digests.data(), digests.size()));
}

uint64_t chunks_of(uint64_t size) {
  return (size + kChecksumChunkBytes - 1) / kChecksumChunkBytes;
}

}  // namespace

std::string file_checksum(const std::filesystem::path& path) {
  File f = File::open_read(path);
  const uint64_t size = f.size();
  std::vector<uint8_t> digests(chunks_of(size) * 16);
  // 8 chunks per read: few system calls, a buffer that stays in cache-sized pieces when hashed.
  std::vector<uint8_t> buf(std::min<uint64_t>(size, 8 * kChecksumChunkBytes));
  for (uint64_t off = 0; off < size; off += buf.size()) {
    std::span<uint8_t> part(buf.data(), std::min<uint64_t>(buf.size(), size - off));
    f.pread_exact(off, part);
    for (uint64_t at = 0; at < part.size(); at += kChecksumChunkBytes)
      digest_into(part.data() + at, std::min<uint64_t>(kChecksumChunkBytes, part.size() - at),
                  digests.data() + (off + at) / kChecksumChunkBytes * 16);
  }
  return combine(digests);
}

std::string text_checksum(std::string_view text) {
  return hex(XXH3_128bits(text.data(), text.size()));
}

ChunkedChecksum::ChunkedChecksum(uint64_t size)
    : size_(size), digests_(chunks_of(size) * 16), state_(chunks_of(size), kOpen) {}

uint64_t ChunkedChecksum::chunk_size(uint64_t c) const {
  return std::min(kChecksumChunkBytes, size_ - c * kChecksumChunkBytes);
}

void ChunkedChecksum::add(uint64_t offset, std::span<const uint8_t> bytes) {
  const uint64_t end = offset + bytes.size();
  if (bytes.empty() || end > size_) return;
  for (uint64_t c = offset / kChecksumChunkBytes; c * kChecksumChunkBytes < end; ++c) {
    const uint64_t c0 = c * kChecksumChunkBytes, c1 = c0 + chunk_size(c);
    const uint64_t p0 = std::max(offset, c0), p1 = std::min(end, c1);
    const uint8_t* src = bytes.data() + (p0 - offset);
    if (p0 == c0 && p1 == c1) {
      uint8_t d[16];
      digest_into(src, p1 - p0, d);  // outside the lock: the costly part
      std::lock_guard lock(mutex_);
      std::memcpy(digests_.data() + c * 16, d, 16);
      state_[c] = kHashed;
      continue;
    }
    std::lock_guard lock(mutex_);
    if (state_[c] != kOpen) continue;
    auto it = gathered_.find(c);
    if (it == gathered_.end()) {
      if (gathered_bytes_ + (c1 - c0) > kMaxGatheredBytes) {
        state_[c] = kReadBack;
        continue;
      }
      it =
          gathered_.emplace(c, Gathered{std::unique_ptr<uint8_t[]>(new uint8_t[c1 - c0]), 0}).first;
      gathered_bytes_ += c1 - c0;
    }
    std::memcpy(it->second.bytes.get() + (p0 - c0), src, p1 - p0);
    if ((it->second.have += p1 - p0) == c1 - c0) {
      digest_into(it->second.bytes.get(), c1 - c0, digests_.data() + c * 16);
      state_[c] = kHashed;
      gathered_bytes_ -= c1 - c0;
      gathered_.erase(it);
    }
  }
}

std::string ChunkedChecksum::finish(const File& file) {
  std::lock_guard lock(mutex_);
  std::vector<uint8_t> buf;
  for (uint64_t c = 0; c < state_.size(); ++c) {
    if (state_[c] == kHashed) continue;
    buf.resize(chunk_size(c));
    file.pread_exact(c * kChecksumChunkBytes, buf);
    digest_into(buf.data(), buf.size(), digests_.data() + c * 16);
    state_[c] = kHashed;
  }
  gathered_.clear();
  gathered_bytes_ = 0;
  return combine(digests_);
}

}  // namespace moeckpt::io
