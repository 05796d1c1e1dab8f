// parallel.h: the one parallel loop every kernel uses, and the thread pool behind it.
// Holds: parallel_for over a contiguous index range split into fixed chunks; the work-claiming
// thread pool that runs them (default), or an OpenMP parallel region (SEQREC_PARALLEL=openmp);
// FlushDenormals.
// Not here: nested parallelism (a parallel_for inside a chunk runs inline; Eigen runs single-threaded
// inside, EIGEN_DONT_PARALLELIZE).
//
// Why a pool of our own (issue 14; measured in docs/results.md): a kernel call makes many short
// parallel loops (~15 per training step). With an OpenMP team every loop ends in a barrier that
// waits for *every* thread, so a thread whose core is taken by another process stalls each loop for
// a scheduler time slice: beside one busy process, 2 threads trained ~20x slower than 1. Here the
// chunks of a loop are *claimed* by whichever threads are running (the calling thread first); the
// caller never waits for a thread that has not started a chunk, only for chunks in progress, and it
// sleeps (futex) rather than spins while it waits, so its core becomes free for the thread it waits
// for. Idle workers spin for a short while (SEQREC_SPIN_US, default 20 µs: the gaps between the loops
// of one call) and then sleep.
// Back-off: when another process holds a core, a helper either stalls loops (it claimed a chunk and
// lost its core) or is kept by the scheduler on the caller's own CPU (the two take turns on one core);
// the pool sees either and lets the caller run the loops alone for SEQREC_SOLO_MS (default 100 ms,
// doubling up to 4x while it persists), then tries again. Measured (bench_contention.py, RSC15
// training beside a busy process): 2 threads ÷ 1 thread 0.75 before, 0.93–1.05 with it in 0.15 s
// runs, 0.99–1.00 over a whole epoch (session 6).
// Determinism: the chunk boundaries depend only on n, min_chunk and num_threads, never on which
// thread runs a chunk or in what order, so results are bit-identical run to run for a given
// thread count whatever the machine's load.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "types.h"

#ifdef SEQREC_HAVE_OPENMP
#include <omp.h>
#endif
#if defined(__SSE__) || defined(__x86_64__)
#include <immintrin.h>
#include <xmmintrin.h>
#define SEQREC_HAVE_MXCSR 1
#endif
#if defined(__linux__)
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#define SEQREC_HAVE_FUTEX 1
#endif

namespace seqrec {

// Flushes denormal floats to zero on this thread while in scope (x86 FTZ + DAZ), restoring the
// caller's mode after. Why: late in training most softmax probabilities and their gradients
// underflow into the denormal range, where every multiply costs ~100x; that made training 3x
// slower. Values below ~1e-38 (float) / 1e-308 (double) change nothing that is measured.
class FlushDenormals {
 public:
#ifdef SEQREC_HAVE_MXCSR
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040u); }
  ~FlushDenormals() { _mm_setcsr(saved_); }
 private:
  unsigned int saved_;
#else
  FlushDenormals() {}
#endif
 public:
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;
};

inline bool have_openmp() {
#ifdef SEQREC_HAVE_OPENMP
  return true;
#else
  return false;
#endif
}

namespace detail {

inline void cpu_relax() {
#ifdef SEQREC_HAVE_MXCSR
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Sleep while *addr == expected (spurious returns allowed); wake up to n sleepers on addr.
inline void futex_wait(std::atomic<std::uint32_t>* addr, std::uint32_t expected) {
#ifdef SEQREC_HAVE_FUTEX
  static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t), "futex word");
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(addr), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
#else
  if (addr->load() == expected) std::this_thread::yield();
#endif
}
inline void futex_wake(std::atomic<std::uint32_t>* addr, int n) {
#ifdef SEQREC_HAVE_FUTEX
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(addr), FUTEX_WAKE_PRIVATE, n, nullptr,
          nullptr, 0);
#else
  (void)addr;
  (void)n;
#endif
}

inline long env_long(const char* name, long fallback) {
  const char* s = std::getenv(name);
  if (!s || !*s) return fallback;
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  return (end && *end == '\0' && v >= 0) ? v : fallback;
}

// Spins for up to `us` microseconds until pred() holds; returns whether it did.
template <class Pred>
bool spin_until(long us, Pred&& pred) {
  if (pred()) return true;
  if (us <= 0) return false;
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  for (;;) {
    for (int i = 0; i < 32; ++i) {
      cpu_relax();
      if (pred()) return true;
    }
    if (std::chrono::steady_clock::now() >= until) return pred();
  }
}

