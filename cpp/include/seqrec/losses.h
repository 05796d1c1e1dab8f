// losses.h: the ranking losses of GRU4Rec on a score matrix, row by row, with their gradients.
// Holds: cross-entropy, BPR-max (optionally after ELU) and TOP1-max (DESIGN.md §3.3) for one row of
// C scores whose positive sits in column p, and the logQ correction. Each function writes the row's
// gradient and returns the row's loss, both *before* division by the batch size.
// Not here: the score product or its backward (train.h), any parallel loop (the caller splits rows).
#pragma once

#include <algorithm>
#include <cmath>

#include <Eigen/Core>

#include "activations.h"
#include "types.h"

namespace seqrec {

enum class Loss { CrossEntropy = 0, BprMax = 1, Top1Max = 2 };

// ε inside the logs, as in the official GRU4Rec; the gradients below are exact for it.
template <class T>
constexpr T loss_eps() { return T(1e-24); }

template <class T>
inline T sigm(T x) { return T(0.5) * (std::tanh(T(0.5) * x) + T(1)); }

// Reductions over a row in packets: Σ_j term(j) for j in [j0, j1), with two packet accumulators
// and a scalar tail. A plain `s += x[j]` loop cannot be vectorised without -ffast-math (it would
// reorder the sum) and runs at one add per FP-add latency; this fixes one order of its own, which
// depends only on j0 and j1 (never on the address), so results stay deterministic.
//   fp(j): the packet of terms j .. j+PS-1; fs(j): the scalar term j
template <class T, class FP, class FS>
inline T row_reduce_sum(Index j0, Index j1, FP&& fp, FS&& fs) {
  using P = typename Eigen::internal::packet_traits<T>::type;
  constexpr Index PS = Eigen::internal::unpacket_traits<P>::size;
  P a0 = Eigen::internal::pset1<P>(T(0)), a1 = a0;
  Index j = j0;
  for (; j + 2 * PS <= j1; j += 2 * PS) {
    a0 = Eigen::internal::padd(a0, fp(j));
    a1 = Eigen::internal::padd(a1, fp(j + PS));
  }
  for (; j + PS <= j1; j += PS) a0 = Eigen::internal::padd(a0, fp(j));
  T s = Eigen::internal::predux(Eigen::internal::padd(a0, a1));
  for (; j < j1; ++j) s += fs(j);
  return s;
}

// The same over every j except p.
template <class T, class FP, class FS>
inline T row_reduce_sum_except(Index C, Index p, FP&& fp, FS&& fs) {
  return row_reduce_sum<T>(0, p, fp, fs) + row_reduce_sum<T>(p + 1, C, fp, fs);
}

// max_j x[j] for j in [j0, j1) (−inf for an empty range), in packets.
template <class T>
inline T row_max(const T* x, Index j0, Index j1) {
  using P = typename Eigen::internal::packet_traits<T>::type;
  constexpr Index PS = Eigen::internal::unpacket_traits<P>::size;
  T m = -INFINITY;
  Index j = j0;
  if (j + PS <= j1) {
    P a = Eigen::internal::ploadu<P>(x + j);
    for (j += PS; j + PS <= j1; j += PS) a = Eigen::internal::pmax(a, Eigen::internal::ploadu<P>(x + j));
    m = Eigen::internal::predux_max(a);
  }
  for (; j < j1; ++j) m = std::max(m, x[j]);
  return m;
}

// dst[j] = exp(src[j] − m) for j < n (through activate's fixed packet path); returns Σ dst.
template <class T>
inline T exp_shifted_sum(const T* src, T m, T* dst, Index n) {
  for (Index j = 0; j < n; ++j) dst[j] = src[j] - m;
  activate(Act::Exp, dst, n);
  using P = typename Eigen::internal::packet_traits<T>::type;
  return row_reduce_sum<T>(
      0, n, [&](Index j) { return Eigen::internal::ploadu<P>(dst + j); }, [&](Index j) { return dst[j]; });
}

// Cross-entropy: loss = −log(softmax(r)_p + ε).
//   r (C) scores (after logQ), g (C) out: d loss / d r
// Three passes over the row: max, exp + sum, one scale.
template <class T>
T xe_row(Index C, Index p, const T* r, T* g) {
  const T m = row_max(r, 0, C);
  const T inv = T(1) / exp_shifted_sum(r, m, g, C);
  const T sp = g[p] * inv;                   // softmax_p
  const T k = sp / (sp + loss_eps<T>());     // d(−log(s_p+ε))/dr_j = k·(s_j − [j=p])
  const T c = inv * k;
  for (Index j = 0; j < C; ++j) g[j] *= c;
  g[p] -= k;
  return -std::log(sp + loss_eps<T>());
}

// Softmax over the negatives of a row (all columns but p): s (C), s[p] = 0.
template <class T>
void softmax_neg(Index C, Index p, const T* o, T* s) {
  const T m = std::max(row_max(o, 0, p), row_max(o, p + 1, C));
  for (Index j = 0; j < C; ++j) s[j] = o[j] - m;
  s[p] = T(0);  // keeps exp finite whatever o[p] is; zeroed below
  activate(Act::Exp, s, C);
  s[p] = T(0);
  using P = typename Eigen::internal::packet_traits<T>::type;
  const T sum = row_reduce_sum<T>(
      0, C, [&](Index j) { return Eigen::internal::ploadu<P>(s + j); }, [&](Index j) { return s[j]; });
  const T inv = T(1) / sum;
  for (Index j = 0; j < C; ++j) s[j] *= inv;
}

// BPR-max: o = elu(r, α) when α > 0, else r; s = softmax of o over the negatives;
// loss = −log(Σ_j s_j σ(o_p − o_j) + ε) + bpreg·Σ_j s_j o_j².
//   r (C) scores, g (C) out: gradient (first used as scratch for σ(o_p − o_j)), s (C) and o (C) scratch
template <class T>
T bpr_max_row(Index C, Index p, const T* r, T elu_param, T bpreg, T* g, T* s, T* o) {
  if (elu_param > 0) {
    for (Index j = 0; j < C; ++j) o[j] = std::min(r[j], T(0));
    activate(Act::Exp, o, C);
    for (Index j = 0; j < C; ++j) o[j] = r[j] > 0 ? r[j] : elu_param * (o[j] - T(1));
  } else {
    std::copy(r, r + C, o);
  }
  softmax_neg(C, p, o, s);
  const T op = o[p];
  T* sg = g;
  for (Index j = 0; j < C; ++j) sg[j] = op - o[j];
  activate(Act::Logistic, sg, C);
  using P = typename Eigen::internal::packet_traits<T>::type;
  using Eigen::internal::pmul;
  using Eigen::internal::ploadu;
  const P one = Eigen::internal::pset1<P>(T(1));
  const T A = row_reduce_sum_except<T>(
      C, p, [&](Index j) { return pmul(ploadu<P>(s + j), ploadu<P>(sg + j)); },
      [&](Index j) { return s[j] * sg[j]; });
  const T Q = row_reduce_sum_except<T>(
      C, p, [&](Index j) { const P oj = ploadu<P>(o + j); return pmul(pmul(ploadu<P>(s + j), oj), oj); },
      [&](Index j) { return s[j] * o[j] * o[j]; });
  const T dAp = row_reduce_sum_except<T>(
      C, p,
      [&](Index j) {
        const P sj = ploadu<P>(sg + j);
        return pmul(pmul(ploadu<P>(s + j), sj), Eigen::internal::psub(one, sj));
      },
      [&](Index j) { return s[j] * sg[j] * (T(1) - sg[j]); });
  const T kA = -T(1) / (A + loss_eps<T>());
  for (Index j = 0; j < C; ++j) {  // g[p] is set after the loop
    const T sj = sg[j];
    const T dA = s[j] * (sj - A - sj * (T(1) - sj));
    const T dQ = s[j] * (o[j] * o[j] - Q) + T(2) * s[j] * o[j];
    g[j] = kA * dA + bpreg * dQ;
  }
  g[p] = kA * dAp;
  if (elu_param > 0) {
    for (Index j = 0; j < C; ++j) if (r[j] <= 0) g[j] *= o[j] + elu_param;  // elu'(r) = elu(r) + α
  }
  return -std::log(A + loss_eps<T>()) + bpreg * Q;
}

// TOP1-max: s = softmax of r over the negatives; loss = Σ_j s_j (σ(r_j − r_p) + σ(r_j²)).
//   r (C) scores, g (C) out: gradient (first scratch), s (C) and o (C) scratch
template <class T>
T top1_max_row(Index C, Index p, const T* r, T* g, T* s, T* o) {
  softmax_neg(C, p, r, s);
  const T rp = r[p];
  T* a = g;  // σ(r_j − r_p), then overwritten by the gradient
  T* b = o;  // σ(r_j²)
  for (Index j = 0; j < C; ++j) { a[j] = r[j] - rp; b[j] = r[j] * r[j]; }
  activate(Act::Logistic, a, C);
  activate(Act::Logistic, b, C);
  using P = typename Eigen::internal::packet_traits<T>::type;
  using Eigen::internal::padd;
  using Eigen::internal::pmul;
  using Eigen::internal::ploadu;
  const P one = Eigen::internal::pset1<P>(T(1));
  const T V = row_reduce_sum_except<T>(
      C, p, [&](Index j) { return pmul(ploadu<P>(s + j), padd(ploadu<P>(a + j), ploadu<P>(b + j))); },
      [&](Index j) { return s[j] * (a[j] + b[j]); });
  const T dp = -row_reduce_sum_except<T>(
      C, p,
      [&](Index j) {
        const P aj = ploadu<P>(a + j);
        return pmul(pmul(ploadu<P>(s + j), aj), Eigen::internal::psub(one, aj));
      },
      [&](Index j) { return s[j] * a[j] * (T(1) - a[j]); });
  for (Index j = 0; j < C; ++j) {
    const T aj = a[j], bj = b[j];
    g[j] = s[j] * (aj + bj - V) + s[j] * (aj * (T(1) - aj) + bj * (T(1) - bj) * T(2) * r[j]);
  }
  g[p] = dp;
  return V;
}

}  // namespace seqrec
