// topk.h: scoring queries against the whole item table, fused with what is done with the scores.
// Holds: score_rank_counts, the evaluation kernel: for each query row, the number of items whose
// score is > and >= the target item's score (DESIGN.md §3.4: ranks are counted, never sorted).
// Scores are y_j = h·W_y[j] + b_y[j], computed in blocks of queries against the full table in a
// thread-local buffer that is reused, so memory stays bounded and the table streams through cache
// once per query block. The target's score is read from the same product that scores every other
// item, so an item never compares unequal with itself through rounding.
// Parallel: over query blocks (each thread owns its buffer); deterministic for any thread count.
// That Eigen-blocked version serves float64; float32 goes through rank_counts_packed (below): register
// tiles against a packed table, no score buffer at all.
// Both take an optional exclusion list per query (leave-one-out evaluation removes the items a user
// interacted with before from the ranking): the distinct listed items other than the target are not
// counted. The packed path subtracts their counts afterwards, from scores computed by the same
// per-lane sum as the full pass (exclude_rank_counts_packed), so the correction is exact.
// Also: topk_scores, the serving kernel: per query the K best items by score, with exclusions and
// ties to the lower item index, fused with blocked scoring (no N-sized temporary per query; the
// table is read once per query block). Every score is computed by the same fixed-order dot
// product (dot_rows), whatever the blocking, so equal rows give bit-equal scores and ties are
// decided by index, never by rounding. Tables may be float32, bfloat16 bits (uint16) or int8 with
// per-row scales; the reduced ones are widened block by block into a small float buffer.
// Parallel: over items for a single query (each thread keeps its own top-K, merged at the end) and
// over queries for a batch.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <cmath>
#include <cstring>
#include <functional>
#include <type_traits>
#include <limits>
#include <utility>
#include <vector>

#include "parallel.h"
#include "types.h"