// A chunk-claiming pool. One job at a time (a second caller meanwhile runs its loop inline); the
// job word packs (generation:32 | next chunk:16 | chunk count:16), so claiming chunk `next` of the
// current generation is one compare-and-swap, and a stale claim cannot succeed.
class Pool {
 public:
  static constexpr std::uint32_t kMaxChunks = 0xFFFF;

  static Pool& instance() {
    static Pool* pool = new Pool();  // never destroyed: workers may still sleep at exit
    return *pool;
  }

  long spin_us() const { return spin_us_.load(std::memory_order_relaxed); }
  void set_spin_us(long us) { spin_us_.store(std::max(0L, us), std::memory_order_relaxed); }
  int workers() const { return static_cast<int>(n_workers_.load(std::memory_order_relaxed)); }

  // Runs call(ctx, k) for k in [0, chunks), up to `threads` threads at once (the caller included).
  // Returns false (and runs nothing) when the pool is busy with another caller's job.
  bool run(std::uint32_t chunks, int threads, void (*call)(void*, Index), void* ctx) {
    std::unique_lock<std::mutex> lock(mu_, std::try_to_lock);
    if (!lock.owns_lock()) return false;
    if (forked_.exchange(false)) reset_after_fork();
    const long long t0 = now_ns();
    if (t0 < solo_until_ns_) {  // backing off: this caller runs the chunks alone, in order
      lock.unlock();
      return false;
    }
    ensure_workers(threads - 1);
    std::exception_ptr error = nullptr;
    call_ = call;
    ctx_ = ctx;
    error_ = &error;
    done_.store(0, std::memory_order_relaxed);
    helper_same_cpu_.store(false, std::memory_order_relaxed);
    helper_other_cpu_.store(false, std::memory_order_relaxed);
    caller_cpu_.store(current_cpu(), std::memory_order_relaxed);
    const std::uint64_t gen = (job_.load(std::memory_order_relaxed) >> 32) + 1;
    job_.store((gen << 32) | chunks, std::memory_order_release);
    // wake sleepers (publishing the job before reading `sleepers_`: see worker_loop)
    seq_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake(&seq_, threads - 1);
    claim_and_run(false);
    const long long t1 = now_ns();
    // wait for chunks other threads claimed: spin briefly, then sleep so this core is free for them
    auto finished = [&] { return done_.load(std::memory_order_acquire) >= chunks; };
    if (!spin_until(spin_us(), finished)) {
      for (;;) {
        const std::uint32_t d = done_.load(std::memory_order_seq_cst);
        if (d >= chunks) break;
        waiting_.store(1, std::memory_order_seq_cst);
        if (done_.load(std::memory_order_seq_cst) == d) futex_wait(&done_, d);
        waiting_.store(0, std::memory_order_seq_cst);
      }
    }
    error_ = nullptr;
    // Back-off (issue 14): on a machine where another process holds a core, helpers make things
    // worse, in two ways the caller can see. (1) Stalled: a helper claimed a chunk and then lost
    // its core, and the caller waits a scheduler slice (~1–3 ms) with nothing to do; the sign is a
    // wait much longer than the caller's own share of the job (a late wake-up costs ~0.1 ms; an
    // uneven split is bounded by the caller's own work). (2) Shared CPU: the scheduler keeps the
    // helper on the caller's CPU (the other one is busy), and the two take turns on one core,
    // paying context switches for no parallelism; the sign is kSharedJobs jobs in which helpers
    // ran on the caller's CPU and never on another. Either way the caller then runs the next jobs
    // alone for solo_ms (the same chunks in the same order: results unchanged) while the helper
    // sleeps, and tries the helpers again after it.
    const long long waited = now_ns() - t1;
    const bool stalled = waited > std::max(kSoloMinWaitNs, 2 * (t1 - t0));
    // jobs whose helpers ran on the caller's CPU, since a helper last ran on another one
    if (helper_other_cpu_.load(std::memory_order_relaxed)) shared_streak_ = 0;
    else if (helper_same_cpu_.load(std::memory_order_relaxed)) ++shared_streak_;
    const long long solo_ns = solo_ns_.load(std::memory_order_relaxed);
    if (solo_ns > 0 && (stalled || shared_streak_ >= kSharedJobs)) {
      (stalled ? stalled_backoffs_ : shared_backoffs_).fetch_add(1, std::memory_order_relaxed);
      shared_streak_ = 0;
      // Stalled again soon after the last back-off ended: the other process is still there, so
      // back off for twice as long (up to 4x); otherwise start again from solo_ms.
      const long long now = now_ns();
      solo_cur_ns_ = (now - solo_until_ns_ < solo_cur_ns_) ? std::min(2 * solo_cur_ns_, 4 * solo_ns)
                                                           : solo_ns;
      solo_until_ns_ = now + solo_cur_ns_;
    }
    lock.unlock();
    if (error) std::rethrow_exception(error);
    return true;
  }

