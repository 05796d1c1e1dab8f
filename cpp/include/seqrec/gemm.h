// gemm.h: the bfloat16 matrix product of bf16 training (precision="bf16").
// Holds: gemm_bf16, C (+)= op(A)·op(B) with both operands rounded to bfloat16 (round to nearest
// even) and float32 accumulation, on AVX-512-BF16 (vdpbf16ps) register tiles; bf16_round, the
// rounding it uses (the NumPy twin is reference.bf16_round); bf16_available, whether this build and
// this CPU can run it.
// How: op(A) (M, K) is converted to bfloat16 pairs (k, k+1) per row; op(B) (K, N) is converted
// panel by panel (48 columns) into (K/2, 48) pairs; an 8×48 register tile accumulates with one
// vdpbf16ps per 16 columns and k-pair. Transposed operands are converted along their contiguous
// index and transposed into the pair layout 16×16 at a time in registers (transpose_u32). Every output element sums its k-pairs in increasing order,
// whatever M, N and the caller's split: results are bit-identical run to run and do not depend on
// the thread count.
// Not here: float32/float64 products (Eigen, at the call sites: on AVX-512 Eigen's GEBP reaches
// 200+ GFLOP/s per core at the training shapes, above OpenBLAS and MKL); threads (callers split
// columns or rows with parallel_for and call this single-threaded per chunk). AMX.
// Parallel: nothing in this header is parallel.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "types.h"

#if defined(__AVX512F__) && (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>
#define SEQREC_HAVE_BF16_KERNEL 1
#endif

namespace seqrec {

// float32 -> bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN.
inline std::uint16_t bf16_round(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

// Whether gemm_bf16 can run: compiled into this (avx512) variant and the CPU has AVX-512-BF16.
inline bool bf16_available() {
#ifdef SEQREC_HAVE_BF16_KERNEL
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
#else
  return false;
#endif
}

namespace detail {

// A strided float matrix view: element (i, j) at p[i*rs + j*cs].
struct FView {
  const float* p;
  Index rows, cols, rs, cs;
  float operator()(Index i, Index j) const { return p[i * rs + j * cs]; }
};

template <class E>
FView fview(const E& e) {
  const Index os = e.outerStride();
  if (e.innerStride() != 1) throw std::logic_error("gemm_bf16: operands need unit inner stride");
  if (E::IsRowMajor) return {e.data(), e.rows(), e.cols(), os, 1};
  return {e.data(), e.rows(), e.cols(), 1, os};
}

#ifdef SEQREC_HAVE_BF16_KERNEL
constexpr Index kMR = 8, kNR = 48;

#define SEQREC_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

// 16 floats -> 16 bf16 (RNE, as bf16_round) in the low halves of 16 uint32 lanes.
SEQREC_BF16_TARGET inline __m512i round16(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __m512i mag = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(mag, _mm512_set1_epi32(0x7f800000));
  const __m512i qn = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_mask_mov_epi32(r, nan, qn);
}

// Pairs (lo[i], hi[i]) of 16 lanes: lo in bits 0..15, hi in bits 16..31.
SEQREC_BF16_TARGET inline __m512i pair16(__m512 lo, __m512 hi) {
  return _mm512_or_si512(round16(lo), _mm512_slli_epi32(round16(hi), 16));
}

inline std::uint32_t pair1(float lo, float hi) {
  return std::uint32_t(bf16_round(lo)) | (std::uint32_t(bf16_round(hi)) << 16);
}

// out[kp * ld + j] = pair(V(2kp, j0 + j), V(2kp + 1, j0 + j)) for j < n (V's second index
// contiguous when V.cs == 1), zero past K.
SEQREC_BF16_TARGET inline void pack_pairs_cols(const FView& V, Index j0, Index n, std::uint32_t* out,
                                               Index ld) {
  const Index K = V.rows, K2 = (K + 1) / 2;
  for (Index kp = 0; kp < K2; ++kp) {
    const Index k = 2 * kp;
    const bool odd = k + 1 < K;
    std::uint32_t* o = out + kp * ld;
    Index j = 0;
    if (V.cs == 1) {
      const float* r0 = V.p + k * V.rs + j0;
      const float* r1 = r0 + V.rs;
      for (; j + 16 <= n; j += 16) {
        const __m512 lo = _mm512_loadu_ps(r0 + j);
        const __m512 hi = odd ? _mm512_loadu_ps(r1 + j) : _mm512_setzero_ps();
        _mm512_storeu_si512(o + j, pair16(lo, hi));
      }
    }
    for (; j < n; ++j) o[j] = pair1(V(k, j0 + j), odd ? V(k + 1, j0 + j) : 0.f);
  }
}

// dst[c * dld + r] = src[r * sld + c] for r < rows, c < cols: 16×16 blocks transposed in registers
// (unpack 32-bit, unpack 64-bit, two rounds of 128-bit lane shuffles), scalar at the edges.
SEQREC_BF16_TARGET inline void transpose_u32(const std::uint32_t* src, Index sld, Index rows, Index cols,
                                             std::uint32_t* dst, Index dld) {
  Index r0 = 0;
  for (; r0 + 16 <= rows; r0 += 16) {
    Index c0 = 0;
    for (; c0 + 16 <= cols; c0 += 16) {
      __m512i r[16], t[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(src + (r0 + i) * sld + c0);
      for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
      }
      for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
      }
      for (int i = 0; i < 4; ++i) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
      }
      for (int i = 0; i < 8; ++i) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
      }
      for (int i = 0; i < 16; ++i) _mm512_storeu_si512(dst + (c0 + i) * dld + r0, r[i]);
    }
    for (; c0 < cols; ++c0)
      for (Index i = 0; i < 16; ++i) dst[c0 * dld + r0 + i] = src[(r0 + i) * sld + c0];
  }
  for (; r0 < rows; ++r0)
    for (Index c = 0; c < cols; ++c) dst[c * dld + r0] = src[r0 * sld + c];
}

