// parallel.h: the one parallel loop every kernel uses.
// Holds: parallel_for over a contiguous index range split into one static chunk per thread.
// Not here: nested parallelism (Eigen runs single-threaded inside, EIGEN_DONT_PARALLELIZE), dynamic
// scheduling (static chunks keep results deterministic for a given thread count).
#pragma once

#include <algorithm>
#include <exception>

#include "types.h"

#ifdef SEQREC_HAVE_OPENMP
#include <omp.h>
#endif
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define SEQREC_HAVE_MXCSR 1
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

// Calls fn(begin, end) on `num_threads` contiguous chunks of [0, n). Chunk k is
// [k*n/p, (k+1)*n/p) with p = min(num_threads, ceil(n/min_chunk)), so the split depends only on n and
// the thread count. Exceptions are captured and rethrown on the calling thread.
template <class Fn>
void parallel_for(Index n, int num_threads, Fn&& fn, Index min_chunk = 1) {
  if (n <= 0) return;
  Index p = std::max<Index>(1, std::min<Index>(num_threads, (n + min_chunk - 1) / min_chunk));
#ifdef SEQREC_HAVE_OPENMP
  if (p > 1) {
    std::exception_ptr error = nullptr;
#pragma omp parallel num_threads(static_cast<int>(p))
    {
      const Index k = omp_get_thread_num();
      const Index nt = omp_get_num_threads();
      const Index begin = k * n / nt, end = (k + 1) * n / nt;
      FlushDenormals ftz;
      try {
        if (end > begin) fn(begin, end);
      } catch (...) {
#pragma omp critical(seqrec_parallel_error)
        if (!error) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
#endif
  (void)p;
  fn(Index(0), n);
}

}  // namespace seqrec
