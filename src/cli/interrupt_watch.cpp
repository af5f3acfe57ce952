#include "cli/interrupt_watch.hpp"

#include <pthread.h>
#include <signal.h>

#include <thread>

namespace moeckpt::cli {

InterruptWatch::InterruptWatch() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  watcher_ = std::thread([this, set] {
    for (;;) {
      int sig = 0;
      if (sigwait(&set, &sig) != 0) continue;
      if (stopping_.load()) return;
      if (graceful_.load() && !requested_.exchange(true)) continue;
      // Die of the signal itself, as a shell expects.
      ::signal(sig, SIG_DFL);
      pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
      ::raise(sig);
    }
  });
}

InterruptWatch::~InterruptWatch() {
  stopping_ = true;
  // The signal is blocked everywhere, so it waits for the watcher's sigwait.
  pthread_kill(watcher_.native_handle(), SIGTERM);
  watcher_.join();
}

}  // namespace moeckpt::cli