  // How long (ms) the caller first runs alone after a back-off (SEQREC_SOLO_MS, default 100; 0:
  // never back off), and how many back-offs of each cause this process has had.
  long solo_ms() const {
    return static_cast<long>(solo_ns_.load(std::memory_order_relaxed) / 1000000);
  }
  void set_solo_ms(long ms) {
    std::lock_guard<std::mutex> g(mu_);
    solo_ns_.store(std::max(0L, ms) * 1000000LL, std::memory_order_relaxed);
    solo_cur_ns_ = solo_ns_.load(std::memory_order_relaxed);
    solo_until_ns_ = 0;
  }
  long long stalled_backoffs() const { return stalled_backoffs_.load(std::memory_order_relaxed); }
  long long shared_backoffs() const { return shared_backoffs_.load(std::memory_order_relaxed); }

 private:
  static constexpr long long kSoloMinWaitNs = 500000;  // 0.5 ms
  // jobs with a helper on the caller's CPU, and none elsewhere, before the pool backs off
  static constexpr int kSharedJobs = 32;

  static int current_cpu() {
#if defined(__linux__)
    return sched_getcpu();
#else
    return -1;
#endif
  }

  static long long now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  Pool() {
    spin_us_.store(env_long("SEQREC_SPIN_US", 20));
    solo_ns_.store(std::min(env_long("SEQREC_SOLO_MS", 100), 86400000L) * 1000000LL);  // ≤ a day
    solo_cur_ns_ = solo_ns_.load();
#ifdef SEQREC_HAVE_FUTEX
    pthread_atfork(nullptr, nullptr, [] { Pool::instance().forked_.store(true); });
#endif
  }

  // The calling thread or a worker: claim chunks of the current job until none is left.
  // Returns whether it ran any.
  bool claim_and_run(bool helper) {
    std::uint64_t w = job_.load(std::memory_order_acquire);
    bool ran = false;
    for (;;) {
      const std::uint32_t next = static_cast<std::uint32_t>(w >> 16) & 0xFFFFu;
      const std::uint32_t count = static_cast<std::uint32_t>(w) & 0xFFFFu;
      if (next >= count) return ran;
      if (!job_.compare_exchange_weak(w, w + (std::uint64_t(1) << 16), std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
        continue;
      }
      // This chunk of generation w>>32 is ours; the job (call_, ctx_) stays valid until it is done.
      ran = true;
      // A helper on the caller's CPU time-shares that core with it (the scheduler put both there,
      // e.g. because another process holds the other core): noted for the back-off in run().
      if (helper) {
        const bool same = current_cpu() == caller_cpu_.load(std::memory_order_relaxed);
        std::atomic<bool>& flag = same ? helper_same_cpu_ : helper_other_cpu_;
        if (!flag.load(std::memory_order_relaxed)) flag.store(true, std::memory_order_relaxed);
      }
      try {
        call_(ctx_, Index(next));
      } catch (...) {
        std::lock_guard<std::mutex> g(error_mu_);
        if (!*error_) *error_ = std::current_exception();
      }
      const std::uint32_t d = done_.fetch_add(1, std::memory_order_seq_cst) + 1;
      if (d >= count && waiting_.load(std::memory_order_seq_cst)) futex_wake(&done_, 1);
      w = job_.load(std::memory_order_acquire);
    }
  }

  void worker_loop() {
    FlushDenormals ftz;  // a worker runs only kernel chunks
    in_pool() = true;
    std::uint32_t seen = seq_.load(std::memory_order_acquire);
    for (;;) {
      claim_and_run(true);
      auto news = [&] { return seq_.load(std::memory_order_acquire) != seen; };
      if (!spin_until(spin_us(), news)) {
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        if (seq_.load(std::memory_order_seq_cst) == seen) futex_wait(&seq_, seen);
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
      }
      seen = seq_.load(std::memory_order_acquire);
    }
  }

  void ensure_workers(int n) {
    while (static_cast<int>(n_workers_.load(std::memory_order_relaxed)) < n) {
      try {
        std::thread([this] { worker_loop(); }).detach();
      } catch (...) {
        return;  // no more threads: the callers run the chunks themselves
      }
      n_workers_.fetch_add(1, std::memory_order_relaxed);
    }
  }

  void reset_after_fork() {
    // The child has only the forking thread: the workers are gone (their sleeping count too).
    n_workers_.store(0);
    sleepers_.store(0);
    waiting_.store(0);
  }

 public:
  static bool& in_pool() {
    static thread_local bool flag = false;
    return flag;
  }

 private:
  std::mutex mu_, error_mu_;
  std::atomic<std::uint64_t> job_{0};
  std::atomic<std::uint32_t> seq_{0}, done_{0}, sleepers_{0}, waiting_{0}, n_workers_{0};
  std::atomic<long> spin_us_{20};
  std::atomic<long long> solo_ns_{0};                 // read without the lock by solo_ms()
  long long solo_cur_ns_ = 0, solo_until_ns_ = 0;  // guarded by mu_
  int shared_streak_ = 0;                       // guarded by mu_
  std::atomic<int> caller_cpu_{-1};
  std::atomic<bool> helper_same_cpu_{false}, helper_other_cpu_{false};
  std::atomic<long long> stalled_backoffs_{0}, shared_backoffs_{0};
  std::atomic<bool> forked_{false};
  void (*call_)(void*, Index) = nullptr;
  void* ctx_ = nullptr;
  std::exception_ptr* error_ = nullptr;
};

enum class Backend { Pool = 0, OpenMP = 1 };

inline std::atomic<int>& backend_flag() {
  static std::atomic<int> flag([] {
    const char* s = std::getenv("SEQREC_PARALLEL");
    if (s && std::strcmp(s, "openmp") == 0 && have_openmp()) return int(Backend::OpenMP);
    return int(Backend::Pool);
  }());
  return flag;
}

}  // namespace detail

