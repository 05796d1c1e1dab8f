// rnn.h: one step of the plain Elman cell, h' = tanh(x·W_x + h·W_h + b) (DESIGN.md §3.1), on a block
// of n rows.
// Holds: the row-block step forward and backward. The input product x·W_x + b is done by the caller
// (sequence.h), so these functions add only the recurrent part.
// Not here: loops over time, layers or threads (sequence.h owns them); weight gradients (done once per
// window in sequence.h as one product over all T·B rows).
#pragma once

#include "activations.h"
#include "gemm.h"
#include "types.h"

namespace seqrec {

// a      (n, H)  in: x·W_x + b; out: h' = tanh(·), the rnn's only gate (its cache)
// h      (n, H)  state entering the step
// W_h    (H, H)
// bf16          products in bfloat16 with float32 accumulation (gemm.h); float only
template <class T>
void rnn_step_forward(Index n, Index H, T* a, const T* h, const T* W_h, bool bf16 = false) {
  MapR<T> A(a, n, H);
  product(bf16, A, CMapR<T>(h, n, H), CMapR<T>(W_h, H, H), true);
  activate(Act::Tanh, a, n * H);
}

// dh     (n, H)  gradient reaching h' (output + carried, after the dropout mask)
// u      (n, H)  h' = tanh(·) from forward (before dropout)
// W_h    (H, H)
// dA     (n, H)  out: gradient of the pre-activation
// dh_prev(n, H)  out: gradient of the entering state (before the reset mask)
template <class T>
void rnn_step_backward(Index n, Index H, const T* dh, const T* u, const T* W_h, T* dA,
                       T* dh_prev, bool bf16 = false, bool need_dh_prev = true) {
  MapR<T> DA(dA, n, H);
  CMapR<T> Y(u, n, H);
  DA = CMapR<T>(dh, n, H).array() * (T(1) - Y.array().square());
  if (need_dh_prev) product(bf16, MapR<T>(dh_prev, n, H), DA, CMapR<T>(W_h, H, H).transpose());
}

}  // namespace seqrec
