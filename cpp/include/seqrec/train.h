// train.h: GRU4Rec training on a chunk of session-parallel mini-batches, in one call.
// Holds: train_chunk, which for each of K windows of T steps (T = bptt) does the input embedding,
// the recurrent forward, the sampled (or full) output scores, the loss and its gradient, truncated
// BPTT, and the optimizer update (dense for the recurrent weights, lazy row-wise for the item
// tables), carrying the hidden state from window to window (DESIGN.md §3.2–3.3).
// Python owns everything this reads and writes: parameters, optimizer state, hidden state, the
// schedule of items, the negatives and the dropout masks (drawn from its seeded generator). The
// kernel keeps no state between calls.
// Parallel: every product and row loop over batch rows, score columns or table columns, one level
// deep, with static chunks (deterministic for a given thread count).
// Not here: the schedule (which session is in which slot; Python), sampling (Python), evaluation.
#pragma once

#include <cmath>
#include <limits>
#include <vector>

#include "features.h"
#include "gemm.h"
#include "losses.h"
#include "optim.h"
#include "parallel.h"
#include "sequence.h"
#include "types.h"

namespace seqrec {

enum class Embedding { Constrained = 0, Separate = 1, OneHot = 2 };

// A trainable tensor with its optimizer state; s2 may be null (Adagrad without momentum).
template <class T>
struct Param {
  T* p;
  T* s1;
  T* s2;
  Index rows, cols;
};

template <class T>
struct TrainModel {
  Cell cell;
  Embedding embedding;
  std::vector<Param<T>> W_x, W_h, b;  // per layer; W_x[0] is (N, G*H_0) in one-hot mode
  std::vector<Index> H;               // hidden width per layer
  Param<T> W_y, b_y;                  // (N, H_L), (N, 1)
  Param<T> E_in;                      // (N, E) in separate mode, else p == null
  Param<T> P;                         // (F_dim, H_L) feature projection when feat.on(), else p == null
  ItemFeatures<T> feat;               // item features (features.h); the item vector is W_y + F·P
  Index N = 0, I0 = 0;                // items; width of layer 0's input (E or H_L; N for one-hot)
};

struct TrainConfig {
  Loss loss = Loss::CrossEntropy;
  double bpreg = 1.0, elu_param = 0.0, logq = 0.0, sample_alpha = 0.5;
  bool full_softmax = false;
  double batch_size = 32;  // the configured batch size: every step's loss is divided by it
  bool bf16 = false;       // every product in bfloat16, float32 accumulation (gemm.h); float only
  OptConfig opt;
};

// The schedule and randomness of one chunk.
//   x, y   (K, T, B) int32  input item and target per step and slot; −1 where the slot is idle
//   reset  (K, T, B) uint8  zero the slot's carried state before this step
//   neg    (K, T, S) int32  sampled negatives of each step (S may be 0)
//   drop_embed (K, T, B, I0) dropout multiplier on the input embedding, or null
//   drop_hidden[l] (K, T, B, H_l) multiplier on layer l's output, or null
template <class T>
struct Chunk {
  Index K, Tn, B, S;
  const std::int32_t* x;
  const std::int32_t* y;
  const std::uint8_t* reset;
  const std::int32_t* neg;
  const T* drop_embed;
  std::vector<const T*> drop_hidden;
  const T* log_support;  // (N) log item support, for logQ; null when logq == 0
};

// Gradients of table rows, duplicates summed in first-seen order (deterministic).
// A row's gradient starts as a copy of its first contribution (no zero-filled buffer per step) and
// later contributions are added in order, so each sum is the same as 0 + g1 + g2 + ... . With
// `borrow`, a first contribution is not copied at all: the row's gradient *is* that row of the
// caller's (writable) source, later contributions are added into it, and grad_ptrs() points there;
// the caller keeps the source unchanged until the update has read it. (The sampled output rows of a
// step: ~2,000 rows of dO per step no longer copied, issue 14.)
template <class T>
class RowAccum {
 public:
  RowAccum(Index n_rows, Index width) : W_(width), slot_(static_cast<size_t>(n_rows), -1) {}
  Index width() const { return W_; }
  Index size() const { return static_cast<Index>(rows_.size()); }
  const std::int32_t* rows() const { return rows_.data(); }
  // Contiguous (size, W) gradients; only when nothing was borrowed.
  const T* grads() const { return G_.data(); }
  // Each slot's gradient row (borrowed or in G), for the update; valid until the next assign.
  const T* const* grad_ptrs() {
    gp_.resize(rows_.size());
    for (size_t s = 0; s < rows_.size(); ++s) {
      gp_[s] = ptr_[s] ? ptr_[s] : G_.data() + Index(s) * W_;
    }
    return gp_.data();
  }
  // Registers the rows (−1 entries ignored) and returns their slots in `slots` (−1 for ignored).
  void assign(const std::int32_t* idx, Index n, std::vector<std::int32_t>& slots) {
    slots.resize(static_cast<size_t>(n));
    for (Index e = 0; e < n; ++e) {
      const std::int32_t r = idx[e];
      if (r < 0) { slots[e] = -1; continue; }
      if (slot_[r] < 0) {
        slot_[r] = static_cast<std::int32_t>(rows_.size());
        rows_.push_back(r);
        written_.push_back(0);
        ptr_.push_back(nullptr);
      }
      slots[e] = slot_[r];
    }
    const size_t need = rows_.size() * static_cast<size_t>(W_);
    if (G_.size() < need) G_.resize(std::max(need, G_.size() * 2));  // grows, never cleared
  }
  // G[slots[e]] += scale_e · src[e]  (src (n, W), row stride ld), the first contribution of a row
  // copied. Parallel over contiguous ranges of slots: each thread owns its rows (no two threads
  // write one cache line of G) and walks the entries in order, so sums keep first-seen order.
  void add(const std::vector<std::int32_t>& slots, const T* src, Index ld, const T* row_scale,
           Index row_scale_ld, int nt, T* borrow = nullptr) {
    const Index n = static_cast<Index>(slots.size());
    const Index R = size();
    const Index W = W_;
    // a few rows (e.g. the window's input rows at B = 32) are not worth a parallel loop
    parallel_for(R, n * W < 32768 ? 1 : nt, [&](Index s0, Index s1) {
      for (Index e = 0; e < n; ++e) {
        const std::int32_t s = slots[e];
        if (s < s0 || s >= s1) continue;  // also skips −1
        const bool first = !written_[s];
        written_[s] = 1;
        if (first && borrow && !row_scale) {  // the row's gradient is this row of the source
          ptr_[s] = borrow + e * ld;
          continue;
        }
        T* __restrict g = ptr_[s] ? ptr_[s] : G_.data() + Index(s) * W;
        const T* __restrict v = src + e * ld;
        if (row_scale) {
          const T* __restrict m = row_scale + e * row_scale_ld;
          if (first) for (Index c = 0; c < W; ++c) g[c] = v[c] * m[c];
          else for (Index c = 0; c < W; ++c) g[c] += v[c] * m[c];
        } else {
          if (first) std::copy(v, v + W, g);
          else for (Index c = 0; c < W; ++c) g[c] += v[c];
        }
      }
    }, std::max<Index>(1, 4096 / std::max<Index>(W, 1)));
  }
  void clear() {
    for (std::int32_t r : rows_) slot_[r] = -1;
    rows_.clear();
    written_.clear();
    ptr_.clear();
  }

