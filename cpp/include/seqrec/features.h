// features.h: item features in the trainer — the effective item vector W_y[j] + F[j]·P.
// Holds: ItemFeatures (a read-only feature matrix F and the trained projection P), and the three
// operations the chunk trainer needs: add the feature part to gathered item rows, build the whole
// effective table (full softmax), and the gradient of P from the summed gradients of the rows of
// W_y touched in a window (dP = F[rows]ᵀ·G, DESIGN.md §8 "Item features").
// Not here: the optimizer update of P (optim.h apply_updates, called by train.h), the encoding of
// raw feature columns (Python), serving (the table W_y + F·P is folded once in Python).
// Parallel: over gathered rows (add_feature_rows, feature_table) and over the F_dim rows of dP
// (feature_grad), static chunks, Eigen single-threaded inside.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "types.h"

namespace seqrec {

// F (N, Fd) row-major, read-only; P (Fd, H) row-major, trained (its optimizer state lives in the
// trainer's Param). F == nullptr means the model has no features.
template <class T>
struct ItemFeatures {
  const T* F = nullptr;
  T* P = nullptr;
  Index Fd = 0, H = 0;
  bool on() const { return F != nullptr; }
};

// dst[i] += F[rows[i]]·P for the n rows (rows[i] < 0: left unchanged).
//   rows (n) int32, dst (n, H) row-major, scratch: grows to n·Fd
template <class T>
void add_feature_rows(const ItemFeatures<T>& f, const std::int32_t* rows, Index n, T* dst,
                      std::vector<T>& scratch, int nt) {
  const Index Fd = f.Fd, H = f.H;
  if (static_cast<Index>(scratch.size()) < n * Fd) scratch.resize(static_cast<size_t>(n * Fd));
  CMapR<T> PM(f.P, Fd, H);
  parallel_for(n, nt, [&](Index i0, Index i1) {
    for (Index i = i0; i < i1; ++i) {
      T* g = scratch.data() + i * Fd;
      if (rows[i] < 0) std::fill(g, g + Fd, T(0));
      else std::copy(f.F + Index(rows[i]) * Fd, f.F + (Index(rows[i]) + 1) * Fd, g);
    }
    MapR<T>(dst + i0 * H, i1 - i0, H).noalias() +=
        CMapR<T>(scratch.data() + i0 * Fd, i1 - i0, Fd) * PM;
  }, 32);
}

// dst[i] = W_y[rows[i]] + F[rows[i]]·P (rows[i] < 0: zeros).  W_y (N, H), rows (n), dst (n, H)
template <class T>
void gather_item_rows(const ItemFeatures<T>& f, const T* W_y, const std::int32_t* rows, Index n,
                      T* dst, std::vector<T>& scratch, int nt) {
  const Index H = f.H;
  for (Index i = 0; i < n; ++i) {
    T* d = dst + i * H;
    if (rows[i] < 0) std::fill(d, d + H, T(0));
    else std::copy(W_y + Index(rows[i]) * H, W_y + (Index(rows[i]) + 1) * H, d);
  }
  add_feature_rows(f, rows, n, dst, scratch, nt);
}

// out = W_y + F·P, the whole effective table.  W_y (N, H), out (N, H)
template <class T>
void feature_table(const ItemFeatures<T>& f, Index N, const T* W_y, T* out, int nt) {
  const Index Fd = f.Fd, H = f.H;
  CMapR<T> PM(f.P, Fd, H);
  parallel_for(N, nt, [&](Index j0, Index j1) {
    MapR<T> O(out + j0 * H, j1 - j0, H);
    O = CMapR<T>(W_y + j0 * H, j1 - j0, H);
    O.noalias() += CMapR<T>(f.F + j0 * Fd, j1 - j0, Fd) * PM;
  }, 64);
}

// dP = Σ_r F[rows[r]]ᵀ·G[r]: the gradient of P from the gradients of the effective rows.
//   rows (R) int32 distinct, G (R, H) row-major, dP (Fd, H) overwritten, scratch: grows to R·Fd.
// With rows == nullptr, G is the dense (N, H) gradient of the whole table and R = N.
template <class T>
void feature_grad(const ItemFeatures<T>& f, const std::int32_t* rows, Index R, const T* G, T* dP,
                  std::vector<T>& scratch, int nt) {
  const Index Fd = f.Fd, H = f.H;
  const T* Fr = f.F;
  if (rows) {
    if (static_cast<Index>(scratch.size()) < R * Fd) scratch.resize(static_cast<size_t>(R * Fd));
    parallel_for(R, nt, [&](Index r0, Index r1) {
      for (Index r = r0; r < r1; ++r) {
        std::copy(f.F + Index(rows[r]) * Fd, f.F + (Index(rows[r]) + 1) * Fd, scratch.data() + r * Fd);
      }
    }, 64);
    Fr = scratch.data();
  }
  if (R == 0) { std::fill(dP, dP + Fd * H, T(0)); return; }
  CMapR<T> FM(Fr, R, Fd);
  CMapR<T> GM(G, R, H);
  // split over the Fd rows of dP: each thread owns its rows, the sum over r runs in order
  parallel_for(Fd, nt, [&](Index c0, Index c1) {
    MapR<T>(dP + c0 * H, c1 - c0, H).noalias() = FM.middleCols(c0, c1 - c0).transpose() * GM;
  }, 8);
}

}  // namespace seqrec