namespace seqrec {

// The distinct items of exclusion row q (entries < 0 are padding) other than skip, sorted.
inline void exclusion_set(const std::int32_t* row, Index m, std::int32_t skip,
                          std::vector<std::int32_t>& out) {
  out.clear();
  for (Index e = 0; e < m; ++e) if (row[e] >= 0 && row[e] != skip) out.push_back(row[e]);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
}

// H (n, D) queries; W (N, D) item table; b (N) item bias; target (n) int32 in [0, N)
// exclude (n, m) int32 in [−1, N), −1 = padding, or null: items not counted (the target never is)
// gt, ge (n) out: #items scoring > / >= the target (among the items not excluded)
template <class T>
void score_rank_counts(Index n, Index N, Index D, const T* H, const T* W, const T* b,
                       const std::int32_t* target, std::int64_t* gt, std::int64_t* ge,
                       int num_threads, const std::int32_t* exclude = nullptr, Index m_ex = 0) {
  // Query block: enough rows to amortise streaming W, a buffer of at most ~4M scores.
  const Index qb = std::max<Index>(1, std::min<Index>(64, (Index(1) << 22) / std::max<Index>(N, 1)));
  const Index n_blocks = (n + qb - 1) / qb;
  CMapR<T> Wm(W, N, D);
  CVecMap<T> bias(b, N);
  parallel_for(n_blocks, num_threads, [&](Index k0, Index k1) {
    MatR<T> S(qb, N);
    std::vector<std::int32_t> ex;
    for (Index k = k0; k < k1; ++k) {
      const Index r0 = k * qb, m = std::min(qb, n - r0);
      auto Sm = S.topRows(m);
      Sm.noalias() = CMapR<T>(H + r0 * D, m, D) * Wm.transpose();
      Sm.rowwise() += bias;
      for (Index i = 0; i < m; ++i) {
        const T* s = S.data() + i * N;
        const T t = s[target[r0 + i]];
        std::int64_t g = 0, e = 0;
        for (Index j = 0; j < N; ++j) {
          g += s[j] > t;
          e += s[j] >= t;
        }
        Index n_ex = 0;
        if (exclude) {
          exclusion_set(exclude + (r0 + i) * m_ex, m_ex, target[r0 + i], ex);
          n_ex = static_cast<Index>(ex.size());
          for (const std::int32_t j : ex) {
            g -= s[j] > t;
            e -= s[j] >= t;
          }
        }
        const bool nan = !(t == t);  // a NaN target ranks last, as in rank_counts_packed
        gt[r0 + i] = nan ? N - n_ex : g;
        ge[r0 + i] = nan ? N - n_ex : e;
      }
    }
  });
}


// ---------------------------------------------------------------------------------------------
// Serving top-k

enum class TableKind { F32 = 0, BF16 = 1, I8 = 2 };

// Dot products of MQ query rows with MI item rows, each in one fixed order: packets over d
// accumulated with pmadd in increasing d, one horizontal sum, then the scalar tail in order.
// out[q * ld + i] = <h_q, w_i>.
template <int MQ, int MI>
inline void dot_rows(const float* const* h, const float* const* w, Index D, float* out, Index ld) {
  using P = typename Eigen::internal::packet_traits<float>::type;
  constexpr Index PS = Eigen::internal::unpacket_traits<P>::size;
  P acc[MQ][MI];
  for (int q = 0; q < MQ; ++q)
    for (int i = 0; i < MI; ++i) acc[q][i] = Eigen::internal::pset1<P>(0.f);
  Index d = 0;
  for (; d + PS <= D; d += PS) {
    P hv[MQ];
    for (int q = 0; q < MQ; ++q) hv[q] = Eigen::internal::ploadu<P>(h[q] + d);
    for (int i = 0; i < MI; ++i) {
      const P wv = Eigen::internal::ploadu<P>(w[i] + d);
      for (int q = 0; q < MQ; ++q) acc[q][i] = Eigen::internal::pmadd(hv[q], wv, acc[q][i]);
    }
  }
  for (int q = 0; q < MQ; ++q) {
    for (int i = 0; i < MI; ++i) {
      float s = Eigen::internal::predux(acc[q][i]);
      for (Index e = d; e < D; ++e) s += h[q][e] * w[i][e];
      out[q * ld + i] = s;
    }
  }
}

// The K best (score, index) pairs seen so far; "better" = higher score, then lower index.
class TopKHeap {
 public:
  explicit TopKHeap(Index k) : k_(k) { heap_.reserve(static_cast<size_t>(k)); }
  static bool better(const std::pair<float, std::int32_t>& a, const std::pair<float, std::int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  }
  // Items must be offered in increasing index within one heap for the fast threshold test.
  inline void offer(float s, std::int32_t j) {
    if (!(s == s)) return;  // NaN scores are never recommended
    if (static_cast<Index>(heap_.size()) < k_) {
      heap_.emplace_back(s, j);
      std::push_heap(heap_.begin(), heap_.end(), better);
      if (static_cast<Index>(heap_.size()) == k_) thr_ = heap_.front().first;
    } else if (s > thr_) {
      std::pop_heap(heap_.begin(), heap_.end(), better);
      heap_.back() = {s, j};
      std::push_heap(heap_.begin(), heap_.end(), better);
      thr_ = heap_.front().first;
    }
  }
  float threshold() const { return static_cast<Index>(heap_.size()) < k_ ? -INFINITY : thr_; }
  std::vector<std::pair<float, std::int32_t>>& items() { return heap_; }

