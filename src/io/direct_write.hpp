#pragma once
// Large writes that bypass the page cache. Copying a shard into the page cache costs more CPU
// than the conversion itself on many machines (a 4.7 GB from-hf spent 7.7 s of its 16.8 s of
// system time in copy_folio_from_iter_atomic), and the dirty pages then have to be throttled and
// written back anyway. O_DIRECT transfers go from a small aligned buffer to the device instead.
#include <atomic>
#include <cstdint>
#include <span>

namespace moeckpt::io {

class File;

// Buffers of this size carry the direct transfers (a few, shared by the whole process).
inline constexpr uint64_t kDirectChunkBytes = 4ull << 20;

// Writes `bytes` at `offset` of `file`: the whole kDirectAlign blocks inside through O_DIRECT (a
// copy into one of the shared aligned buffers, then the transfer), the ragged ends buffered.
// `direct` is cleared, and everything written buffered, once the file system refuses O_DIRECT.
// Pieces too small to hold a block are written buffered. Returns the bytes written buffered.
uint64_t write_bypassing_cache(const File& file, uint64_t offset, std::span<const uint8_t> bytes,
                               std::atomic<bool>& direct);

}  // namespace moeckpt::io