// out[kp * ld + j] as pack_pairs_cols, for V whose first index is contiguous (V.rs == 1): each of
// the n columns is converted along k, 16 at a time, into a row of a staging block, which is then
// transposed into place (transpose_u32).
SEQREC_BF16_TARGET inline void pack_pairs_rows(const FView& V, Index j0, Index n, std::uint32_t* out,
                                               Index ld, std::vector<std::uint32_t>& stage) {
  const Index K = V.rows, K2 = (K + 1) / 2;
  stage.resize(static_cast<size_t>(n * K2 + 16));
  for (Index j = 0; j < n; ++j) {
    const float* col = V.p + (j0 + j) * V.cs;  // V(k, j0 + j) = col[k]
    std::uint32_t* row = stage.data() + j * K2;
    Index kp = 0;
    // 32 consecutive floats -> 16 pairs
    const __m512i idx_lo = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i idx_hi = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for (; 2 * kp + 32 <= K; kp += 16) {
      const __m512 a = _mm512_loadu_ps(col + 2 * kp), b = _mm512_loadu_ps(col + 2 * kp + 16);
      const __m512 lo = _mm512_permutex2var_ps(a, idx_lo, b), hi = _mm512_permutex2var_ps(a, idx_hi, b);
      _mm512_storeu_si512(row + kp, pair16(lo, hi));
    }
    for (; kp < K2; ++kp) row[kp] = pair1(col[2 * kp], 2 * kp + 1 < K ? col[2 * kp + 1] : 0.f);
  }
  transpose_u32(stage.data(), K2, n, K2, out, ld);
}

// C tile (mr ≤ 8, nr ≤ 48) (+)= A pairs a[r * sa + kp] (r < 8, zero rows past mr) · B panel
// b[kp * 48 + j].
SEQREC_BF16_TARGET inline void tile_8x48(Index K2, const std::uint32_t* a, Index sa,
                                         const std::uint32_t* b, float* c, Index ldc, Index mr,
                                         Index nr, bool accumulate) {
  __m512 acc[kMR][3];
  for (int r = 0; r < kMR; ++r)
    for (int q = 0; q < 3; ++q) acc[r][q] = _mm512_setzero_ps();
  for (Index kp = 0; kp < K2; ++kp) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + kp * kNR);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + kp * kNR + 16);
    const __m512bh b2 = (__m512bh)_mm512_loadu_si512(b + kp * kNR + 32);
#define SEQREC_ROW(r)                                                                 \
  {                                                                                   \
    const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[(r) * sa + kp])); \
    acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);                                  \
    acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);                                  \
    acc[r][2] = _mm512_dpbf16_ps(acc[r][2], av, b2);                                  \
  }
    SEQREC_ROW(0) SEQREC_ROW(1) SEQREC_ROW(2) SEQREC_ROW(3)
    SEQREC_ROW(4) SEQREC_ROW(5) SEQREC_ROW(6) SEQREC_ROW(7)
#undef SEQREC_ROW
  }
  for (Index r = 0; r < mr; ++r) {
    float* cr = c + r * ldc;
    for (int q = 0; q < 3; ++q) {
      const Index j = 16 * q;
      if (j >= nr) break;
      const Index w = std::min<Index>(16, nr - j);
      const __mmask16 m = w == 16 ? __mmask16(0xffff) : __mmask16((1u << w) - 1u);
      __m512 v = acc[r][q];
      if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, cr + j));
      _mm512_mask_storeu_ps(cr + j, m, v);
    }
  }
}

