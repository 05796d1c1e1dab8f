// sequence.h: truncated BPTT over a window of T steps for one stacked layer, for every cell.
// Holds: layer_forward / layer_backward. A stack of L layers is run layer by layer by the caller
// (layer l over all T steps, then l+1): layer l at step t needs only layer l−1 at t and itself at t−1.
// Reset: reset[t, b] != 0 zeroes row b's carried state before step t (a new session took the slot),
// so no value and no gradient crosses a session boundary.
// Dropout: an optional (T, B, H) multiplier (0 or 1/(1−p)) on each step's output; the dropped-out
// output is both what the next layer sees and the state carried to the next step (DESIGN.md §3.2).
// Index input: for the one-hot input mode the layer input is an item index per row, so x·W_x is the
// row W_x[x] (a gather, no product); backward then leaves dW_x to the caller (a lazy row update)
// and hands back the pre-activation gradient dA instead.
// Parallel: over batch rows, one parallel region per time step (rows are independent within a step);
// the weight gradients are then one product over all T·B rows, parallel over output columns (over
// parameter rows when the optimizer update is fused in: WeightUpdate), so no thread-local partial
// sums are needed and results are deterministic for a given thread count.
// Not here: losses and the output layer (train.h); allocation of outputs (the caller owns memory).
#pragma once

#include <algorithm>
#include <vector>

#include "gemm.h"
#include "gru.h"
#include "lstm.h"
#include "optim.h"
#include "parallel.h"
#include "rnn.h"
#include "types.h"