 private:
  Index W_;
  std::vector<std::int32_t> slot_;
  std::vector<std::int32_t> rows_;
  std::vector<std::uint8_t> written_;
  std::vector<T*> ptr_;       // per slot: the borrowed source row, or null (the row is in G_)
  std::vector<const T*> gp_;  // grad_ptrs()
  std::vector<T> G_;
};

struct ChunkResult {
  Index windows_done = 0;  // windows fully applied
  bool non_finite = false; // window `windows_done` produced a NaN/inf loss and was not applied
  long long updates = 0;   // optimizer steps taken
};

// One loss row dispatch. r (C) scores, p positive column, g (C) gradient out, s, o scratch (C).
template <class T>
T loss_row(const TrainConfig& cfg, Index C, Index p, const T* r, T* g, T* s, T* o) {
  switch (cfg.loss) {
    case Loss::CrossEntropy: return xe_row(C, p, r, g);
    case Loss::BprMax: return bpr_max_row(C, p, r, T(cfg.elu_param), T(cfg.bpreg), g, s, o);
    default: return top1_max_row(C, p, r, g, s, o);
  }
}

// Runs the K windows of `ch`, updating the model, its optimizer state and the carried state
// h[l] (B, H_l) (and c[l] for lstm) in place. losses (K): each window's summed step losses (each
// already divided by the batch size); counts (K): events (predictions) in each window.
template <Cell KC, class T>
ChunkResult train_chunk(const TrainModel<T>& m, const TrainConfig& cfg, const Chunk<T>& ch,
                        std::vector<T*>& h, std::vector<T*>& c, double* losses,
                        long long* counts, int nt) {
  constexpr int G = gate_count(KC);
  const Index L = static_cast<Index>(m.H.size());
  const Index Tn = ch.Tn, B = ch.B, S = ch.S, TB = Tn * B, N = m.N, HL = m.H[L - 1];
  const bool onehot = m.embedding == Embedding::OneHot;
  const Index I0 = m.I0;
  ChunkResult res;

  // Buffers reused by every window.
  std::vector<T> X0(onehot ? 0 : TB * I0), dX0(onehot ? 0 : TB * I0);
  std::vector<std::vector<T>> h_in(L), h_out(L), gates(L), c_in(L), c_out(L), dIn(L);
  std::vector<std::vector<T>> db(L);
  std::vector<T> dA0(onehot ? TB * G * m.H[0] : 0);
  for (Index l = 0; l < L; ++l) {
    const Index H = m.H[l];
    h_in[l].resize(TB * H);
    h_out[l].resize(TB * H);
    gates[l].resize(TB * G * H);
    if (KC == Cell::LSTM) { c_in[l].resize(TB * H); c_out[l].resize(TB * H); }
    if (l > 0) dIn[l].resize(TB * m.H[l - 1]);
    db[l].resize(G * H);
  }
  std::vector<T> dYtop(TB * HL), carry, carry_c;
  const Index Cmax = cfg.full_softmax ? N : B + S;
  std::vector<T> Ya(B * HL), O(cfg.full_softmax ? 0 : Cmax * HL), R(B * Cmax), dR(B * Cmax),
      sc1(B * Cmax), sc2(B * Cmax), dYa(B * HL), dO(Cmax * HL), rowloss(B), bias(Cmax),
      lq(cfg.full_softmax ? 0 : Cmax);
  std::vector<std::int32_t> act, cols(cfg.full_softmax ? 0 : Cmax), pos(B), slots;
  std::vector<T> gWy_full(cfg.full_softmax ? N * HL : 0), gby_full(cfg.full_softmax ? N : 0);
  RowAccum<T> acc_y(N, HL);
  // b_y's row gradients, by acc_y's slots: the rows the score steps register are a prefix of
  // acc_y's (the input rows of a constrained embedding come after them), so the bias needs no
  // second assignment (a serial pass over the C columns of every step) of its own
  std::vector<T> g_by;
  Index n_by = 0;
  RowAccum<T> acc_in(N, onehot ? G * m.H[0] : (m.embedding == Embedding::Separate ? I0 : 1));
  const T inv_batch = T(1) / T(cfg.batch_size);
  // item features: effective rows of the window (constant within it), dP and gather scratch
  const bool feat = m.feat.on();
  std::vector<T> Xf(feat && m.embedding == Embedding::Constrained ? TB * HL : 0),
      Wfull(feat && cfg.full_softmax ? N * HL : 0), dP(feat ? m.feat.Fd * HL : 0), fscratch;
  std::vector<UpdateItem<T>> updates;

  for (Index k = 0; k < ch.K; ++k) {
    const std::int32_t* xk = ch.x + k * TB;
    const std::int32_t* yk = ch.y + k * TB;
    const std::uint8_t* rk = ch.reset + k * TB;
    if (feat && cfg.full_softmax) feature_table(m.feat, N, m.W_y.p, Wfull.data(), nt);
    // 1. input embedding of every (step, slot)
    if (!onehot) {
      const T* table = m.embedding == Embedding::Constrained ? m.W_y.p : m.E_in.p;
      if (!Xf.empty()) {  // constrained with features: the input is the effective row
        gather_item_rows(m.feat, m.W_y.p, xk, TB, Xf.data(), fscratch, nt);
      }
      const T* dmask = ch.drop_embed ? ch.drop_embed + k * TB * I0 : nullptr;
      parallel_for(TB, nt, [&](Index e0, Index e1) {
        for (Index e = e0; e < e1; ++e) {
          T* dst = X0.data() + e * I0;
          if (xk[e] < 0) { std::fill(dst, dst + I0, T(0)); continue; }
          const T* src = Xf.empty() ? table + Index(xk[e]) * I0 : Xf.data() + e * I0;
          if (dmask) for (Index j = 0; j < I0; ++j) dst[j] = src[j] * dmask[e * I0 + j];
          else std::copy(src, src + I0, dst);
        }
      }, std::max<Index>(8, 8192 / std::max<Index>(I0, 1)));  // ≥ 32 KiB a chunk: a small copy
                                                                // is not worth a parallel loop
    }
    // 2. recurrent forward, layer by layer over the window
    for (Index l = 0; l < L; ++l) {
      LayerParams<T> lp{m.W_x[l].p, m.W_h[l].p, m.b[l].p, m.W_x[l].rows, m.H[l], cfg.bf16};
      LayerCache<T> lc{h_in[l].data(), h_out[l].data(), gates[l].data(),
                       KC == Cell::LSTM ? c_in[l].data() : nullptr,
                       KC == Cell::LSTM ? c_out[l].data() : nullptr};
      const T* in = l == 0 ? X0.data() : h_out[l - 1].data();
      const T* dmask = ch.drop_hidden[l] ? ch.drop_hidden[l] + k * TB * m.H[l] : nullptr;
      layer_forward<KC, T>(Tn, B, lp, in, (onehot && l == 0) ? xk : nullptr, h[l],
                           KC == Cell::LSTM ? c[l] : nullptr, rk, dmask, lc, nt);
    }
    // 3. scores, loss and output-layer gradients, step by step
    std::fill(dYtop.begin(), dYtop.end(), T(0));
    double wloss = 0;
    long long wcount = 0;
    const T* Ytop = h_out[L - 1].data();
    for (Index t = 0; t < Tn; ++t) {
      const std::int32_t* yt = yk + t * B;
      act.clear();
      for (Index b = 0; b < B; ++b) if (yt[b] >= 0) act.push_back(static_cast<std::int32_t>(b));
      const Index n = static_cast<Index>(act.size());
      // A row needs at least one negative: a lone session with no sampled items has none (the
      // official GRU4Rec stops the epoch there); such a step trains nothing.
      if (n == 0 || (!cfg.full_softmax && n + S < 2)) continue;
      wcount += n;
      for (Index i = 0; i < n; ++i) {
        const T* src = Ytop + (t * B + act[i]) * HL;
        std::copy(src, src + HL, Ya.data() + i * HL);
      }
      CMapR<T> YA(Ya.data(), n, HL);
      Index C;
      const T* Op;  // (C, HL) output rows
      if (cfg.full_softmax) {
        C = N;
        Op = feat ? Wfull.data() : m.W_y.p;
        for (Index i = 0; i < n; ++i) pos[i] = yt[act[i]];
        std::copy(m.b_y.p, m.b_y.p + N, bias.data());
      } else {
        C = n + S;
        for (Index i = 0; i < n; ++i) { cols[i] = yt[act[i]]; pos[i] = static_cast<std::int32_t>(i); }
        std::copy(ch.neg + (k * Tn + t) * S, ch.neg + (k * Tn + t + 1) * S, cols.data() + n);
        Op = O.data();
      }
      // The sampled columns' rows of W_y, bias and logQ, gathered by the chunk of the score
      // loop below that uses them (one loop fewer), or here first when item features change
      // the rows (add_feature_rows is a parallel loop of its own).
      auto gather_cols = [&](Index j0, Index j1) {
        for (Index j = j0; j < j1; ++j) {
          const T* src = m.W_y.p + Index(cols[j]) * HL;
          std::copy(src, src + HL, O.data() + j * HL);
          bias[j] = m.b_y.p[cols[j]];
          if (cfg.logq > 0) {
            // logQ: support for in-batch columns, support^alpha for sampled ones
            const T ls = ch.log_support[cols[j]];
            lq[j] = T(cfg.logq) * (j < n ? ls : T(cfg.sample_alpha) * ls);
          }
        }
      };
      const bool gather_in_scores = !cfg.full_softmax && !feat;
      const bool sub_logq = !cfg.full_softmax && cfg.logq > 0;
      if (!cfg.full_softmax && feat) {
        parallel_for(C, nt, gather_cols, 64);
        add_feature_rows(m.feat, cols.data(), C, O.data(), fscratch, nt);
      }
      CMapR<T> OM(Op, C, HL);
      MapR<T> RM(R.data(), n, C);
      // R = Ya·Oᵀ + b (− logQ), split over score columns
      parallel_for(C, nt, [&](Index j0, Index j1) {
        if (gather_in_scores) gather_cols(j0, j1);
        product(cfg.bf16, RM.middleCols(j0, j1 - j0), YA, OM.middleRows(j0, j1 - j0).transpose());
        // restrict-qualified, the flags hoisted: these loops vectorise (written through R with
        // cfg's fields tested inside, they did not: 5.8% of a 2-thread RSC15 step, perf)
        const T* __restrict bj = bias.data();
        const T* __restrict lj = lq.data();
        for (Index i = 0; i < n; ++i) {
          T* __restrict r = R.data() + i * C;
          if (sub_logq) {
            for (Index j = j0; j < j1; ++j) r[j] = (r[j] + bj[j]) - lj[j];
          } else {
            for (Index j = j0; j < j1; ++j) r[j] += bj[j];
          }
        }
      }, 64);
      parallel_for(n, nt, [&](Index i0, Index i1) {
        for (Index i = i0; i < i1; ++i) {
          T* g = dR.data() + i * C;
          rowloss[i] = loss_row(cfg, C, pos[i], R.data() + i * C, g, sc1.data() + i * C,
                                sc2.data() + i * C);
          for (Index j = 0; j < C; ++j) g[j] *= inv_batch;
        }
      });
      for (Index i = 0; i < n; ++i) wloss += double(rowloss[i]) * double(inv_batch);
      CMapR<T> DR(dR.data(), n, C);
      // dYa = dR·O and dO = dRᵀ·Ya (the same flops) in one loop: its 2·nt tasks are nt pieces
      // of dYa's hidden columns, then nt pieces of dO's score columns; a chunk runs its
      // consecutive pieces of one product as one product (at 2 threads: one thread each).
      const Index q = nt;
      parallel_for(2 * q, nt, [&](Index u0, Index u1) {
        if (u0 < q) {  // dYa, hidden columns of pieces [u0, min(u1, q))
          const Index c0 = u0 * HL / q, c1 = std::min(u1, q) * HL / q;
          if (c1 > c0) {
            product(cfg.bf16, MapR<T>(dYa.data(), n, HL).middleCols(c0, c1 - c0), DR,
                    OM.middleCols(c0, c1 - c0));
          }
        }
        if (u1 > q) {  // dO (or the full-softmax W_y gradient), score columns
          const Index j0 = (std::max(u0, q) - q) * C / q, j1 = (u1 - q) * C / q;
          if (j1 <= j0) return;
          if (cfg.full_softmax) {
            product(cfg.bf16, MapR<T>(gWy_full.data(), N, HL).middleRows(j0, j1 - j0),
                    DR.middleCols(j0, j1 - j0).transpose(), YA, true);
          } else {
            product(cfg.bf16, MapR<T>(dO.data(), C, HL).middleRows(j0, j1 - j0),
                    DR.middleCols(j0, j1 - j0).transpose(), YA);
          }
          // column sums = bias gradients, row by row (vectorised; each column still sums its rows
          // in increasing order, as a column loop would)
          T* __restrict cs = sc1.data();
          for (Index j = j0; j < j1; ++j) cs[j] = T(0);
          for (Index i = 0; i < n; ++i) {
            const T* __restrict d = dR.data() + i * C;
            for (Index j = j0; j < j1; ++j) cs[j] += d[j];
          }
          if (cfg.full_softmax) {
            for (Index j = j0; j < j1; ++j) gby_full[j] += cs[j];
          }
        }
      });
      if (!cfg.full_softmax) {
        acc_y.assign(cols.data(), C, slots);
        // one score step per window (bptt 1) and no item features (which read contiguous
        // gradients): the rows' gradients stay in dO, which this window does not overwrite
        acc_y.add(slots, dO.data(), HL, nullptr, 0, nt, (Tn == 1 && !feat) ? dO.data() : nullptr);
        const Index r0 = n_by;
        n_by = acc_y.size();
        if (static_cast<Index>(g_by.size()) < n_by) g_by.resize(static_cast<size_t>(std::max(n_by, 2 * r0)));
        std::fill(g_by.begin() + r0, g_by.begin() + n_by, T(0));
        for (Index j = 0; j < C; ++j) g_by[slots[j]] += sc1[j];  // in column order
      }
      for (Index i = 0; i < n; ++i) {
        std::copy(dYa.data() + i * HL, dYa.data() + (i + 1) * HL,
                  dYtop.data() + (t * B + act[i]) * HL);
      }
    }
    if (!std::isfinite(wloss)) {
      res.non_finite = true;
      losses[k] = wloss;
      counts[k] = wcount;
      return res;  // nothing of this window is applied: the model stays finite
    }
    losses[k] = wloss;
    counts[k] = wcount;
    // 4. truncated BPTT through the stack (no gradient into the carried state: carry starts at 0),
    // with the optimizer update of each layer's W_x, W_h and b (the other tensors: step 6)
    OptConfig oc = cfg.opt;
    oc.step = cfg.opt.step + res.updates;
    const T* dOut = dYtop.data();
    for (Index l = L - 1; l >= 0; --l) {
      const Index H = m.H[l];
      LayerParams<T> lp{m.W_x[l].p, m.W_h[l].p, m.b[l].p, m.W_x[l].rows, H, cfg.bf16};
      LayerCache<const T> lc{h_in[l].data(), h_out[l].data(), gates[l].data(),
                             KC == Cell::LSTM ? c_in[l].data() : nullptr,
                             KC == Cell::LSTM ? c_out[l].data() : nullptr};
      carry.assign(static_cast<size_t>(B * H), T(0));
      if (KC == Cell::LSTM) carry_c.assign(static_cast<size_t>(B * H), T(0));
      const T* in = l == 0 ? X0.data() : h_out[l - 1].data();
      T* dIn_ptr = l == 0 ? (onehot ? nullptr : dX0.data()) : dIn[l].data();
      const T* dmask = ch.drop_hidden[l] ? ch.drop_hidden[l] + k * TB * H : nullptr;
      const bool idx_in = onehot && l == 0;
      // W_x, W_h and b are updated inside backward's weight-gradient loop (WeightUpdate)
      WeightUpdate<T> wu{oc,
                         idx_in ? nullptr : m.W_x[l].p, m.W_x[l].s1, m.W_x[l].s2,
                         m.W_h[l].p, m.W_h[l].s1, m.W_h[l].s2,
                         m.b[l].p, m.b[l].s1, m.b[l].s2};
      layer_backward<KC, T>(Tn, B, lp, in, idx_in ? xk : nullptr, rk, dmask, lc, dOut, carry.data(),
                            KC == Cell::LSTM ? carry_c.data() : nullptr, dIn_ptr, nullptr, nullptr,
                            db[l].data(), idx_in ? dA0.data() : nullptr, nt, /*want_dh0=*/false,
                            &wu);
      if (l > 0) dOut = dIn[l].data();
    }
    // 5. input-embedding gradients into their table rows
    if (onehot) {
      acc_in.assign(xk, TB, slots);
      acc_in.add(slots, dA0.data(), G * m.H[0], nullptr, 0, nt);
    } else if (m.embedding == Embedding::Separate) {
      acc_in.assign(xk, TB, slots);
      acc_in.add(slots, dX0.data(), I0, ch.drop_embed ? ch.drop_embed + k * TB * I0 : nullptr, I0, nt);
    } else if (cfg.full_softmax) {
      // constrained + full softmax: dense W_y gradient
      const T* dmask = ch.drop_embed ? ch.drop_embed + k * TB * I0 : nullptr;
      for (Index e = 0; e < TB; ++e) {
        if (xk[e] < 0) continue;
        T* g = gWy_full.data() + Index(xk[e]) * HL;
        for (Index j = 0; j < HL; ++j) g[j] += dX0[e * I0 + j] * (dmask ? dmask[e * I0 + j] : T(1));
      }
    } else {
      acc_y.assign(xk, TB, slots);
      acc_y.add(slots, dX0.data(), I0, ch.drop_embed ? ch.drop_embed + k * TB * I0 : nullptr, I0, nt);
    }
    // 6. optimizer updates of the other tensors, in one parallel loop (apply_updates)
    if (feat) {  // dP = F[rows]ᵀ·(summed gradients of the effective rows touched in the window)
      if (cfg.full_softmax) feature_grad(m.feat, nullptr, N, gWy_full.data(), dP.data(), fscratch, nt);
      else feature_grad(m.feat, acc_y.rows(), acc_y.size(), acc_y.grads(), dP.data(), fscratch, nt);
    }
    updates.clear();
    auto dense = [&](const Param<T>& P, const T* g, Index n) {
      updates.push_back({P.p, g, P.s1, P.s2, n});
    };
    auto lazy = [&](const Param<T>& P, RowAccum<T>& acc) {
      updates.push_back({P.p, nullptr, P.s1, P.s2, acc.size(), acc.width(), acc.rows(),
                         acc.grad_ptrs()});
    };
    if (feat) dense(m.P, dP.data(), m.feat.Fd * HL);
    if (cfg.full_softmax) {
      dense(m.W_y, gWy_full.data(), N * HL);
      dense(m.b_y, gby_full.data(), N);
    } else {
      lazy(m.W_y, acc_y);
      updates.push_back({m.b_y.p, g_by.data(), m.b_y.s1, m.b_y.s2, n_by, 1, acc_y.rows()});
    }
    if (onehot) lazy(m.W_x[0], acc_in);
    else if (m.embedding == Embedding::Separate) lazy(m.E_in, acc_in);
    apply_updates(oc, updates, nt);
    if (cfg.full_softmax) {
      std::fill(gWy_full.begin(), gWy_full.end(), T(0));
      std::fill(gby_full.begin(), gby_full.end(), T(0));
    }
    acc_y.clear();
    n_by = 0;
    acc_in.clear();
    res.updates += 1;
    // 7. carry the (dropped-out) last state into the next window
    for (Index l = 0; l < L; ++l) {
      const Index H = m.H[l];
      std::copy(h_out[l].data() + (Tn - 1) * B * H, h_out[l].data() + TB * H, h[l]);
      if (KC == Cell::LSTM) std::copy(c_out[l].data() + (Tn - 1) * B * H, c_out[l].data() + TB * H, c[l]);
    }
    res.windows_done = k + 1;
  }
  return res;
}

}  // namespace seqrec
