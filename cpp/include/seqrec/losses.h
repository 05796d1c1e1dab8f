// losses.h: the ranking losses of GRU4Rec on a score matrix, row by row, with their gradients.
// Holds: cross-entropy, BPR-max (optionally after ELU) and TOP1-max (DESIGN.md §3.3) for one row of
// C scores whose positive sits in column p, and the logQ correction. Each function writes the row's
// gradient and returns the row's loss, both *before* division by the batch size.
// Not here: the score product or its backward (train.h), any parallel loop (the caller splits rows).
#pragma once

#include <algorithm>
#include <cmath>

#include "activations.h"
#include "types.h"

namespace seqrec {

enum class Loss { CrossEntropy = 0, BprMax = 1, Top1Max = 2 };

// ε inside the logs, as in the official GRU4Rec; the gradients below are exact for it.
template <class T>
constexpr T loss_eps() { return T(1e-24); }

template <class T>
inline T sigm(T x) { return T(0.5) * (std::tanh(T(0.5) * x) + T(1)); }

// Cross-entropy: loss = −log(softmax(r)_p + ε).
//   r (C) scores (after logQ), g (C) out: d loss / d r
template <class T>
T xe_row(Index C, Index p, const T* r, T* g) {
  T m = r[0];
  for (Index j = 1; j < C; ++j) m = std::max(m, r[j]);
  for (Index j = 0; j < C; ++j) g[j] = r[j] - m;
  activate(Act::Exp, g, C);
  T s = 0;
  for (Index j = 0; j < C; ++j) s += g[j];
  const T inv = T(1) / s;
  for (Index j = 0; j < C; ++j) g[j] *= inv;  // g = softmax
  const T sp = g[p];
  const T k = sp / (sp + loss_eps<T>());     // d(−log(s_p+ε))/dr_j = k·(s_j − [j=p])
  for (Index j = 0; j < C; ++j) g[j] *= k;
  g[p] -= k;
  return -std::log(sp + loss_eps<T>());
}

// Softmax over the negatives of a row (all columns but p): s (C), s[p] = 0.
template <class T>
void softmax_neg(Index C, Index p, const T* o, T* s) {
  T m = -INFINITY;
  for (Index j = 0; j < C; ++j) if (j != p) m = std::max(m, o[j]);
  for (Index j = 0; j < C; ++j) s[j] = o[j] - m;
  activate(Act::Exp, s, C);
  s[p] = T(0);
  T sum = 0;
  for (Index j = 0; j < C; ++j) sum += s[j];
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
  T A = 0, Q = 0, dAp = 0;
  for (Index j = 0; j < C; ++j) {
    if (j == p) continue;
    A += s[j] * sg[j];
    Q += s[j] * o[j] * o[j];
    dAp += s[j] * sg[j] * (T(1) - sg[j]);
  }
  const T kA = -T(1) / (A + loss_eps<T>());
  for (Index j = 0; j < C; ++j) {
    if (j == p) continue;
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
  T V = 0;
  for (Index j = 0; j < C; ++j) if (j != p) V += s[j] * (a[j] + b[j]);
  T dp = 0;
  for (Index j = 0; j < C; ++j) {
    if (j == p) continue;
    const T aj = a[j], bj = b[j];
    dp -= s[j] * aj * (T(1) - aj);
    g[j] = s[j] * (aj + bj - V) + s[j] * (aj * (T(1) - aj) + bj * (T(1) - bj) * T(2) * r[j]);
  }
  g[p] = dp;
  return V;
}

}  // namespace seqrec