namespace seqrec {

namespace detail {
// Rows [r0, r1) of h_in[t] = reset[t] ? 0 : prev.
template <class T>
void masked_copy(Index r0, Index r1, Index H, const T* prev, const std::uint8_t* reset_t, T* out) {
  for (Index r = r0; r < r1; ++r) {
    T* o = out + r * H;
    if (reset_t && reset_t[r]) {
      std::fill(o, o + H, T(0));
    } else {
      const T* p = prev + r * H;
      std::copy(p, p + H, o);
    }
  }
}
}  // namespace detail

// Forward over T steps of one layer.
//   X      (T, B, I)   layer input; ignored when x_idx is given
//   x_idx  (T, B)      int32 item per row (one-hot input: a = W_x[x] + b; x < 0 gives a = b), or null
//   h0, c0 (B, H)      state before step 0 (c0 only for lstm)
//   reset  (T, B)      uint8, or null for no resets
//   drop   (T, B, H)   dropout multiplier on the output, or null
//   cache              LayerCache<T> (see types.h); filled here. gates holds u = tanh(·) for rnn.
template <Cell K, class T>
void layer_forward(Index Tn, Index B, const LayerParams<T>& p, const T* X, const std::int32_t* x_idx,
                   const T* h0, const T* c0, const std::uint8_t* reset, const T* drop,
                   const LayerCache<T>& cache, int num_threads) {
  constexpr int G = gate_count(K);
  const Index H = p.H, I = p.I, GH = G * H;
  CMapR<T> Wx(p.W_x, I, GH);
  CVecMap<T> bias(p.b, GH);
  auto scratch = scratch_array<T>(K == Cell::GRU ? B * H : 0);  // written before read
  for (Index t = 0; t < Tn; ++t) {
    const T* prev_h = t == 0 ? h0 : cache.h_out + (t - 1) * B * H;
    const T* prev_c = K == Cell::LSTM ? (t == 0 ? c0 : cache.c_out + (t - 1) * B * H) : nullptr;
    const std::uint8_t* rt = reset ? reset + t * B : nullptr;
    T* h_in = cache.h_in + t * B * H;
    T* h_out = cache.h_out + t * B * H;
    T* a = cache.gates + t * B * GH;
    parallel_for(B, num_threads, [&](Index r0, Index r1) {
      const Index n = r1 - r0;
      detail::masked_copy(r0, r1, H, prev_h, rt, h_in);
      MapR<T> A(a + r0 * GH, n, GH);
      if (x_idx) {
        const std::int32_t* xi = x_idx + t * B;
        for (Index r = r0; r < r1; ++r) {
          if (xi[r] >= 0) A.row(r - r0) = Wx.row(xi[r]) + bias;
          else A.row(r - r0) = bias;
        }
      } else {
        product(p.bf16, A, CMapR<T>(X + t * B * I + r0 * I, n, I), Wx);
        A.rowwise() += bias;
      }
      if constexpr (K == Cell::RNN) {
        rnn_step_forward(n, H, a + r0 * GH, h_in + r0 * H, p.W_h, p.bf16);
        std::copy(a + r0 * GH, a + r1 * GH, h_out + r0 * H);
      } else if constexpr (K == Cell::GRU) {
        gru_step_forward(n, H, a + r0 * GH, h_in + r0 * H, p.W_h, h_out + r0 * H,
                         scratch.get() + r0 * H, p.bf16);
      } else {
        T* c_in = cache.c_in + t * B * H;
        detail::masked_copy(r0, r1, H, prev_c, rt, c_in);
        lstm_step_forward(n, H, a + r0 * GH, h_in + r0 * H, c_in + r0 * H, p.W_h, h_out + r0 * H,
                          cache.c_out + t * B * H + r0 * H, p.bf16);
      }
      if (drop) {
        MapR<T>(h_out + r0 * H, n, H).array() *= CMapR<T>(drop + t * B * H + r0 * H, n, H).array();
      }
    });
  }
}

// The optimizer update of a layer's W_x, W_h and b, fused into backward's weight-gradient loop
// (training, train.h): each block of gradient rows is applied to the parameters while it is in
// cache, so no (I + H, G·H) gradient matrix goes to memory and back (at H = 480 the dense update was
// ~23% of a step, memory-bound). Each element's update is optim.h's update_span, as for every other tensor.
template <class T>
struct WeightUpdate {
  OptConfig oc;  // with the step count of this update
  T* Wx;         // (I, GH) with its state; null: W_x is not updated here (one-hot input)
  T* Wx_s1;
  T* Wx_s2;
  T* Wh;         // (H, GH)
  T* Wh_s1;
  T* Wh_s2;
  T* b;          // (GH)
  T* b_s1;
  T* b_s2;
};

// Backward over T steps of one layer (truncated BPTT inside the window).
//   dOut      (T, B, H)  gradient reaching each step's (dropped-out) output from above
//   carry_h   (B, H)     in: gradient of the last state (dh_last); out: gradient of h0 (dh0)
//   carry_c   (B, H)     the same for the lstm memory cell; null otherwise
//   drop      (T, B, H)  the forward's dropout multiplier, or null
//   dX        (T, B, I)  out: gradient of the layer input; may be null (and is unused for x_idx)
//   dW_x (I, GH)         out (overwritten); not touched when x_idx is given
//   dW_h (H, GH), db (GH) out (overwritten)
//   dA_out    (T, B, GH) out: pre-activation gradients, or null (then kept internally)
//   want_dh0  false: carry_h (and carry_c) come back zero instead of dh0 (training discards them: the carried
//             state is a value), which skips the step-0 hidden product
//   upd       non-null: W_x, W_h and b are updated in place by the optimizer instead (dW_x and dW_h
//             are then not written and may be null; db still receives the bias gradient)
template <Cell K, class T>
void layer_backward(Index Tn, Index B, const LayerParams<T>& p, const T* X,
                    const std::int32_t* x_idx, const std::uint8_t* reset, const T* drop,
                    const LayerCache<const T>& cache, const T* dOut, T* carry_h, T* carry_c, T* dX,
                    T* dW_x, T* dW_h, T* db, T* dA_out, int num_threads, bool want_dh0 = true,
                    const WeightUpdate<T>* upd = nullptr) {
  constexpr int G = gate_count(K);
  const Index H = p.H, I = p.I, GH = G * H, TB = Tn * B;
  CMapR<T> Wx(p.W_x, I, GH);
  // scratch written before it is read (dhp and dcp are read only where the step wrote them)
  auto dA_own = scratch_array<T>(dA_out ? 0 : TB * GH);
  T* dA = dA_out ? dA_out : dA_own.get();
  auto dh = scratch_array<T>(B * H), dhp = scratch_array<T>(B * H);
  auto rh = scratch_array<T>(K == Cell::GRU ? TB * H : 0), drh = scratch_array<T>(K == Cell::GRU ? B * H : 0);
  auto dcp = scratch_array<T>(K == Cell::LSTM ? B * H : 0);
  for (Index t = Tn - 1; t >= 0; --t) {
    const std::uint8_t* rt = reset ? reset + t * B : nullptr;
    const Index o = t * B * H;
    T* dA_t = dA + t * B * GH;
    const T* g_t = cache.gates + t * B * GH;
    const bool need = t > 0 || want_dh0;
    parallel_for(B, num_threads, [&](Index r0, Index r1) {
      const Index n = r1 - r0, ro = r0 * H;
      MapR<T> DH(dh.get() + ro, n, H);
      DH = CMapR<T>(dOut + o + ro, n, H) + CMapR<T>(carry_h + ro, n, H);
      if (drop) DH.array() *= CMapR<T>(drop + o + ro, n, H).array();
      if constexpr (K == Cell::RNN) {
        rnn_step_backward(n, H, dh.get() + ro, g_t + r0 * GH, p.W_h, dA_t + r0 * GH,
                          dhp.get() + ro, p.bf16, need);
      } else if constexpr (K == Cell::GRU) {
        gru_step_backward(n, H, dh.get() + ro, g_t + r0 * GH, cache.h_in + o + ro, p.W_h,
                          dA_t + r0 * GH, dhp.get() + ro, rh.get() + o + ro, drh.get() + ro,
                          p.bf16, need);
      } else {
        lstm_step_backward(n, H, dh.get() + ro, carry_c + ro, g_t + r0 * GH, cache.c_in + o + ro,
                           cache.c_out + o + ro, p.W_h, dA_t + r0 * GH, dhp.get() + ro,
                           dcp.get() + ro, p.bf16, need);
      }
      // The entering state was zeroed where reset[t] is set: its gradient stops there.
      for (Index r = r0; r < r1; ++r) {
        const bool cut = (rt && rt[r]) || !need;
        auto carry = [&](T* dst, const T* src) {
          if (cut) std::fill(dst + r * H, dst + (r + 1) * H, T(0));
          else std::copy(src + r * H, src + (r + 1) * H, dst + r * H);
        };
        carry(carry_h, dhp.get());
        if constexpr (K == Cell::LSTM) carry(carry_c, dcp.get());
      }
      if (dX && !x_idx) {
        product(p.bf16, MapR<T>(dX + t * B * I + r0 * I, n, I), CMapR<T>(dA_t + r0 * GH, n, GH),
                Wx.transpose());
      }
    });
  }
  // Weight gradients over all T·B rows at once, split over output columns.
  CMapR<T> DA(dA, TB, GH);
  CMapR<T> Hin(cache.h_in, TB, H);
  MapR<T> DWh(dW_h, upd ? 0 : H, GH);
  // Bias gradient of columns [c0, c1): column sums of dA. Plain loop: Eigen's vectorised
  // colwise().sum() peels by alignment, which would make the sum order (and the last bits)
  // depend on where the buffer was allocated. Restrict pointers: the loop vectorises across
  // columns (each column still sums its rows in order).
  auto bias_sums = [&](Index c0, Index c1) {
    T* __restrict sums = db;
    for (Index c = c0; c < c1; ++c) sums[c] = T(0);
    for (Index r = 0; r < TB; ++r) {
      const T* __restrict row = dA + r * GH;
      for (Index c = c0; c < c1; ++c) sums[c] += row[c];
    }
  };
  if (upd) {
    T bc1 = 1, bc2 = 1;
    bias_corrections(upd->oc, bc1, bc2);
    // Split over parameter *rows* (W_x's, then W_h's), in blocks of ~512 KiB of gradient (a block
    // stays in a 1 MiB L2) computed into a per-thread buffer and applied while in cache: a block's
    // parameters and optimizer state are one contiguous span (one update_span call, not one per
    // row), and the threads share at most one cache line of each matrix. Measured against the
    // earlier split over columns (same process, alternating, issue 14): +4% whole training steps at
    // H = 480 on 1 and 2 threads, unchanged at H = 100. The GRU's candidate columns [2H, 3H) of W_h
    // take r⊙h.
    const Index nx = (upd->Wx && !x_idx) ? I : 0;  // rows of W_x updated here
    const Index rb = std::max<Index>(1, Index(512 * 1024 / sizeof(T)) / std::max<Index>(GH, 1));
    CMapR<T> Xm(X, nx > 0 ? TB : 0, nx > 0 ? I : 0);
    CMapR<T> RH(rh.get(), K == Cell::GRU ? TB : 0, H);
    const Index rows = nx + H;
    parallel_for(
        rows, num_threads,
        [&](Index r0, Index r1) {
          // the bias columns in proportion to the rows (chunks tile the rows, so these tile GH)
          const Index c0 = r0 * GH / rows, c1 = r1 * GH / rows;
          if (c1 > c0) {
            bias_sums(c0, c1);
            update_span(upd->oc, c1 - c0, upd->b + c0, db + c0, upd->b_s1 + c0,
                        upd->b_s2 ? upd->b_s2 + c0 : nullptr, bc1, bc2);
          }
          thread_local std::vector<T> g;
          g.resize(static_cast<size_t>(std::min(rb, r1 - r0) * GH));
          for (Index r = r0; r < r1;) {
            const bool wx = r < nx;  // a block never mixes W_x and W_h rows
            const Index e = std::min({r1, r + rb, wx ? nx : rows});
            const Index nb = e - r, i0 = wx ? r : r - nx;
            MapR<T> Gb(g.data(), nb, GH);
            T *P, *S1, *S2;
            if (wx) {
              product(p.bf16, Gb, Xm.middleCols(i0, nb).transpose(), DA);
              P = upd->Wx, S1 = upd->Wx_s1, S2 = upd->Wx_s2;
            } else {
              if (K == Cell::GRU) {
                product(p.bf16, Gb.leftCols(2 * H), Hin.middleCols(i0, nb).transpose(),
                        DA.leftCols(2 * H));
                product(p.bf16, Gb.rightCols(H), RH.middleCols(i0, nb).transpose(),
                        DA.rightCols(H));
              } else {
                product(p.bf16, Gb, Hin.middleCols(i0, nb).transpose(), DA);
              }
              P = upd->Wh, S1 = upd->Wh_s1, S2 = upd->Wh_s2;
            }
            const Index o = i0 * GH;
            update_span(upd->oc, nb * GH, P + o, g.data(), S1 + o, S2 ? S2 + o : nullptr, bc1, bc2);
            r = e;
          }
        },
        8);
    return;
  }
  parallel_for(
      GH, num_threads,
      [&](Index c0, Index c1) {
        const Index nc = c1 - c0;
        if (!x_idx) {
          product(p.bf16, MapR<T>(dW_x, I, GH).middleCols(c0, nc), CMapR<T>(X, TB, I).transpose(),
                  DA.middleCols(c0, nc));
        }
        bias_sums(c0, c1);
        if constexpr (K == Cell::GRU) {
          // columns [0, 2H) take h; the candidate block [2H, 3H) takes r⊙h
          const Index s = std::min(c1, 2 * H);
          if (s > c0) product(p.bf16, DWh.middleCols(c0, s - c0), Hin.transpose(), DA.middleCols(c0, s - c0));
          const Index s2 = std::max(c0, 2 * H);
          if (c1 > s2) {
            CMapR<T> RH(rh.get(), TB, H);
            product(p.bf16, DWh.middleCols(s2, c1 - s2), RH.transpose(), DA.middleCols(s2, c1 - s2));
          }
        } else {
          product(p.bf16, DWh.middleCols(c0, nc), Hin.transpose(), DA.middleCols(c0, nc));
        }
      },
      8);
}

}  // namespace seqrec
