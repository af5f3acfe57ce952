#include "io/direct_write.hpp"

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

#include "io/file.hpp"

namespace moeckpt::io {
namespace {

// A fixed number of aligned transfer buffers for the whole process, however many threads write:
// what direct writes add to the resident set is bounded (4 x 4 MiB), and a few transfers in
// flight keep any device busy.
class TransferBuffers {
 public:
  static constexpr size_t kCount = 4;
  static TransferBuffers& instance() {
    static TransferBuffers pool;
    return pool;
  }
  uint8_t* take() {
    std::unique_lock lock(mutex_);
    freed_.wait(lock, [&] { return !free_.empty() || allocated_ < kCount; });
    if (!free_.empty()) {
      uint8_t* p = free_.back();
      free_.pop_back();
      return p;
    }
    void* p = std::aligned_alloc(kDirectAlign, kDirectChunkBytes);
    if (!p) throw std::bad_alloc();
    ++allocated_;
    return static_cast<uint8_t*>(p);
  }
  void give(uint8_t* p) noexcept {
    {
      std::lock_guard lock(mutex_);
      free_.push_back(p);  // capacity reserved: never throws
    }
    freed_.notify_one();
  }

 private:
  TransferBuffers() { free_.reserve(kCount); }
  ~TransferBuffers() {
    for (auto* p : free_) std::free(p);
  }
  std::mutex mutex_;
  std::condition_variable freed_;
  std::vector<uint8_t*> free_;
  size_t allocated_ = 0;
};

struct TakenBuffer {
  uint8_t* p = TransferBuffers::instance().take();
  ~TakenBuffer() { TransferBuffers::instance().give(p); }
};

}  // namespace

uint64_t write_bypassing_cache(const File& file, uint64_t offset, std::span<const uint8_t> bytes,
                               std::atomic<bool>& direct) {
  const uint64_t end = offset + bytes.size();
  const uint64_t a = (offset + kDirectAlign - 1) / kDirectAlign * kDirectAlign;
  const uint64_t b = end / kDirectAlign * kDirectAlign;
  if (!direct.load(std::memory_order_relaxed) || a >= b) {
    file.pwrite_all(offset, bytes);
    return bytes.size();
  }
  {
    TakenBuffer buffer;
    for (uint64_t at = a; at < b; at += kDirectChunkBytes) {
      const uint64_t n = std::min<uint64_t>(kDirectChunkBytes, b - at);
      std::memcpy(buffer.p, bytes.data() + (at - offset), n);
      if (!file.pwrite_direct(at, {buffer.p, n})) {
        if (at != a) {
          // Refused after earlier blocks went through: write the rest buffered.
          file.pwrite_all(at, bytes.subspan(at - offset, b - at));
          break;
        }
        direct.store(false, std::memory_order_relaxed);
        file.pwrite_all(offset, bytes);
        return bytes.size();
      }
    }
  }
  if (a > offset) file.pwrite_all(offset, bytes.first(a - offset));
  if (end > b) file.pwrite_all(b, bytes.subspan(b - offset));
  return (a - offset) + (end - b);
}

}  // namespace moeckpt::io
