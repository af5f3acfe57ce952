#pragma once
// SIGINT/SIGTERM for the CLI. During a conversion the first signal asks it to stop at the next
// task boundary (temporary files removed, finished shards kept for --resume); a second signal, or
// one while nothing can be stopped gracefully, ends the process at once with the signal.
#include <atomic>
#include <thread>

namespace moeckpt::cli {

class InterruptWatch {
 public:
  // Blocks the signals in this thread (and so in every thread it starts later) and starts the
  // watcher thread. Create it first thing in main().
  InterruptWatch();
  ~InterruptWatch();  // stops and joins the watcher
  InterruptWatch(const InterruptWatch&) = delete;
  InterruptWatch& operator=(const InterruptWatch&) = delete;
  const std::atomic<bool>* flag() const noexcept { return &requested_; }
  void set_graceful(bool on) noexcept { graceful_ = on; }

 private:
  std::atomic<bool> requested_{false};
  std::atomic<bool> graceful_{false};
  std::atomic<bool> stopping_{false};
  std::thread watcher_;
};

}  // namespace moeckpt::cli