 private:
  Index k_;
  float thr_ = -INFINITY;
  std::vector<std::pair<float, std::int32_t>> heap_;
};

struct ItemTable {
  TableKind kind;
  bool packed = false;   // (ceil(N/16), D, 16) blocks instead of (N, D) rows
  const void* data;      // (N, D) float32 / uint16 bfloat16 bits / int8
  const float* scales;   // (N) for int8
  const float* bias;     // (N)
  Index N, D;
};

// Widens rows [j0, j0 + m) of a reduced table into buf (m, D) float32.
inline void widen_rows(const ItemTable& t, Index j0, Index m, float* buf) {
  const Index n = m * t.D;
  if (t.kind == TableKind::BF16) {
    const std::uint16_t* src = static_cast<const std::uint16_t*>(t.data) + j0 * t.D;
    for (Index e = 0; e < n; ++e) {
      const std::uint32_t u = std::uint32_t(src[e]) << 16;
      std::memcpy(buf + e, &u, sizeof(float));
    }
  } else {
    const std::int8_t* src = static_cast<const std::int8_t*>(t.data) + j0 * t.D;
    for (Index e = 0; e < n; ++e) buf[e] = static_cast<float>(src[e]);
  }
}

// Scores items [j0, j1) for MQ queries and offers them to their heaps. ex[q]/ex_end[q]: sorted
// exclusions of each query, advanced as items pass.
template <int MQ>
void scan_items(const ItemTable& t, const float* const* h, Index j0, Index j1, TopKHeap** heaps,
                const std::int32_t** ex, const std::int32_t* const* ex_end, std::vector<float>& wbuf) {
  constexpr Index BLK = 64;
  alignas(64) float sc[MQ * 4];
  for (Index b0 = j0; b0 < j1; b0 += BLK) {
    const Index m = std::min(BLK, j1 - b0);
    const float* rows;
    if (t.kind == TableKind::F32) {
      rows = static_cast<const float*>(t.data) + b0 * t.D;
    } else {
      widen_rows(t, b0, m, wbuf.data());
      rows = wbuf.data();
    }
    for (Index i0 = 0; i0 < m; i0 += 4) {
      const Index mi = std::min<Index>(4, m - i0);
      const float* w[4];
      for (Index i = 0; i < mi; ++i) w[i] = rows + (i0 + i) * t.D;
      if (mi == 4) dot_rows<MQ, 4>(h, w, t.D, sc, 4);
      else for (Index i = 0; i < mi; ++i) dot_rows<MQ, 1>(h, w + i, t.D, sc + i, 4);
      for (Index i = 0; i < mi; ++i) {
        const Index j = b0 + i0 + i;
        const float scale = t.kind == TableKind::I8 ? t.scales[j] : 1.f;
        for (int q = 0; q < MQ; ++q) {
          while (ex[q] != ex_end[q] && *ex[q] < j) ++ex[q];
          if (ex[q] != ex_end[q] && *ex[q] == j) continue;
          float s = sc[q * 4 + i];
          if (t.kind == TableKind::I8) s *= scale;
          heaps[q]->offer(s + t.bias[j], static_cast<std::int32_t>(j));
        }
      }
    }
  }
}


// ---------------------------------------------------------------------------------------------
// Packed tables: items in blocks of 16, laid out (block, d, 16), so one query's scores for 16 items
// are 16 independent sums over d (a broadcast of h[d] times 16 contiguous weights): no horizontal
// reductions, the table streamed once, and every score summed in the same order. Made once when a
// model is loaded for serving (pack_table), for float32, bfloat16 or int8 tables.

constexpr Index PACK = 16;

// src (N, D) row-major of type S -> dst (ceil(N/16), D, 16), zero-padded.
template <class S>
void pack_rows(const S* src, Index N, Index D, S* dst) {
  const Index nb = (N + PACK - 1) / PACK;
  std::fill(dst, dst + nb * D * PACK, S(0));
  for (Index j = 0; j < N; ++j) {
    const Index b = j / PACK, l = j % PACK;
    for (Index d = 0; d < D; ++d) dst[(b * D + d) * PACK + l] = src[j * D + d];
  }
}

template <TableKind KT>
inline void widen16(const void* p, float* out) {
  if constexpr (KT == TableKind::F32) {
    std::memcpy(out, p, PACK * sizeof(float));
  } else if constexpr (KT == TableKind::BF16) {
    const std::uint16_t* s = static_cast<const std::uint16_t*>(p);
    for (Index l = 0; l < PACK; ++l) {
      const std::uint32_t u = std::uint32_t(s[l]) << 16;
      std::memcpy(out + l, &u, sizeof(float));
    }
  } else {
    const std::int8_t* s = static_cast<const std::int8_t*>(p);
    for (Index l = 0; l < PACK; ++l) out[l] = static_cast<float>(s[l]);
  }
}

// Loads the 16 weights of one dimension of a packed block as float packets. Reduced types are
// widened with SIMD conversions where the build has them (exact: bf16 bits shifted, int8 -> int32
// -> float), else through a small buffer.
template <TableKind KT, class P, Index NP>
inline void load16(const char* p, P* wv) {
  constexpr Index PS = Eigen::internal::unpacket_traits<P>::size;
  if constexpr (KT == TableKind::F32) {
    for (Index v = 0; v < NP; ++v) wv[v] = Eigen::internal::ploadu<P>(reinterpret_cast<const float*>(p) + v * PS);
#if defined(__AVX512F__)
  } else if constexpr (PS == 16 && KT == TableKind::BF16) {
    const __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    wv[0] = _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
  } else if constexpr (PS == 16 && KT == TableKind::I8) {
    wv[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#endif
#if defined(__AVX2__)
  } else if constexpr (PS == 8 && KT == TableKind::BF16) {
    for (Index v = 0; v < 2; ++v) {
      const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + v * 16)));
      wv[v] = _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
    }
  } else if constexpr (PS == 8 && KT == TableKind::I8) {
    for (Index v = 0; v < 2; ++v) {
      wv[v] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + v * 8))));
    }
#endif
  } else {
    alignas(64) float w[PACK];
    widen16<KT>(p, w);
    for (Index v = 0; v < NP; ++v) wv[v] = Eigen::internal::ploadu<P>(w + v * PS);
  }
}

