// gru.h: one step of the GRU in the GRU4Rec form (DESIGN.md §3.1), on a block of n rows:
//   r = σ(a_r + h·W_hr), z = σ(a_z + h·W_hz), c = tanh(a_c + (r⊙h)·W_hc), h' = (1−z)⊙h + z⊙c,
// with a = x·W_x + b computed by the caller. The reset gate multiplies h *before* the hidden product.
// Gate blocks are laid out [r | z | c] along the 3H columns of W_x, W_h, b and the cache.
// Not here: loops over time, layers or threads (sequence.h); weight gradients (sequence.h, one product
// per window).
#pragma once

#include "activations.h"
#include "gemm.h"
#include "types.h"

namespace seqrec {

// a     (n, 3H)  in: x·W_x + b; out: activated gates [r, z, c] (the cache)
// h     (n, H)   state entering the step
// W_h   (H, 3H)
// h_out (n, H)   out: h'
// rh    (n, H)   scratch
// bf16           products in bfloat16 with float32 accumulation (gemm.h); float only
template <class T>
void gru_step_forward(Index n, Index H, T* a, const T* h, const T* W_h, T* h_out, T* rh,
                      bool bf16 = false) {
  MapR<T> A(a, n, 3 * H);
  CMapR<T> Hm(h, n, H);
  CMapR<T> Wh(W_h, H, 3 * H);
  product(bf16, A.leftCols(2 * H), Hm, Wh.leftCols(2 * H), true);
  activate_cols(Act::Logistic, a, n, 3 * H, 0, 2 * H);
  MapR<T> RH(rh, n, H);
  RH = A.leftCols(H).array() * Hm.array();
  product(bf16, A.rightCols(H), RH, Wh.rightCols(H), true);
  activate_cols(Act::Tanh, a, n, 3 * H, 2 * H, H);
  // h' = (1−z)⊙h + z⊙c = h + z⊙(c − h)
  MapR<T>(h_out, n, H) =
      Hm.array() + A.middleCols(H, H).array() * (A.rightCols(H).array() - Hm.array());
}

// dh      (n, H)   gradient reaching h' (output + carried)
// gates   (n, 3H)  [r, z, c] from forward
// h       (n, H)   state entering the step
// W_h     (H, 3H)
// dA      (n, 3H)  out: gradient of the pre-activations [a_r, a_z, a_c]
// dh_prev (n, H)   out: gradient of the entering state (before the reset mask)
// rh      (n, H)   out: r⊙h, kept for dW_hc
// drh     (n, H)   scratch
// bf16             as in gru_step_forward
// need_dh_prev     false: dh_prev is not computed (the first step of a truncated window, whose
//                  entering-state gradient nobody reads; saves the (n, 2H)·(2H, H) product)
template <class T>
void gru_step_backward(Index n, Index H, const T* dh, const T* gates, const T* h, const T* W_h,
                       T* dA, T* dh_prev, T* rh, T* drh, bool bf16 = false,
                       bool need_dh_prev = true) {
  CMapR<T> G(gates, n, 3 * H);
  CMapR<T> Hm(h, n, H);
  CMapR<T> Wh(W_h, H, 3 * H);
  CMapR<T> DH(dh, n, H);
  MapR<T> DA(dA, n, 3 * H);
  MapR<T> DHP(dh_prev, n, H);
  MapR<T> RH(rh, n, H);
  MapR<T> DRH(drh, n, H);
  auto r = G.leftCols(H).array();
  auto z = G.middleCols(H, H).array();
  auto c = G.rightCols(H).array();
  DA.middleCols(H, H) = DH.array() * (c - Hm.array()) * z * (T(1) - z);
  DA.rightCols(H) = DH.array() * z * (T(1) - c.square());
  product(bf16, DRH, DA.rightCols(H), Wh.rightCols(H).transpose());
  DA.leftCols(H) = DRH.array() * Hm.array() * r * (T(1) - r);
  RH = r * Hm.array();
  if (!need_dh_prev) return;
  DHP = DH.array() * (T(1) - z);
  DHP.array() += DRH.array() * r;
  product(bf16, DHP, DA.leftCols(2 * H), Wh.leftCols(2 * H).transpose(), true);
}

}  // namespace seqrec
