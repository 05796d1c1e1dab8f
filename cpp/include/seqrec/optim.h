// optim.h: the optimizer updates of DESIGN.md §3.3, dense and lazy (row-wise).
// Holds: GRU4Rec's Adagrad with momentum (acc += g²; step = g/sqrt(acc + ε); v = μv − lr·step;
// p += v; without momentum p −= lr·step) and Adam (bias-corrected, ε outside the sqrt). The row
// update touches only the given rows of a table: their gradients are already summed (duplicates
// merged), and untouched rows keep their parameters *and* their optimizer state (as the official
// IndexedAdagradM and torch's SparseAdam do).
// Parallel: over elements (dense) or rows (lazy); each element's update is independent, so results
// do not depend on the thread count.
// Not here: gradient computation, the merging of duplicate rows (train.h).
#pragma once

#include <cmath>

#include "parallel.h"
#include "types.h"

namespace seqrec {

enum class Optim { AdagradM = 0, Adam = 1 };

struct OptConfig {
  Optim kind = Optim::AdagradM;
  double lr = 0.05;
  double momentum = 0.0;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-6;
  long long step = 1;  // 1-based count of updates so far, including this one (Adam's bias correction)
};

// One element. s1 = Adagrad accumulator / Adam first moment; s2 = momentum / Adam second moment.
template <class T>
inline void update_one(const OptConfig& c, T g, T& p, T& s1, T* s2, T bc1, T bc2) {
  if (c.kind == Optim::AdagradM) {
    s1 += g * g;
    const T step = g / std::sqrt(s1 + T(c.eps));
    if (s2) {
      *s2 = T(c.momentum) * *s2 - T(c.lr) * step;
      p += *s2;
    } else {
      p -= T(c.lr) * step;
    }
  } else {
    s1 = T(c.beta1) * s1 + (T(1) - T(c.beta1)) * g;
    *s2 = T(c.beta2) * *s2 + (T(1) - T(c.beta2)) * g * g;
    p -= T(c.lr) * (s1 / bc1) / (std::sqrt(*s2 / bc2) + T(c.eps));
  }
}

template <class T>
inline void bias_corrections(const OptConfig& c, T& bc1, T& bc2) {
  bc1 = T(1) - T(std::pow(c.beta1, double(c.step)));
  bc2 = T(1) - T(std::pow(c.beta2, double(c.step)));
}

// p, s1 (n); s2 (n) or null (Adagrad without momentum); g (n)
template <class T>
void dense_update(const OptConfig& c, Index n, T* p, const T* g, T* s1, T* s2, int num_threads) {
  T bc1 = 1, bc2 = 1;
  bias_corrections(c, bc1, bc2);
  parallel_for(n, num_threads, [&](Index i0, Index i1) {
    for (Index i = i0; i < i1; ++i) update_one(c, g[i], p[i], s1[i], s2 ? s2 + i : nullptr, bc1, bc2);
  }, 4096);
}

// Lazy update of nr rows of a (rows, W) table.
//   rows (nr) int32 distinct row indices; G (nr, W) summed gradients; p, s1, s2 (rows, W)
template <class T>
void row_update(const OptConfig& c, Index W, const std::int32_t* rows, Index nr, const T* G, T* p,
                T* s1, T* s2, int num_threads) {
  T bc1 = 1, bc2 = 1;
  bias_corrections(c, bc1, bc2);
  parallel_for(nr, num_threads, [&](Index k0, Index k1) {
    for (Index k = k0; k < k1; ++k) {
      const Index o = Index(rows[k]) * W;
      const T* g = G + k * W;
      for (Index j = 0; j < W; ++j) {
        update_one(c, g[j], p[o + j], s1[o + j], s2 ? s2 + o + j : nullptr, bc1, bc2);
      }
    }
  }, 16);
}

}  // namespace seqrec