// Software prefetch distance of the single-query scan, per stream (8 cache lines).
constexpr std::size_t PREFETCH_BYTES = 512;

// Scores of MQ queries for the MB·16 items of packed blocks [b, b + MB): out[q * MB·16 + l].
// MQ·MB·NP independent accumulators hide the FMA latency; each item's sum still runs over d in
// order, so a score does not depend on MQ or MB.
template <TableKind KT, int MQ, int MB>
inline void score_block(const ItemTable& t, Index b, const float* const* h, float* out) {
  using P = typename Eigen::internal::packet_traits<float>::type;
  constexpr Index PS = Eigen::internal::unpacket_traits<P>::size;
  constexpr Index NP = PACK / PS;
  static_assert(PACK % PS == 0, "packet size must divide 16");
  const Index D = t.D;
  constexpr std::size_t esz = KT == TableKind::F32 ? 4 : (KT == TableKind::BF16 ? 2 : 1);
  const std::size_t bstride = std::size_t(D) * PACK * esz;
  const char* base = static_cast<const char*>(t.data) + std::size_t(b) * bstride;
  P acc[MQ][MB][NP];
  for (int q = 0; q < MQ; ++q)
    for (int m = 0; m < MB; ++m)
      for (Index v = 0; v < NP; ++v) acc[q][m][v] = Eigen::internal::pset1<P>(0.f);
  for (Index d = 0; d < D; ++d) {
    P wv[MB][NP];
#if defined(__GNUC__)
    if constexpr (MQ == 1) {
      // One query streams MB interleaved block streams from L3 / memory with nothing to reuse: ask
      // for each stream's line PREFETCH_BYTES ahead. Hardware prefetchers stop at 4 KB pages and a
      // block is D·64 bytes (6.4 KB at D = 100), so each stream restarts their ramp once a block.
      const std::size_t off = std::size_t(d) * PACK * esz;
      if (off % 64 == 0)
        for (int m = 0; m < MB; ++m) __builtin_prefetch(base + m * bstride + off + PREFETCH_BYTES, 0, 3);
    }
#endif
    for (int m = 0; m < MB; ++m) load16<KT, P, NP>(base + m * bstride + std::size_t(d) * PACK * esz, wv[m]);
    for (int q = 0; q < MQ; ++q) {
      const P hv = Eigen::internal::pset1<P>(h[q][d]);
      for (int m = 0; m < MB; ++m)
        for (Index v = 0; v < NP; ++v) acc[q][m][v] = Eigen::internal::pmadd(hv, wv[m][v], acc[q][m][v]);
    }
  }
  for (int q = 0; q < MQ; ++q)
    for (int m = 0; m < MB; ++m)
      for (Index v = 0; v < NP; ++v)
        Eigen::internal::pstoreu(out + q * MB * PACK + m * PACK + v * PS, acc[q][m][v]);
}

// The register tile of the batched packed kernels: MQ queries x MB blocks of 16 items, sized so
// that MQ*MB*(16/PS) accumulators hide the FMA latency and fit the register file with the
// broadcast and the weight packets (AVX-512: 6 x 4 = 24 of 32 zmm, measured best of 8x2, 12x2, 6x4
// and 4x6; AVX2: 8 of 16 ymm; SSE2: 8 of 16 xmm).
struct PackedTile {
  static constexpr Index PS = Eigen::internal::unpacket_traits<
      typename Eigen::internal::packet_traits<float>::type>::size;
  static constexpr int MQ = PS >= 16 ? 6 : (PS == 8 ? 4 : 2);
  static constexpr int MB = PS >= 16 ? 4 : 1;
};

// Bytes of one packed block (16 items x D) of a table.
inline std::size_t packed_block_bytes(const ItemTable& t) {
  const std::size_t esz = t.kind == TableKind::F32 ? 4 : (t.kind == TableKind::BF16 ? 2 : 1);
  return std::size_t(t.D) * PACK * esz;
}

// Blocks per cache tile of the batched kernels: about 192 KB of table, so that a tile stays in L2
// while every query group of a thread is scored against it; a multiple of MB.
inline Index packed_tile_blocks(const ItemTable& t, int MB) {
  const Index b = std::max<Index>(MB, Index((192u << 10) / std::max<std::size_t>(1, packed_block_bytes(t))));
  return b - b % MB;
}

