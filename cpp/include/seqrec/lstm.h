// lstm.h: one step of the LSTM (DESIGN.md §3.1), on a block of n rows:
//   [i, f, g, o] = [σ, σ, tanh, σ](a + h·W_h), c' = f⊙c + i⊙g, h' = o⊙tanh(c'),
// with a = x·W_x + b computed by the caller. Gate blocks are laid out [i | f | g | o].
// Not here: loops over time, layers or threads (sequence.h); weight gradients (sequence.h); the
// forget-bias initialisation (a parameter choice, made by the model).
#pragma once

#include "activations.h"
#include "gemm.h"
#include "types.h"

namespace seqrec {

// a     (n, 4H)  in: x·W_x + b; out: activated gates [i, f, g, o] (the cache)
// h, c  (n, H)   state entering the step
// W_h   (H, 4H)
// h_out, c_out (n, H)  out: h', c'
// bf16  products in bfloat16 with float32 accumulation (gemm.h); float only
template <class T>
void lstm_step_forward(Index n, Index H, T* a, const T* h, const T* c, const T* W_h, T* h_out,
                       T* c_out, bool bf16 = false) {
  MapR<T> A(a, n, 4 * H);
  product(bf16, A, CMapR<T>(h, n, H), CMapR<T>(W_h, H, 4 * H), true);
  activate_cols(Act::Logistic, a, n, 4 * H, 0, 2 * H);
  activate_cols(Act::Tanh, a, n, 4 * H, 2 * H, H);
  activate_cols(Act::Logistic, a, n, 4 * H, 3 * H, H);
  MapR<T> C(c_out, n, H);
  C = A.middleCols(H, H).array() * CMapR<T>(c, n, H).array() +
      A.leftCols(H).array() * A.middleCols(2 * H, H).array();
  activate(Act::Tanh, c_out, h_out, n * H);
  MapR<T>(h_out, n, H).array() *= A.rightCols(H).array();
}

// dh, dc  (n, H)   gradients reaching h' and c' (output + carried)
// gates   (n, 4H)  [i, f, g, o] from forward
// c, c_out(n, H)   memory cell before and after the step
// W_h     (H, 4H)
// dA      (n, 4H)  out: gradient of the pre-activations
// dh_prev, dc_prev (n, H)  out: gradients of the entering state (before the reset mask)
template <class T>
void lstm_step_backward(Index n, Index H, const T* dh, const T* dc, const T* gates, const T* c,
                        const T* c_out, const T* W_h, T* dA, T* dh_prev, T* dc_prev,
                        bool bf16 = false, bool need_dh_prev = true) {
  CMapR<T> G(gates, n, 4 * H);
  auto i = G.leftCols(H).array();
  auto f = G.middleCols(H, H).array();
  auto g = G.middleCols(2 * H, H).array();
  auto o = G.rightCols(H).array();
  CMapR<T> DH(dh, n, H);
  MapR<T> DA(dA, n, 4 * H);
  MapR<T> DCP(dc_prev, n, H);
  MatR<T> tcm(n, H);
  activate(Act::Tanh, c_out, tcm.data(), n * H);
  const auto tc = tcm.array();
  // dc_total = dc + dh⊙o⊙(1 − tanh²c'), kept in dc_prev until it is scaled by f below
  DCP = CMapR<T>(dc, n, H).array() + DH.array() * o * (T(1) - tc.square());
  DA.leftCols(H) = DCP.array() * g * i * (T(1) - i);
  DA.middleCols(H, H) = DCP.array() * CMapR<T>(c, n, H).array() * f * (T(1) - f);
  DA.middleCols(2 * H, H) = DCP.array() * i * (T(1) - g.square());
  DA.rightCols(H) = DH.array() * tc * o * (T(1) - o);
  DCP.array() *= f;
  if (need_dh_prev) product(bf16, MapR<T>(dh_prev, n, H), DA, CMapR<T>(W_h, H, 4 * H).transpose());
}

}  // namespace seqrec
