#include "exec/raw_buffer.hpp"

#include <algorithm>
#include <cstdlib>
#include <new>
#include <vector>

namespace moeckpt::exec::detail {
namespace {

constexpr size_t kAlign = 64;
constexpr size_t kGranule = size_t{1} << 20;       // sizes rounded up so near sizes share blocks
constexpr size_t kCacheBytes = size_t{256} << 20;  // per thread, kept for reuse

struct Block {
  void* p;
  size_t capacity;
};

// Freed blocks of this thread, freed for good when the thread ends.
struct BlockCache {
  std::vector<Block> blocks;
  size_t bytes = 0;
  ~BlockCache() {
    for (auto& b : blocks) std::free(b.p);
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
  capacity = bytes <= kGranule ? (bytes + kAlign - 1) / kAlign * kAlign
                               : (bytes + kGranule - 1) / kGranule * kGranule;
  void* p = std::aligned_alloc(kAlign, capacity);
  if (!p) throw std::bad_alloc();
  return p;
}

void release_block(void* p, size_t capacity) noexcept {
  auto& c = cache;
  if (capacity > kCacheBytes) {
    std::free(p);
    return;
  }
  try {
    c.blocks.push_back({p, capacity});
  } catch (...) {
    std::free(p);
    return;
  }
  c.bytes += capacity;
  // Over the cap: drop the smallest blocks first (large ones are the costly ones to fault in).
  while (c.bytes > kCacheBytes) {
    auto it =
        std::min_element(c.blocks.begin(), c.blocks.end(),
                         [](const Block& a, const Block& b) { return a.capacity < b.capacity; });
    c.bytes -= it->capacity;
    std::free(it->p);
    c.blocks.erase(it);
  }
}

}  // namespace moeckpt::exec::detail
