#include "exec/raw_buffer.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <new>
#include <vector>

namespace moeckpt::exec::detail {
namespace {

constexpr size_t kAlign = 64;
constexpr size_t kGranule = size_t{1} << 20;  // sizes rounded up so near sizes share blocks
constexpr size_t kDefaultCacheBytes = size_t{256} << 20;  // per thread, kept for reuse

struct Block {
  void* p;
  size_t capacity;
};

// Freed blocks of this thread, freed for good when the thread ends.
// Blocks of a granule or more are mapped directly: freeing one gives its pages back to the
// system at once (malloc's heap would keep them resident, outside any budget).
void* allocate(size_t capacity) {
  if (capacity < kGranule) return std::aligned_alloc(kAlign, capacity);
  void* p = ::mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

void deallocate(void* p, size_t capacity) noexcept {
  if (capacity < kGranule)
    std::free(p);
  else
    ::munmap(p, capacity);
}

struct BlockCache {
  std::vector<Block> blocks;
  size_t bytes = 0;
  size_t limit = kDefaultCacheBytes;
  // Over the limit: drop the smallest blocks first (large ones are the costly ones to fault in).
  void trim() noexcept {
    while (bytes > limit) {
      auto it = std::min_element(blocks.begin(), blocks.end(), [](const Block& a, const Block& b) {
        return a.capacity < b.capacity;
      });
      bytes -= it->capacity;
      deallocate(it->p, it->capacity);
      blocks.erase(it);
    }
  }
  ~BlockCache() {
    for (auto& b : blocks) deallocate(b.p, b.capacity);
  }
};

thread_local BlockCache cache;

}  // namespace

void* acquire_block(size_t bytes, size_t& capacity) {
  auto& c = cache;
  // Best fit among cached blocks.
  size_t best = c.blocks.size();
  for (size_t i = 0; i < c.blocks.size(); ++i)
    if (c.blocks[i].capacity >= bytes &&
        (best == c.blocks.size() || c.blocks[i].capacity < c.blocks[best].capacity))
      best = i;
  if (best != c.blocks.size()) {
    Block b = c.blocks[best];
    c.blocks.erase(c.blocks.begin() + static_cast<long>(best));
    c.bytes -= b.capacity;
    capacity = b.capacity;
    return b.p;
  }
  capacity = block_bytes(bytes);
  void* p = allocate(capacity);
  if (!p) throw std::bad_alloc();
  return p;
}

void release_block(void* p, size_t capacity) noexcept {
  auto& c = cache;
  if (capacity > c.limit) {
    deallocate(p, capacity);
    return;
  }
  try {
    c.blocks.push_back({p, capacity});
  } catch (...) {
    deallocate(p, capacity);
    return;
  }
  c.bytes += capacity;
  c.trim();
}

size_t set_cache_limit(size_t bytes) noexcept {
  auto& c = cache;
  const size_t old = c.limit;
  c.limit = bytes;
  c.trim();
  return old;
}

size_t block_bytes(size_t bytes) noexcept {
  return bytes <= kGranule ? (bytes + kAlign - 1) / kAlign * kAlign
                           : (bytes + kGranule - 1) / kGranule * kGranule;
}

}  // namespace moeckpt::exec::detail
