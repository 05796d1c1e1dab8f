// rank.h: re-ranking a given candidate list, and the one-step advance of a layer stack it is fused with.
// Holds: rank_candidates, which scores, per query, only its C candidate rows of the item table
// (y_j = h·W_y[j] + b_y[j], gathered dot products) and orders them: higher score first, NaN scores
// last, ties to the lower item index. stack_step, one recurrent step of an L-layer stack for n rows
// with the states updated in place (the step that step_rank fuses with rank_candidates; the same
// layer_forward call as the serving step of step_topk).
// Each candidate row is read whole (contiguous) with the rows ahead prefetched: the cost is the
// memory latency of C random rows, so several must be in flight. float32 scores use the same
// fixed-order dot product as the serving top-k over a row-major table (topk.h dot_rows), so they
// are bit-identical to it; float64 (tests, float64 models) uses Eigen's dot product.
// Not here: id mapping, unknown or duplicate candidates (callers map ids and drop duplicates; the
// bindings check every index), any limit on C (a caller's policy).
// Parallel: over queries, one query per thread; a single query (C up to a few thousand rows, a few
// microseconds) runs on one thread.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "parallel.h"
#include "sequence.h"
#include "topk.h"
#include "types.h"

namespace seqrec {

// The ranking order: higher score first, NaN after every number, then the lower item index.
template <class T>
inline bool rank_before(const std::pair<T, std::int32_t>& a, const std::pair<T, std::int32_t>& b) {
  const bool an = a.first != a.first, bn = b.first != b.first;
  if (an != bn) return bn;
  if (!an && a.first != b.first) return a.first > b.first;
  return a.second < b.second;
}

// Scores of one query's candidates.
//   h (D) query; W (N, D) item table; b (N) bias; cand (C) int32 in [0, N); out (C) scores
template <class T>
void score_candidates(const T* h, const T* W, const T* b, Index D, Index C, const std::int32_t* cand,
                      T* out) {
  // Rows are read whole and contiguously, and the rows a few candidates ahead are prefetched: the
  // candidates are random rows of a table that is usually far larger than the cache, so the time is
  // the memory latency unless several rows are in flight at once.
  constexpr Index AHEAD = 8;
  const Index lines = (D * Index(sizeof(T)) + 63) / 64;
  auto prefetch = [&](Index i) {
    if (i < C) {
      const char* p = reinterpret_cast<const char*>(W + Index(cand[i]) * D);
      for (Index l = 0; l < lines; ++l) __builtin_prefetch(p + 64 * l);
    }
  };
  for (Index i = 0; i < std::min(AHEAD, C); ++i) prefetch(i);
  if constexpr (std::is_same<T, float>::value) {
    // the same fixed-order dot product as the serving top-k over a row-major table (dot_rows)
    Index i = 0;
    for (; i + 4 <= C; i += 4) {
      for (Index a = 0; a < 4; ++a) prefetch(i + AHEAD + a);
      const float* w[4];
      for (Index a = 0; a < 4; ++a) w[a] = W + Index(cand[i + a]) * D;
      dot_rows<1, 4>(&h, w, D, out + i, 4);
    }
    for (; i < C; ++i) {
      const float* w = W + Index(cand[i]) * D;
      dot_rows<1, 1>(&h, &w, D, out + i, 1);
    }
    for (i = 0; i < C; ++i) out[i] += b[cand[i]];
  } else {
    CVecMap<T> hv(h, D);
    for (Index i = 0; i < C; ++i) {
      prefetch(i + AHEAD);
      const Index j = cand[i];
      out[i] = hv.dot(CVecMap<T>(W + j * D, D)) + b[j];
    }
  }
}

// H (n, D) queries; W (N, D) item table; b (N) bias; cand (n, C) int32 in [0, N), checked by the caller
// out_idx (n, C) the candidates of each query in ranking order; out_sc (n, C) their scores
template <class T>
void rank_candidates(Index n, Index D, const T* H, const T* W, const T* b, Index C,
                     const std::int32_t* cand, std::int32_t* out_idx, T* out_sc, int num_threads) {
  if (n <= 0 || C <= 0) return;
  parallel_for(n, num_threads, [&](Index q0, Index q1) {
    std::vector<T> sc(static_cast<size_t>(C));
    std::vector<std::pair<T, std::int32_t>> order;
    std::vector<std::uint64_t> keys;
    for (Index q = q0; q < q1; ++q) {
      const std::int32_t* cq = cand + q * C;
      score_candidates<T>(H + q * D, W, b, D, C, cq, sc.data());
      if constexpr (std::is_same<T, float>::value) {
        // one integer key per candidate, ascending = the ranking order: the float's bits made
        // monotone (NaN lowest), inverted for "higher first", then the item index. Sorting
        // integers is several times faster than sorting pairs with a comparator.
        keys.resize(static_cast<size_t>(C));
        for (Index i = 0; i < C; ++i) {
          std::uint32_t u;
          std::memcpy(&u, &sc[i], sizeof u);
          u = sc[i] != sc[i] ? 0u : ((u & 0x80000000u) ? ~u : (u | 0x80000000u));
          keys[i] = (std::uint64_t(~u) << 32) | std::uint32_t(cq[i]);
        }
        std::sort(keys.begin(), keys.end());
        for (Index i = 0; i < C; ++i) {
          std::uint32_t u = ~std::uint32_t(keys[i] >> 32);
          const std::int32_t j = static_cast<std::int32_t>(keys[i] & 0xffffffffu);
          out_idx[q * C + i] = j;
          if (u == 0u) {
            out_sc[q * C + i] = std::numeric_limits<float>::quiet_NaN();
            continue;
          }
          u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
          std::memcpy(&out_sc[q * C + i], &u, sizeof u);
        }
      } else {
        order.resize(static_cast<size_t>(C));
        for (Index i = 0; i < C; ++i) order[i] = {sc[i], cq[i]};
        std::sort(order.begin(), order.end(), rank_before<T>);
        for (Index i = 0; i < C; ++i) {
          out_idx[q * C + i] = order[i].second;
          out_sc[q * C + i] = order[i].first;
        }
      }
    }
  });
}

// One recurrent step of an L-layer stack for n rows, states updated in place.
//   params  L layers (LayerParams<T>)
//   X       (n, I_0) layer-0 input rows; ignored when x_idx is given
//   x_idx   (n) int32 item per row for the one-hot input (a = W_x[x] + b), or null
//   h       L pointers to (n, H_l) states, overwritten with the new states (h[L-1]: the output)
//   c       L pointers to (n, H_l) memory cells for lstm (overwritten), else ignored
template <Cell K, class T>
void stack_step(Index n, const std::vector<LayerParams<T>>& params, const T* X,
                const std::int32_t* x_idx, const std::vector<T*>& h, const std::vector<T*>& c,
                int num_threads) {
  constexpr int G = gate_count(K);
  const Index L = static_cast<Index>(params.size());
  std::vector<T> prev_out, out, gates, cin, cout;
  for (Index l = 0; l < L; ++l) {
    const Index H = params[l].H;
    std::vector<T> hin(static_cast<size_t>(n * H));
    out.assign(static_cast<size_t>(n * H), T(0));
    gates.assign(static_cast<size_t>(n * G * H), T(0));
    if (K == Cell::LSTM) {
      cin.assign(static_cast<size_t>(n * H), T(0));
      cout.assign(static_cast<size_t>(n * H), T(0));
    }
    LayerCache<T> lc{hin.data(), out.data(), gates.data(), K == Cell::LSTM ? cin.data() : nullptr,
                     K == Cell::LSTM ? cout.data() : nullptr};
    const T* in = l == 0 ? X : prev_out.data();
    layer_forward<K, T>(1, n, params[l], in, l == 0 ? x_idx : nullptr, h[l],
                        K == Cell::LSTM ? c[l] : nullptr, nullptr, nullptr, lc, num_threads);
    std::copy(out.begin(), out.end(), h[l]);
    if (K == Cell::LSTM) std::copy(cout.begin(), cout.end(), c[l]);
    prev_out.swap(out);
  }
}

}  // namespace seqrec
