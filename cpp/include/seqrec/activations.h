// activations.h: tanh, logistic and exp over contiguous spans, always through Eigen's packet path.
// Why: Eigen evaluates an unaligned span with a scalar head and tail around a vectorised middle, and
// its packet tanh/logistic/exp differ from the scalar std:: versions in the last bits. Which
// elements took which path would then depend on where NumPy allocated the array, and results would
// not be reproducible from run to run. Here every element goes through an aligned, fixed-size
// packet buffer (zero-padded at the end), so each value depends only on its input.
// Not parallel: callers run it on their own rows.
#pragma once

#include <Eigen/Core>
#include <algorithm>

#include "types.h"

namespace seqrec {

enum class Act { Tanh, Logistic, Exp };

// dst[i] = act(src[i]) for i < n; dst may equal src.
template <class T>
void activate(Act act, const T* src, T* dst, Index n) {
  constexpr Index K = 128;
  alignas(64) T buf[K];
  Eigen::Map<Eigen::Array<T, K, 1>, Eigen::Aligned64> m(buf);
  for (Index i0 = 0; i0 < n; i0 += K) {
    const Index k = std::min(K, n - i0);
    std::copy(src + i0, src + i0 + k, buf);
    std::fill(buf + k, buf + K, T(0));
    switch (act) {
      case Act::Tanh: m = m.tanh(); break;
      case Act::Logistic: m = m.logistic(); break;
      case Act::Exp: m = m.exp(); break;
    }
    std::copy(buf, buf + k, dst + i0);
  }
}

template <class T>
void activate(Act act, T* x, Index n) { activate(act, x, x, n); }

// The same on columns [c0, c0 + w) of each of the n rows of a row-major (n, stride) matrix.
template <class T>
void activate_cols(Act act, T* x, Index n, Index stride, Index c0, Index w) {
  for (Index r = 0; r < n; ++r) activate(act, x + r * stride + c0, w);
}

}  // namespace seqrec
