#pragma once
// Content checksums of written files (hex): what --resume and finalize trust a finished shard by.
//
// A file's checksum is XXH3-128 over the XXH3-128 digests (canonical bytes) of its consecutive
// kChecksumChunkBytes chunks, the last one shorter. Chunked, so that a writer computes it from its
// buffers as the pieces land, in any order (ChunkedChecksum), instead of reading the file back.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moeckpt::io {

class File;

inline constexpr uint64_t kChecksumChunkBytes = 1ull << 20;

std::string file_checksum(const std::filesystem::path& path);
std::string text_checksum(std::string_view text);

// The checksum of a file of `size` bytes being written in disjoint pieces, in any order, from any
// thread. Whole chunks are hashed from the piece at once; a chunk that several pieces share is
// gathered in memory until complete, up to kMaxGatheredBytes in all, and beyond that (or where
// nothing was added: holes) read back from the file at the end.
class ChunkedChecksum {
 public:
  static constexpr uint64_t kMaxGatheredBytes = 16ull << 20;
  explicit ChunkedChecksum(uint64_t size);
  void add(uint64_t offset, std::span<const uint8_t> bytes);
  // Every byte is in the file: the checksum, reading what add() did not cover from `file`.
  std::string finish(const File& file);

 private:
  struct Gathered {
    std::unique_ptr<uint8_t[]> bytes;
    uint64_t have = 0;
  };
  enum State : uint8_t { kOpen, kHashed, kReadBack };
  uint64_t chunk_size(uint64_t c) const;
  uint64_t size_;
  std::vector<uint8_t> digests_;  // 16 canonical bytes per chunk
  std::vector<State> state_;
  std::map<uint64_t, Gathered> gathered_;
  uint64_t gathered_bytes_ = 0;
  std::mutex mutex_;
};

}  // namespace moeckpt::io
