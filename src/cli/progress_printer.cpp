#include "cli/progress_printer.hpp"

#include <sys/resource.h>

#include <cstdio>

namespace moeckpt::cli {

ProgressPrinter::ProgressPrinter(bool tty) : tty_(tty) {}

void ProgressPrinter::start(const std::vector<std::string>& names,
                            const std::vector<uint64_t>& bytes) {
  names_ = names;
  shard_total_ = bytes;
  shard_done_ = std::make_unique<std::atomic<uint64_t>[]>(bytes.size());
  total_ = 0;
  for (auto b : bytes) total_ += b;
  t0_ = last_draw_ = std::chrono::steady_clock::now();
}

void ProgressPrinter::written(size_t shard, uint64_t bytes) {
  done_ += bytes;
  const uint64_t now_done = shard_done_[shard] += bytes;
  if (!tty_) {
    if (now_done == shard_total_[shard]) {
      std::lock_guard lock(mutex_);
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
      std::fprintf(stderr, "shard %zu/%zu %s done (%.2f GB) at %.1f s\n", shard + 1, names_.size(),
                   names_[shard].c_str(), static_cast<double>(shard_total_[shard]) / 1e9, secs);
    }
    return;
  }
  auto now = std::chrono::steady_clock::now();
  std::unique_lock lock(mutex_, std::try_to_lock);
  if (lock.owns_lock() && now - last_draw_ > std::chrono::milliseconds(200)) {
    last_draw_ = now;
    draw(false);
  }
}

void ProgressPrinter::draw(bool final) {
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  const uint64_t done = done_.load();
  const double frac = total_ ? static_cast<double>(done) / static_cast<double>(total_) : 1.0;
  const double rate = secs > 0 ? static_cast<double>(done) / secs : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : 0.0;
  constexpr int kWidth = 30;
  std::string bar(kWidth, ' ');
  for (int i = 0; i < static_cast<int>(frac * kWidth); ++i) bar[static_cast<size_t>(i)] = '=';
  std::fprintf(stderr, "\r[%s] %6.2f / %.2f GB  %6.2f GB/s  ETA %4.0f s%s", bar.c_str(),
               static_cast<double>(done) / 1e9, static_cast<double>(total_) / 1e9, rate / 1e9, eta,
               final ? "\n" : "");
  std::fflush(stderr);
}

void ProgressPrinter::finish() {
  if (tty_) {
    std::lock_guard lock(mutex_);
    draw(true);
  }
}

uint64_t peak_rss_bytes() {
  // ru_maxrss survives execve (the kernel keeps the old image's peak), so under torchrun it would
  // report the launcher's; VmHWM is this image's own.
  if (FILE* f = std::fopen("/proc/self/status", "re")) {
    char line[256];
    unsigned long long kib = 0;
    bool found = false;
    while (!found && std::fgets(line, sizeof line, f))
      found = std::sscanf(line, "VmHWM: %llu kB", &kib) == 1;
    std::fclose(f);
    if (found) return static_cast<uint64_t>(kib) * 1024;
  }
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024;
}

}  // namespace moeckpt::cli