// "pool" (default) or "openmp" (SEQREC_PARALLEL=openmp at import, or set_parallel_backend).
inline std::string parallel_backend() {
  return detail::backend_flag().load() == int(detail::Backend::OpenMP) ? "openmp" : "pool";
}
// Returns false when the backend is unknown or not built (openmp without OpenMP).
inline bool set_parallel_backend(const std::string& name) {
  if (name == "pool") { detail::backend_flag().store(int(detail::Backend::Pool)); return true; }
  if (name == "openmp" && have_openmp()) {
    detail::backend_flag().store(int(detail::Backend::OpenMP));
    return true;
  }
  return false;
}

// Calls fn(begin, end) on p contiguous chunks of [0, n), p = min(num_threads, ceil(n/min_chunk)):
// chunk k is [k*n/p, (k+1)*n/p), so the split depends only on n, min_chunk and the thread count.
// Exceptions are captured and rethrown on the calling thread.
template <class Fn>
void parallel_for(Index n, int num_threads, Fn&& fn, Index min_chunk = 1) {
  if (n <= 0) return;
  const Index p = std::max<Index>(
      1, std::min<Index>({Index(num_threads), (n + min_chunk - 1) / min_chunk,
                          Index(detail::Pool::kMaxChunks)}));
  if (p == 1) {
    fn(Index(0), n);
    return;
  }
  auto chunk = [&](Index k) {
    const Index begin = k * n / p, end = (k + 1) * n / p;
    if (end > begin) fn(begin, end);
  };
#ifdef SEQREC_HAVE_OPENMP
  if (detail::backend_flag().load(std::memory_order_relaxed) == int(detail::Backend::OpenMP)) {
    std::exception_ptr error = nullptr;
    std::atomic<Index> next{0};
#pragma omp parallel num_threads(static_cast<int>(p))
    {
      FlushDenormals ftz;
      try {
        // dynamic: chunks go to the threads that are running (same boundaries, any order)
        for (Index k = next.fetch_add(1); k < p; k = next.fetch_add(1)) chunk(k);
      } catch (...) {
#pragma omp critical(seqrec_parallel_error)
        if (!error) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
#endif
  bool& nested = detail::Pool::in_pool();
  if (!nested) {
    nested = true;
    struct Reset { bool& f; ~Reset() { f = false; } } reset{nested};
    FlushDenormals ftz;
    auto call = [](void* ctx, Index k) { (*static_cast<decltype(chunk)*>(ctx))(k); };
    if (detail::Pool::instance().run(static_cast<std::uint32_t>(p), static_cast<int>(p), call,
                                     &chunk)) {
      return;
    }
  }
  // nested inside a chunk, or the pool is serving another caller: the same chunks, in order, here
  FlushDenormals ftz;
  for (Index k = 0; k < p; ++k) chunk(k);
}

}  // namespace seqrec
