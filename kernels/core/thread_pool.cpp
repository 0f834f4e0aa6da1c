// A small persistent thread pool: parallel_for(n_tasks, threads, fn) with the caller taking part.
//
// Waking a thread that sleeps on a futex costs tens of microseconds on a VM, as much as a whole
// 4096 x 4096 int4 GEMV, and a region pays it twice (the helpers' wake-up and the caller's). So
// idle helpers, and a caller waiting for them, first spin for kSpinMicros on an atomic before they
// sleep: back-to-back calls (the layers of a network, a benchmark loop) never touch the futex,
// and an idle process stops burning the cores shortly after its last call.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ZEROP_PAUSE() _mm_pause()
#else
#define ZEROP_PAUSE() ((void)0)
#endif

#include "internal.h"

namespace zerop {

int resolve_threads(int threads) {
  if (threads > 0) return threads;
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

namespace detail {
namespace {

constexpr int64_t kSpinMicros = 100;
constexpr int kHelperBits = 32;  // state_ = generation << kHelperBits | helpers

// Spins until done() or kSpinMicros have passed; true if done() became true.
template <typename Done>
bool spin_until(Done done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
  for (int i = 1;; ++i) {
    if (done()) return true;
    ZEROP_PAUSE();
    if (i % 64 == 0 && std::chrono::steady_clock::now() > deadline) return done();
  }
}

class Pool {
 public:
  static Pool& instance() {
    static Pool pool;
    return pool;
  }

  void run(int64_t n_tasks, int threads, const std::function<void(int64_t)>& fn) {
    std::lock_guard<std::mutex> call_lock(call_mutex_);  // one parallel region at a time
    const int helpers = static_cast<int>(std::min<int64_t>(threads, n_tasks)) - 1;
    grow(helpers);
    fn_ = &fn;
    n_tasks_ = n_tasks;
    next_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    busy_.store(helpers, std::memory_order_relaxed);
    {
      // The generation and the helper count change in one atomic store (release: the fields
      // above are visible to whoever sees it), so that a helper never pairs one region's
      // generation with another's count. Under the mutex: a helper about to sleep rechecks it.
      std::lock_guard<std::mutex> lock(mutex_);
      const uint64_t generation = (state_.load(std::memory_order_relaxed) >> kHelperBits) + 1;
      state_.store((generation << kHelperBits) | static_cast<uint32_t>(helpers),
                   std::memory_order_release);
    }
    wake_.notify_all();
    work();
    if (!spin_until([this] { return busy_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [this] { return busy_.load(std::memory_order_acquire) == 0; });
    }
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_.store(true);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

 private:
  void grow(int helpers) {
    while (static_cast<int>(workers_.size()) < helpers) {
      const int id = static_cast<int>(workers_.size());
      const uint64_t now = state_.load(std::memory_order_acquire);
      workers_.emplace_back([this, id, now] { loop(id, now); });
    }
  }

  void work() {
    for (int64_t t = next_.fetch_add(1); t < n_tasks_; t = next_.fetch_add(1)) {
      try {
        (*fn_)(t);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
    }
  }

  void loop(int id, uint64_t seen) {
    for (;;) {
      auto changed = [&] {
        return stop_.load(std::memory_order_acquire) ||
               state_.load(std::memory_order_acquire) != seen;
      };
      if (!spin_until(changed)) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, changed);
      }
      if (stop_.load(std::memory_order_acquire)) return;
      seen = state_.load(std::memory_order_acquire);
      const auto helpers = static_cast<uint32_t>(seen);  // the low kHelperBits bits
      if (static_cast<uint32_t>(id) >= helpers) continue;  // not needed in this region
      work();
      if (busy_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);  // the caller may be between check and wait
        done_.notify_all();
      }
    }
  }

  std::mutex call_mutex_, mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_{0};
  std::atomic<int> busy_{0};
  // generation << kHelperBits | helpers of the current region; written by the caller only,
  // under mutex_
  std::atomic<uint64_t> state_{0};
  std::atomic<bool> stop_{false};
  std::exception_ptr error_;
};

}  // namespace

void parallel_for(int64_t n_tasks, int threads, const std::function<void(int64_t)>& fn) {
  if (n_tasks <= 0) return;
  if (threads <= 1 || n_tasks == 1) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t);
    return;
  }
  Pool::instance().run(n_tasks, threads, fn);
}

}  // namespace detail
}  // namespace zerop