// The final score of an item from its raw dot product: the same two operations everywhere.
template <TableKind KT>
inline float finish_score(const ItemTable& t, float dot, Index j) {
  if constexpr (KT == TableKind::I8) return dot * t.scales[j] + t.bias[j];
  else return dot + t.bias[j];
}

// The largest of s[0 .. m), ignoring NaNs (−inf if none), in packets: a scalar `a > b ? a : b`
// chain cannot be vectorised under strict IEEE semantics and cost as much as the scoring did.
inline float block_max(const float* s, Index m) {
  using P = typename Eigen::internal::packet_traits<float>::type;
  constexpr Index PS = Eigen::internal::unpacket_traits<P>::size;
  Index l = 0;
  float best = -INFINITY;
  if (m >= PS) {
    P a = Eigen::internal::pset1<P>(-INFINITY);
    for (; l + PS <= m; l += PS) {
      a = Eigen::internal::pmax<Eigen::PropagateNumbers>(a, Eigen::internal::ploadu<P>(s + l));
    }
    best = Eigen::internal::predux_max<Eigen::PropagateNumbers>(a);
  }
  for (; l < m; ++l) best = s[l] > best ? s[l] : best;
  return best;
}

// Offers the scores of packed blocks [b0, b1) for MQ queries to their heaps.
template <TableKind KT, int MQ, int MB = (MQ == 1 ? 4 : 1)>
void scan_packed(const ItemTable& t, const float* const* h, Index b0, Index b1, TopKHeap** heaps,
                 const std::int32_t** ex, const std::int32_t* const* ex_end) {
  // one query: 4 blocks per pass; several queries: their own accumulators suffice
  alignas(64) float sc[MQ * MB * PACK];
  for (Index b = b0; b < b1; b += MB) {
    const Index mb = std::min<Index>(MB, b1 - b);
    if (mb == MB) {
      score_block<KT, MQ, MB>(t, b, h, sc);
    } else {
      float one[MQ * PACK];
      for (Index m = 0; m < mb; ++m) {
        score_block<KT, MQ, 1>(t, b + m, h, one);
        for (int q = 0; q < MQ; ++q)
          std::copy(one + q * PACK, one + (q + 1) * PACK, sc + q * MB * PACK + m * PACK);
      }
    }
    const Index j0 = b * PACK, m = std::min(mb * PACK, t.N - j0);
    for (int q = 0; q < MQ; ++q) {
      float* s = sc + q * MB * PACK;
      // final scores first (a loop the compiler vectorises), then a cheap scan for candidates
      for (Index l = 0; l < m; ++l) s[l] = finish_score<KT>(t, s[l], j0 + l);
      float thr = heaps[q]->threshold();
      if (!(block_max(s, m) >= thr)) continue;  // nothing in these blocks can enter (NaN-safe)
      for (Index l = 0; l < m; ++l) {
        if (!(s[l] >= thr)) continue;  // cannot enter (also drops NaN); exclusions checked after
        const Index j = j0 + l;
        while (ex[q] != ex_end[q] && *ex[q] < j) ++ex[q];
        if (ex[q] != ex_end[q] && *ex[q] == j) continue;
        heaps[q]->offer(s[l], static_cast<std::int32_t>(j));
        thr = heaps[q]->threshold();
      }
    }
  }
}

