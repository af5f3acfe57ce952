#pragma once
// Task buffers: uninitialized (tasks overwrite them fully, so zero-filling would only cost a pass
// over memory), 64-byte aligned (transposed kernel stores never split a cache line), and recycled
// per thread (a conversion allocates the same few sizes over and over; reusing them avoids page
// faults and keeps the resident set stable whatever the checkpoint size).
#include <cstddef>
#include <cstdint>
#include <span>

namespace moeckpt::exec {

namespace detail {
void* acquire_block(size_t bytes, size_t& capacity);
void release_block(void* p, size_t capacity) noexcept;
// What a buffer of `bytes` occupies (sizes are rounded up so near sizes share blocks).
size_t block_bytes(size_t bytes) noexcept;
// The most bytes of freed blocks this thread keeps for reuse (it frees the excess); returns the
// previous limit.
size_t set_cache_limit(size_t bytes) noexcept;
}  // namespace detail

// Sets this thread's buffer cache limit for its lifetime in scope, then frees what it kept.
class ScopedBufferCache {
 public:
  explicit ScopedBufferCache(size_t limit) : old_(detail::set_cache_limit(limit)) {}
  ~ScopedBufferCache() {
    detail::set_cache_limit(0);
    detail::set_cache_limit(old_);
  }
  ScopedBufferCache(const ScopedBufferCache&) = delete;
  ScopedBufferCache& operator=(const ScopedBufferCache&) = delete;

 private:
  size_t old_;
};

template <class T>
class RawBuffer {
 public:
  explicit RawBuffer(size_t n = 0) : size_(n) {
    if (n) data_ = static_cast<T*>(detail::acquire_block(n * sizeof(T), capacity_));
  }
  RawBuffer(RawBuffer&& o) noexcept : data_(o.data_), size_(o.size_), capacity_(o.capacity_) {
    o.data_ = nullptr;
    o.size_ = o.capacity_ = 0;
  }
  RawBuffer& operator=(RawBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      data_ = o.data_;
      size_ = o.size_;
      capacity_ = o.capacity_;
      o.data_ = nullptr;
      o.size_ = o.capacity_ = 0;
    }
    return *this;
  }
  RawBuffer(const RawBuffer&) = delete;
  RawBuffer& operator=(const RawBuffer&) = delete;
  ~RawBuffer() { reset(); }

  T* data() noexcept { return data_; }
  const T* data() const noexcept { return data_; }
  size_t size() const noexcept { return size_; }
  T& operator[](size_t i) noexcept { return data_[i]; }
  const T& operator[](size_t i) const noexcept { return data_[i]; }
  std::span<T> span() noexcept { return {data_, size_}; }
  std::span<const uint8_t> bytes() const noexcept {
    return {reinterpret_cast<const uint8_t*>(data_), size_ * sizeof(T)};
  }

 private:
  void reset() noexcept {
    if (data_) detail::release_block(data_, capacity_);
    data_ = nullptr;
  }
  T* data_ = nullptr;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

}  // namespace moeckpt::exec
