#pragma once
// A heap buffer left uninitialized: task buffers are fully overwritten, so zero-filling them (as
// std::vector does) only costs a pass over memory and page faults.
#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <span>

namespace moeckpt::exec {

// 64-byte aligned: transposed kernel stores then never split a cache line.
template <class T>
class RawBuffer {
 public:
  explicit RawBuffer(size_t n = 0)
      : data_(static_cast<T*>(
            std::aligned_alloc(64, std::max<size_t>(64, (n * sizeof(T) + 63) / 64 * 64)))),
        size_(n) {
    if (!data_) throw std::bad_alloc();
  }
  T* data() noexcept { return data_.get(); }
  const T* data() const noexcept { return data_.get(); }
  size_t size() const noexcept { return size_; }
  T& operator[](size_t i) noexcept { return data_[i]; }
  const T& operator[](size_t i) const noexcept { return data_[i]; }
  std::span<T> span() noexcept { return {data_.get(), size_}; }
  std::span<const uint8_t> bytes() const noexcept {
    return {reinterpret_cast<const uint8_t*>(data_.get()), size_ * sizeof(T)};
  }

 private:
  struct Free {
    void operator()(T* p) const noexcept { std::free(p); }
  };
  std::unique_ptr<T[], Free> data_;
  size_t size_;
};

// Keeps freed task buffers in the heap instead of returning them to the OS after each task
// (glibc otherwise maps and unmaps every large buffer, faulting its pages in again each time).
void keep_freed_buffers_in_heap();

}  // namespace moeckpt::exec