// The parallel structure shared by both table layouts. `units` are what a scan walks (items for
// row-major tables, 16-item blocks for packed ones; `unit` items each). scan(q_count, h, u0, u1,
// heaps, ex, ex_end, scratch) offers units [u0, u1) of MQ = q_count ∈ {1, 4} queries to their heaps.
template <class Scan>
void topk_drive(Index n, Index units, Index unit, Index D, const float* H, Index kk,
                const std::vector<std::vector<std::int32_t>>& ex,
                const std::function<void(Index, std::vector<std::pair<float, std::int32_t>>&)>& write,
                int num_threads, Scan&& scan) {
  using Cands = std::vector<std::pair<float, std::int32_t>>;
  if (n < num_threads) {
    // few queries: split the units across threads, merge the per-thread heaps
    for (Index q = 0; q < n; ++q) {
      const int p = static_cast<int>(std::min<Index>(num_threads, std::max<Index>(1, units * unit / 512)));
      std::vector<Cands> parts(static_cast<size_t>(p));
      parallel_for(p, p, [&](Index a0, Index a1) {
        std::vector<float> scratch;
        for (Index a = a0; a < a1; ++a) {
          const Index u0 = a * units / p, u1 = (a + 1) * units / p;
          TopKHeap heap(kk);
          TopKHeap* hp = &heap;
          const float* hq = H + q * D;
          const std::int32_t* e0 = std::lower_bound(ex[q].data(), ex[q].data() + ex[q].size(),
                                                    std::int32_t(u0 * unit));
          const std::int32_t* ee = ex[q].data() + ex[q].size();
          scan(1, &hq, u0, u1, &hp, &e0, &ee, scratch);
          parts[a] = std::move(heap.items());
        }
      });
      Cands all;
      for (auto& v : parts) all.insert(all.end(), v.begin(), v.end());
      write(q, all);
    }
    return;
  }
  // a batch: parallel over groups of 4 queries, each group streams the table once
  parallel_for((n + 3) / 4, num_threads, [&](Index g0, Index g1) {
    std::vector<float> scratch;
    for (Index g = g0; g < g1; ++g) {
      const Index q0 = g * 4, mq = std::min<Index>(4, n - q0);
      std::vector<TopKHeap> heaps;
      heaps.reserve(4);
      TopKHeap* hp[4];
      const float* hq[4];
      const std::int32_t* e0[4];
      const std::int32_t* ee[4];
      for (Index q = 0; q < mq; ++q) {
        heaps.emplace_back(kk);
        hq[q] = H + (q0 + q) * D;
        e0[q] = ex[q0 + q].data();
        ee[q] = ex[q0 + q].data() + ex[q0 + q].size();
      }
      for (Index q = 0; q < mq; ++q) hp[q] = &heaps[q];
      if (mq == 4) scan(4, hq, 0, units, hp, e0, ee, scratch);
      else for (Index q = 0; q < mq; ++q) scan(1, hq + q, 0, units, hp + q, e0 + q, ee + q, scratch);
      for (Index q = 0; q < mq; ++q) write(q0 + q, heaps[q].items());
    }
  });
}

// A batch of queries against a packed table (n >= threads): parallel over groups of MQ queries;
// each thread walks the table in L2-sized tiles and scores all of its query groups against a tile
// before moving on, so the table streams from memory once per thread instead of once per group.
// Results do not depend on the tiling: every score is the same sum, heaps order by (score, index).
template <TableKind KT>
void topk_packed_batch(const ItemTable& t, Index n, const float* H, Index kk,
                       const std::vector<std::vector<std::int32_t>>& ex,
                       const std::function<void(Index, std::vector<std::pair<float, std::int32_t>>&)>& write,
                       int num_threads) {
  constexpr int MQ = PackedTile::MQ, MB = PackedTile::MB;
  const Index nb = (t.N + PACK - 1) / PACK;
  const Index tile = packed_tile_blocks(t, MB);
  const Index groups = (n + MQ - 1) / MQ;
  parallel_for(groups, num_threads, [&](Index g0, Index g1) {
    const Index q0 = g0 * MQ, q1 = std::min(n, g1 * MQ), nq = q1 - q0;
    std::vector<TopKHeap> heaps;
    heaps.reserve(static_cast<size_t>(nq));
    std::vector<TopKHeap*> hp(static_cast<size_t>(nq));
    std::vector<const float*> hq(static_cast<size_t>(nq));
    std::vector<const std::int32_t*> e0(static_cast<size_t>(nq)), ee(static_cast<size_t>(nq));
    for (Index q = 0; q < nq; ++q) {
      heaps.emplace_back(kk);
      hq[q] = H + (q0 + q) * t.D;
      e0[q] = ex[q0 + q].data();
      ee[q] = ex[q0 + q].data() + ex[q0 + q].size();
    }
    for (Index q = 0; q < nq; ++q) hp[q] = &heaps[q];
    for (Index b0 = 0; b0 < nb; b0 += tile) {
      const Index b1 = std::min(nb, b0 + tile);
      for (Index qa = 0; qa < nq; qa += MQ) {
        if (qa + MQ <= nq) {
          scan_packed<KT, MQ, MB>(t, &hq[qa], b0, b1, &hp[qa], &e0[qa], &ee[qa]);
        } else {
          for (Index q = qa; q < nq; ++q) scan_packed<KT, 1>(t, &hq[q], b0, b1, &hp[q], &e0[q], &ee[q]);
        }
      }
    }
    for (Index q = 0; q < nq; ++q) write(q0 + q, heaps[q].items());
  });
}

