#pragma once
// Conversion progress on stderr: a redrawn bar on a terminal (bytes, GB/s, ETA), one line per
// completed shard otherwise, nothing with --quiet.
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "moeckpt/adapter.hpp"

namespace moeckpt::cli {

class ProgressPrinter final : public ProgressListener {
 public:
  explicit ProgressPrinter(bool tty);
  void start(const std::vector<std::string>& shard_names,
             const std::vector<uint64_t>& shard_bytes) override;
  void written(size_t shard, uint64_t bytes) override;
  void finish() override;

 private:
  void draw(bool final);
  bool tty_;
  std::vector<std::string> names_;
  std::vector<uint64_t> shard_total_;
  std::unique_ptr<std::atomic<uint64_t>[]> shard_done_;
  std::atomic<uint64_t> done_{0};
  uint64_t total_ = 0;
  std::mutex mutex_;
  std::chrono::steady_clock::time_point t0_, last_draw_;
};

// Peak resident set size of this process image so far, in bytes: VmHWM of /proc/self/status,
// else getrusage's ru_maxrss (which also keeps the peak of what ran before an exec, such as a
// launcher's Python that exec'd this process).
uint64_t peak_rss_bytes();

}  // namespace moeckpt::cli
