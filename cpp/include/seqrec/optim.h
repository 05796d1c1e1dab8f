// optim.h: the optimizer updates of DESIGN.md §3.3, dense and lazy (row-wise).
// Holds: GRU4Rec's Adagrad with momentum (acc += g²; step = g/sqrt(acc + ε); v = μv − lr·step;
// p += v; without momentum p −= lr·step) and Adam (bias-corrected, ε outside the sqrt). The row
// update touches only the given rows of a table: their gradients are already summed (duplicates
// merged), and untouched rows keep their parameters *and* their optimizer state (as the official
// IndexedAdagradM and torch's SparseAdam do).
// Parallel: over elements (dense) or rows (lazy), or all tensors of a step in one loop
// (apply_updates); each element's update is independent, so results do not depend on the thread
// count.
// Not here: gradient computation, the merging of duplicate rows (train.h).
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <vector>

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

template <class T>
inline void bias_corrections(const OptConfig& c, T& bc1, T& bc2) {
  bc1 = T(1) - T(std::pow(c.beta1, double(c.step)));
  bc2 = T(1) - T(std::pow(c.beta2, double(c.step)));
}

// Updates a contiguous span of n elements. s1 = Adagrad accumulator / Adam first moment;
// s2 = momentum / Adam second moment (null: Adagrad without momentum). Plain loops the compiler
// vectorises: only +, −, ×, ÷ and std::sqrt, all correctly rounded, so results do not depend on
// alignment or vector width. (Eigen's packet sqrt is an approximation under EIGEN_FAST_MATH.)
template <class T>
void update_span(const OptConfig& c, Index n, T* __restrict p, const T* __restrict g,
                 T* __restrict s1, T* __restrict s2, T bc1, T bc2) {
  const T lr = T(c.lr), eps = T(c.eps);
  if (c.kind == Optim::AdagradM) {
    if (s2) {
      const T mu = T(c.momentum);
      for (Index i = 0; i < n; ++i) {
        s1[i] += g[i] * g[i];
        s2[i] = mu * s2[i] - lr * (g[i] / std::sqrt(s1[i] + eps));
        p[i] += s2[i];
      }
    } else {
      for (Index i = 0; i < n; ++i) {
        s1[i] += g[i] * g[i];
        p[i] -= lr * (g[i] / std::sqrt(s1[i] + eps));
      }
    }
  } else {
    const T b1 = T(c.beta1), b2 = T(c.beta2);
    for (Index i = 0; i < n; ++i) {
      s1[i] = b1 * s1[i] + (T(1) - b1) * g[i];
      s2[i] = b2 * s2[i] + (T(1) - b2) * (g[i] * g[i]);
      p[i] -= lr * (s1[i] / bc1) / (std::sqrt(s2[i] / bc2) + eps);
    }
  }
}

namespace detail {
// Rows [k0, k1) of a lazy row update (see row_update).
// Row k's gradient: gp[k] when given, else G + k·W.
template <class T>
void row_update_range(const OptConfig& c, Index W, const std::int32_t* rows, Index k0, Index k1,
                      const T* G, T* p, T* s1, T* s2, T bc1, T bc2, const T* const* gp = nullptr) {
  if (k1 <= k0) return;
  if (W == 1) {
    // a bias column: gather, update as one span, scatter
    std::vector<T> pp(k1 - k0), a1(k1 - k0), a2(s2 ? k1 - k0 : 0), gg(gp ? k1 - k0 : 0);
    for (Index k = k0; k < k1; ++k) {
      pp[k - k0] = p[rows[k]];
      if (gp) gg[k - k0] = *gp[k];
      a1[k - k0] = s1[rows[k]];
      if (s2) a2[k - k0] = s2[rows[k]];
    }
    update_span(c, k1 - k0, pp.data(), gp ? gg.data() : G + k0, a1.data(), s2 ? a2.data() : nullptr,
                bc1, bc2);
    for (Index k = k0; k < k1; ++k) {
      p[rows[k]] = pp[k - k0];
      s1[rows[k]] = a1[k - k0];
      if (s2) s2[rows[k]] = a2[k - k0];
    }
    return;
  }
  for (Index k = k0; k < k1; ++k) {
    const Index o = Index(rows[k]) * W;
    update_span(c, W, p + o, gp ? gp[k] : G + k * W, s1 + o, s2 ? s2 + o : nullptr, bc1, bc2);
  }
}
}  // namespace detail

// Lazy update of nr rows of a (rows, W) table.
//   rows (nr) int32 distinct row indices; G (nr, W) summed gradients; p, s1, s2 (rows, W)
template <class T>
void row_update(const OptConfig& c, Index W, const std::int32_t* rows, Index nr, const T* G, T* p,
                T* s1, T* s2, int num_threads) {
  T bc1 = 1, bc2 = 1;
  bias_corrections(c, bc1, bc2);
  parallel_for(nr, num_threads, [&](Index k0, Index k1) {
    detail::row_update_range(c, W, rows, k0, k1, G, p, s1, s2, bc1, bc2);
  }, 16);
}

// One tensor of a batched update: a dense span (rows == null: n elements of p, g, s1, s2) or a
// lazy row update (rows != null: n rows of width W, G (n, W) summed gradients).
template <class T>
struct UpdateItem {
  T* p;
  const T* g;
  T* s1;
  T* s2;
  Index n;
  Index W = 1;
  const std::int32_t* rows = nullptr;
  const T* const* gp = nullptr;  // a row update's gradient rows by pointer (then g is unused)
};

// Every update of a training step in one parallel loop (instead of one loop per tensor: ~5 fewer
// loops per step, each a wait for the slowest thread). Part k of p takes the k-th p-th of every
// item (elements of a dense span, rows of a row update). Each element's update is independent of
// the others, so the results are those of update_span / row_update, for any thread count.
template <class T>
void apply_updates(const OptConfig& c, const std::vector<UpdateItem<T>>& items, int num_threads) {
  T bc1 = 1, bc2 = 1;
  bias_corrections(c, bc1, bc2);
  Index work = 0;
  for (const auto& it : items) work += it.n * it.W;
  const Index parts = std::max<Index>(1, std::min<Index>(num_threads, (work + 8191) / 8192));
  parallel_for(parts, num_threads, [&](Index k0, Index k1) {
    for (const auto& it : items) {
      const Index a = k0 * it.n / parts, b = k1 * it.n / parts;
      if (b <= a) continue;
      if (it.rows) {
        detail::row_update_range(c, it.W, it.rows, a, b, it.g, it.p, it.s1, it.s2, bc1, bc2, it.gp);
      } else {
        update_span(c, b - a, it.p + a, it.g + a, it.s1 + a, it.s2 ? it.s2 + a : nullptr, bc1, bc2);
      }
    }
  });
}

}  // namespace seqrec