// Rank counts against a packed table: per query, the items whose score is > and >= the score of
// its target item. The target's score is computed by the same per-lane sum as every other item's
// (score_block on the target's block), so an item never compares unequal with itself. A NaN target
// score counts as the worst possible: gt = ge = N. NaN item scores never count as above.
// Parallel over contiguous ranges of item blocks (each thread its own counters, summed after;
// integer sums, so the result does not depend on the thread count); within a range the table is
// walked in L2-sized tiles, every query group scored against a tile before the next.
template <TableKind KT>
void rank_counts_packed(const ItemTable& t, Index n, const float* H, const std::int32_t* target,
                        std::int64_t* gt, std::int64_t* ge, int num_threads) {
  if (n <= 0) return;
  constexpr int MQ = PackedTile::MQ, MB = PackedTile::MB;
  const Index N = t.N, D = t.D, nb = (N + PACK - 1) / PACK;
  std::vector<float> ts(static_cast<size_t>(n));
  for (Index q = 0; q < n; ++q) {
    alignas(64) float one[PACK];
    const float* hq = H + q * D;
    const Index j = target[q];
    score_block<KT, 1, 1>(t, j / PACK, &hq, one);
    ts[q] = finish_score<KT>(t, one[j % PACK], j);
  }
  const Index tile = packed_tile_blocks(t, MB);
  // parts: enough work per thread (at least ~64 blocks), at most one per thread
  const int p = static_cast<int>(std::max<Index>(1, std::min<Index>(num_threads, nb / 64)));
  std::vector<std::vector<std::int64_t>> cg(static_cast<size_t>(p)), ce(static_cast<size_t>(p));
  parallel_for(p, p, [&](Index a0, Index a1) {
    alignas(64) float sc[MQ * MB * PACK];
    for (Index a = a0; a < a1; ++a) {
      std::vector<std::int64_t>& g = cg[a];
      std::vector<std::int64_t>& e = ce[a];
      g.assign(static_cast<size_t>(n), 0);
      e.assign(static_cast<size_t>(n), 0);
      const Index pb0 = a * nb / p, pb1 = (a + 1) * nb / p;
      // counts the scores sc[qq * ld + l], l < m, of items j0 + l for query q
      auto count = [&](Index q, const float* s, Index j0, Index m) {
        const float tq = ts[q];
        std::int32_t cg_ = 0, ce_ = 0;
        for (Index l = 0; l < m; ++l) {
          const float v = finish_score<KT>(t, s[l], j0 + l);
          cg_ += v > tq;
          ce_ += v >= tq;
        }
        g[q] += cg_;
        e[q] += ce_;
      };
      for (Index t0 = pb0; t0 < pb1; t0 += tile) {
        const Index t1 = std::min(pb1, t0 + tile);
        for (Index qa = 0; qa < n; qa += MQ) {
          const Index mq = std::min<Index>(MQ, n - qa);
          const float* hq[MQ];
          for (Index q = 0; q < mq; ++q) hq[q] = H + (qa + q) * D;
          for (Index b = t0; b < t1; b += MB) {
            const Index mb = std::min<Index>(MB, t1 - b);
            if (mq == MQ && mb == MB) {
              score_block<KT, MQ, MB>(t, b, hq, sc);
              const Index j0 = b * PACK, m = std::min<Index>(MB * PACK, N - j0);
              for (Index q = 0; q < MQ; ++q) count(qa + q, sc + q * MB * PACK, j0, m);
            } else {
              for (Index q = 0; q < mq; ++q) {
                for (Index bb = b; bb < b + mb; ++bb) {
                  score_block<KT, 1, 1>(t, bb, &hq[q], sc);
                  const Index j0 = bb * PACK;
                  count(qa + q, sc, j0, std::min<Index>(PACK, N - j0));
                }
              }
            }
          }
        }
      }
    }
  });
  for (Index q = 0; q < n; ++q) {
    std::int64_t g = 0, e = 0;
    for (int a = 0; a < p; ++a) {
      g += cg[a][q];
      e += ce[a][q];
    }
    const bool nan = !(ts[q] == ts[q]);
    gt[q] = nan ? N : g;
    ge[q] = nan ? N : e;
  }
}

