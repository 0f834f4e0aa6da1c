// A small persistent thread pool: parallel_for(n_tasks, threads, fn) with the caller taking part.
//
// Waking a thread that sleeps on a futex costs tens of microseconds on a VM, as much as a whole
// 4096 x 4096 int4 GEMV, and a region pays it twice (the helpers' wake-up and the caller's). So
// idle helpers, and a caller waiting for them, first spin for a while on an atomic before they
// sleep: back-to-back calls (the layers of a network, a benchmark loop) never touch the futex,
// and an idle process stops burning the cores shortly after its last call.
//
// On shared cores (more runnable threads than cores) a helper may not be running when a region
// starts, or may be preempted. The pool must then never wait for a helper that has not started:
// tasks are claimed one by one from a counter tagged with the region's generation, the caller
// claims them too, and it waits only for the tasks a helper has actually claimed and not finished.
// A helper that wakes up late finds the counter of an older generation (or all tasks claimed) and
// goes back to waiting. Spinning hands the core over (sched_yield) after a short pure spin, so
// that a waiting thread does not take the time slice that the thread it waits for needs.
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <limits>
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

constexpr int64_t kPureSpinMicros = 20;  // then sched_yield between checks
constexpr int64_t kSpinMicros = 100;     // then sleep on the futex
constexpr int kGenBits = 32;             // claim_ = generation << kGenBits | next task
constexpr int kHelperBits = 32;          // state_ = generation << kHelperBits | helpers
constexpr uint64_t kLow = (uint64_t{1} << 32) - 1;

// Spins until done() or kSpinMicros have passed; true if done() became true. After
// kPureSpinMicros each check is preceded by sched_yield(): on idle cores it returns at once, on
// busy ones it lets the thread we wait for (or another process) run.
template <typename Done>
bool spin_until(Done done) {
  const auto start = std::chrono::steady_clock::now();
  const auto yield_at = start + std::chrono::microseconds(kPureSpinMicros);
  const auto deadline = start + std::chrono::microseconds(kSpinMicros);
  bool yielding = false;
  for (int i = 1;; ++i) {
    if (done()) return true;
    if (yielding) {
      sched_yield();
    } else {
      ZEROP_PAUSE();
    }
    if (i % 64 == 0 || yielding) {
      const auto now = std::chrono::steady_clock::now();
      if (now > deadline) return done();
      yielding = now > yield_at;
    }
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
    const uint64_t generation = (state_.load(std::memory_order_relaxed) >> kHelperBits) + 1;
    const uint64_t gen_tag = generation & kLow;
    fn_ = &fn;
    error_ = nullptr;
    n_tasks_.store(n_tasks, std::memory_order_relaxed);
    finished_.store(0, std::memory_order_relaxed);
    // Release: a helper that claims a task of this generation sees fn_ and n_tasks_.
    claim_.store(gen_tag << kGenBits, std::memory_order_release);
    {
      // The generation and the helper count change in one atomic store, so that a helper never
      // pairs one region's generation with another's count. Under the mutex: a helper about to
      // sleep rechecks it.
      std::lock_guard<std::mutex> lock(mutex_);
      state_.store((generation << kHelperBits) | static_cast<uint32_t>(helpers),
                   std::memory_order_release);
    }
    wake_.notify_all();
    work(gen_tag);
    // Only tasks that a helper has claimed remain: wait for those, and for nothing else.
    auto all_done = [&] { return finished_.load(std::memory_order_acquire) == n_tasks; };
    if (!spin_until(all_done)) {
      std::unique_lock<std::mutex> lock(mutex_);
      waiting_ = true;
      done_.wait(lock, all_done);
      waiting_ = false;
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

  // Claims and runs tasks of generation gen_tag until none is left (or the region is over).
  void work(uint64_t gen_tag) {
    uint64_t c = claim_.load(std::memory_order_acquire);
    for (;;) {
      if ((c >> kGenBits) != gen_tag) return;  // a later region: not ours to run
      const int64_t n = n_tasks_.load(std::memory_order_relaxed);
      const auto t = static_cast<int64_t>(c & kLow);
      if (t >= n) return;
      // acquire: fn_ and n_tasks_ of this generation; the region cannot end before this task
      // is counted in finished_, so they stay valid while it runs.
      if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel,
                                        std::memory_order_acquire))
        continue;  // c now holds the current value
      try {
        (*fn_)(t);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
      if (finished_.fetch_add(1, std::memory_order_acq_rel) + 1 == n) {
        std::lock_guard<std::mutex> lock(mutex_);  // the caller may be between check and wait
        if (waiting_) done_.notify_all();
        return;
      }
      c = claim_.load(std::memory_order_acquire);
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
      work((seen >> kHelperBits) & kLow);
    }
  }

  std::mutex call_mutex_, mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  std::atomic<int64_t> n_tasks_{0};
  std::atomic<uint64_t> claim_{0};     // generation << kGenBits | next unclaimed task
  std::atomic<int64_t> finished_{0};   // tasks of the current region that have run
  bool waiting_ = false;               // the caller sleeps on done_; under mutex_
  // generation << kHelperBits | helpers of the current region; written by the caller only,
  // under mutex_
  std::atomic<uint64_t> state_{0};
  std::atomic<bool> stop_{false};
  std::exception_ptr error_;
};

}  // namespace

void parallel_for(int64_t n_tasks, int threads, const std::function<void(int64_t)>& fn) {
  if (n_tasks <= 0) return;
  if (threads <= 1 || n_tasks == 1 || n_tasks > static_cast<int64_t>(kLow)) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t);
    return;
  }
  Pool::instance().run(n_tasks, threads, fn);
}

}  // namespace detail
}  // namespace zerop
