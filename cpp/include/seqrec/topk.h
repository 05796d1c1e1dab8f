// topk.h: scoring queries against the whole item table, fused with what is done with the scores.
// Holds: score_rank_counts, the evaluation kernel: for each query row, the number of items whose
// score is > and >= the target item's score (DESIGN.md §3.4: ranks are counted, never sorted).
// Scores are y_j = h·W_y[j] + b_y[j], computed in blocks of queries against the full table in a
// thread-local buffer that is reused, so memory stays bounded and the table streams through cache
// once per query block. The target's score is read from the same product that scores every other
// item, so an item never compares unequal with itself through rounding.
// Parallel: over query blocks (each thread owns its buffer); deterministic for any thread count.
// Not here: the serving top-k (fused selection), which comes with the Recommender.
#pragma once

#include <algorithm>
#include <vector>

#include "parallel.h"
#include "types.h"

namespace seqrec {

// H (n, D) queries; W (N, D) item table; b (N) item bias; target (n) int32 in [0, N)
// gt, ge (n) out: #items scoring > / >= the target
template <class T>
void score_rank_counts(Index n, Index N, Index D, const T* H, const T* W, const T* b,
                       const std::int32_t* target, std::int64_t* gt, std::int64_t* ge,
                       int num_threads) {
  // Query block: enough rows to amortise streaming W, a buffer of at most ~4M scores.
  const Index qb = std::max<Index>(1, std::min<Index>(64, (Index(1) << 22) / std::max<Index>(N, 1)));
  const Index n_blocks = (n + qb - 1) / qb;
  CMapR<T> Wm(W, N, D);
  CVecMap<T> bias(b, N);
  parallel_for(n_blocks, num_threads, [&](Index k0, Index k1) {
    MatR<T> S(qb, N);
    for (Index k = k0; k < k1; ++k) {
      const Index r0 = k * qb, m = std::min(qb, n - r0);
      auto Sm = S.topRows(m);
      Sm.noalias() = CMapR<T>(H + r0 * D, m, D) * Wm.transpose();
      Sm.rowwise() += bias;
      for (Index i = 0; i < m; ++i) {
        const T* s = S.data() + i * N;
        const T t = s[target[r0 + i]];
        std::int64_t g = 0, e = 0;
        for (Index j = 0; j < N; ++j) {
          g += s[j] > t;
          e += s[j] >= t;
        }
        gt[r0 + i] = g;
        ge[r0 + i] = e;
      }
    }
  });
}

}  // namespace seqrec