// Removes excluded items from rank counts computed by rank_counts_packed: per query, each distinct
// listed item other than the target is scored by the same per-lane sum (score_block on its block)
// and its contribution subtracted; a NaN target (gt = ge = N) becomes N − #excluded.
//   H (n, D); target (n); exclude (n, m) int32, −1 padding; gt, ge (n) in/out
// Parallel over queries.
template <TableKind KT>
void exclude_rank_counts_packed(const ItemTable& t, Index n, const float* H,
                                const std::int32_t* target, const std::int32_t* exclude, Index m_ex,
                                std::int64_t* gt, std::int64_t* ge, int num_threads) {
  if (n <= 0 || m_ex <= 0) return;
  parallel_for(n, num_threads, [&](Index q0, Index q1) {
    std::vector<std::int32_t> ex;
    alignas(64) float one[PACK];
    for (Index q = q0; q < q1; ++q) {
      exclusion_set(exclude + q * m_ex, m_ex, target[q], ex);
      if (ex.empty()) continue;
      const float* hq = H + q * t.D;
      const Index j = target[q];
      score_block<KT, 1, 1>(t, j / PACK, &hq, one);
      const float tq = finish_score<KT>(t, one[j % PACK], j);
      if (!(tq == tq)) {
        gt[q] -= static_cast<std::int64_t>(ex.size());
        ge[q] -= static_cast<std::int64_t>(ex.size());
        continue;
      }
      Index blk = -1;
      std::int64_t dg = 0, de = 0;
      for (const std::int32_t e : ex) {  // sorted: each block is scored once
        if (e / PACK != blk) {
          blk = e / PACK;
          score_block<KT, 1, 1>(t, blk, &hq, one);
        }
        const float v = finish_score<KT>(t, one[e % PACK], e);
        dg += v > tq;
        de += v >= tq;
      }
      gt[q] -= dg;
      ge[q] -= de;
    }
  }, 16);
}

// H (n, D) queries; exclude (n, m) int32 padded with −1, or null; out idx/scores (n, kk).
inline void topk_scores(const ItemTable& t, Index n, const float* H, Index k,
                        const std::int32_t* exclude, Index m_ex, std::int32_t* out_idx,
                        float* out_sc, int num_threads) {
  const Index kk = std::min(k, t.N);
  std::vector<std::vector<std::int32_t>> ex(static_cast<size_t>(n));
  if (exclude) {
    for (Index q = 0; q < n; ++q) {
      for (Index e = 0; e < m_ex; ++e) if (exclude[q * m_ex + e] >= 0) ex[q].push_back(exclude[q * m_ex + e]);
      std::sort(ex[q].begin(), ex[q].end());
    }
  }
  const std::function<void(Index, std::vector<std::pair<float, std::int32_t>>&)> write =
      [&](Index q, std::vector<std::pair<float, std::int32_t>>& c) {
        std::sort(c.begin(), c.end(), TopKHeap::better);
        for (Index r = 0; r < kk; ++r) {
          const bool ok = r < static_cast<Index>(c.size());
          out_idx[q * kk + r] = ok ? c[r].second : -1;
          out_sc[q * kk + r] = ok ? c[r].first : -INFINITY;
        }
      };
  using Ex = const std::int32_t**;
  using ExEnd = const std::int32_t* const*;
  if (t.packed) {
    const Index nb = (t.N + PACK - 1) / PACK;
    auto run = [&](auto kind_tag) {
      constexpr TableKind KT = decltype(kind_tag)::value;
      if (n >= std::max<Index>(2, num_threads)) {
        topk_packed_batch<KT>(t, n, H, kk, ex, write, num_threads);
        return;
      }
      topk_drive(n, nb, PACK, t.D, H, kk, ex, write, num_threads,
                 [&](int mq, const float* const* h, Index u0, Index u1, TopKHeap** hp, Ex e0,
                     ExEnd ee, std::vector<float>&) {
                   if (mq == 4) scan_packed<KT, 4>(t, h, u0, u1, hp, e0, ee);
                   else scan_packed<KT, 1>(t, h, u0, u1, hp, e0, ee);
                 });
    };
    switch (t.kind) {
      case TableKind::F32: run(std::integral_constant<TableKind, TableKind::F32>{}); break;
      case TableKind::BF16: run(std::integral_constant<TableKind, TableKind::BF16>{}); break;
      default: run(std::integral_constant<TableKind, TableKind::I8>{}); break;
    }
    return;
  }
  const Index wbuf_size = t.kind == TableKind::F32 ? 0 : 64 * t.D;
  topk_drive(n, t.N, 1, t.D, H, kk, ex, write, num_threads,
             [&](int mq, const float* const* h, Index u0, Index u1, TopKHeap** hp, Ex e0, ExEnd ee,
                 std::vector<float>& wbuf) {
               wbuf.resize(static_cast<size_t>(wbuf_size));
               if (mq == 4) scan_items<4>(t, h, u0, u1, hp, e0, ee, wbuf);
               else scan_items<1>(t, h, u0, u1, hp, e0, ee, wbuf);
             });
}

}  // namespace seqrec
