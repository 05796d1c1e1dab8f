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

namespace seqrec {

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
