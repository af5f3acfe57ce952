#pragma once
// Runs the same worker loop on `threads` threads (on the caller's own thread when one), and
// waits for all of them. The workers share their queue and error state through their captures.
#include <functional>
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

}  // namespace moeckpt::exec