// C (M, N) row-major with ldc; A, B strided views.
SEQREC_BF16_TARGET inline void gemm_bf16_impl(const FView& A, const FView& B, float* C, Index ldc,
                                              bool accumulate) {
  const Index M = A.rows, K = A.cols, N = B.cols, K2 = (K + 1) / 2;
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate)
      for (Index i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.f);
    return;
  }
  thread_local std::vector<std::uint32_t> ap, bp, tmp, ctmp;
  const Index Mp = (M + kMR - 1) / kMR * kMR;
  // A as rows of k-pairs: ap[i * K2 + kp], zero rows up to Mp.
  ap.assign(static_cast<size_t>(Mp * K2), 0u);
  if (A.cs == 1) {
    // row-major A: pairs of consecutive k of one row
    const __m512i idx_lo = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i idx_hi = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for (Index i = 0; i < M; ++i) {
      const float* row = A.p + i * A.rs;
      std::uint32_t* o = ap.data() + i * K2;
      Index kp = 0;
      for (; 2 * kp + 32 <= K; kp += 16) {
        const __m512 a = _mm512_loadu_ps(row + 2 * kp), b = _mm512_loadu_ps(row + 2 * kp + 16);
        _mm512_storeu_si512(o + kp, pair16(_mm512_permutex2var_ps(a, idx_lo, b),
                                           _mm512_permutex2var_ps(a, idx_hi, b)));
      }
      for (; kp < K2; ++kp) o[kp] = pair1(row[2 * kp], 2 * kp + 1 < K ? row[2 * kp + 1] : 0.f);
    }
  } else {
    // column-major A (contiguous along i): pairs from two k-columns, 16 rows at a time, written
    // transposed into ap through a (K2, M) staging block
    tmp.resize(static_cast<size_t>(K2 * M));
    const FView At{A.p, A.cols, A.rows, A.cs, A.rs};  // (K, M), At.cs == 1
    pack_pairs_cols(At, 0, M, tmp.data(), M);
    transpose_u32(tmp.data(), M, K2, M, ap.data(), K2);
  }
  bp.resize(static_cast<size_t>(K2 * kNR));
  for (Index j0 = 0; j0 < N; j0 += kNR) {
    const Index nr = std::min(kNR, N - j0);
    if (nr < kNR) std::fill(bp.begin(), bp.end(), 0u);
    if (B.cs == 1) pack_pairs_cols(B, j0, nr, bp.data(), kNR);
    else pack_pairs_rows(B, j0, nr, bp.data(), kNR, ctmp);
    for (Index i0 = 0; i0 < M; i0 += kMR) {
      tile_8x48(K2, ap.data() + i0 * K2, K2, bp.data(), C + i0 * ldc + j0, ldc,
                std::min(kMR, M - i0), nr, accumulate);
    }
  }
}
#undef SEQREC_BF16_TARGET
#endif  // SEQREC_HAVE_BF16_KERNEL

}  // namespace detail

// C (M, N) = op(A) (M, K) · op(B) (K, N), or C += ... with accumulate; operands rounded to bf16,
// float32 accumulation. C: a row-major Eigen block; A, B: Eigen blocks or their transposes with unit
// inner stride. Throws std::runtime_error where bf16_available() is false (callers check first).
template <class DC, class EA, class EB>
void gemm_bf16(DC&& C, const EA& A, const EB& B, bool accumulate) {
  static_assert(std::decay_t<DC>::IsRowMajor, "gemm_bf16: C must be row-major");
  static_assert(std::is_same<typename std::decay_t<DC>::Scalar, float>::value, "gemm_bf16: float only");
  if (A.rows() != C.rows() || B.cols() != C.cols() || A.cols() != B.rows())
    throw std::logic_error("gemm_bf16: shape mismatch");
#ifdef SEQREC_HAVE_BF16_KERNEL
  detail::gemm_bf16_impl(detail::fview(A), detail::fview(B), C.data(), C.outerStride(), accumulate);
#else
  (void)accumulate;
  throw std::runtime_error("bf16 products need the avx512 build of seqrec_fast on a CPU with AVX-512-BF16");
#endif
}

// C = A·B, or C += A·B with accumulate, in the training precision: gemm_bf16 where bf16 is set
// (float only; callers check bf16_available() first), else Eigen's product, unchanged.
template <class DC, class EA, class EB>
void product(bool bf16, DC&& C, const EA& A, const EB& B, bool accumulate = false) {
  if constexpr (std::is_same<typename std::decay_t<DC>::Scalar, float>::value) {
    if (bf16) {
      gemm_bf16(C, A, B, accumulate);
      return;
    }
  }
  if (accumulate) C.noalias() += A * B;
  else C.noalias() = A * B;
}

}  // namespace seqrec
