#pragma once
// Runs the same worker loop on `threads` threads (on the caller's own thread when one), and
// waits for all of them. The workers share their queue and error state through their captures.
#include <algorithm>
#include <atomic>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace moeckpt::exec {

inline unsigned default_threads(unsigned requested) {
  return requested ? requested : std::max(1u, std::thread::hardware_concurrency());
}

inline void run_worker_threads(unsigned threads, const std::function<void()>& worker) {
  if (threads <= 1) {
    worker();
    return;
  }
  std::vector<std::thread> pool;
  for (unsigned i = 0; i < threads; ++i) pool.emplace_back(worker);
  for (auto& th : pool) th.join();
}

// Calls body(i) for every i in [0, n) on up to `threads` threads (0: all cores), items taken in
// order from one shared counter. The first exception stops the rest and is rethrown here.
inline void parallel_for(size_t n, unsigned threads, const std::function<void(size_t)>& body) {
  if (n == 0) return;
  threads = static_cast<unsigned>(std::min<size_t>(default_threads(threads), n));
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex mutex;
  run_worker_threads(threads, [&] {
    for (size_t i; !failed && (i = next.fetch_add(1)) < n;) {
      try {
        body(i);
      } catch (...) {
        std::lock_guard lock(mutex);
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
  });
  if (error) std::rethrow_exception(error);
}

}  // namespace moeckpt::exec
