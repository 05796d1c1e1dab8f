// sampling.h: the last step of the alias method (Walker; Vose's tables are built in sampling.py).
// Holds: alias_pick, out[i] = u[i] < prob[col[i]] ? col[i] : alias[col[i]] over pre-drawn columns
// and uniforms, in one pass. Why: the NumPy form of this step (a gather, a compare, a second gather
// and a select, each with a temporary) was most of the time AliasSampler.draw took, and drawing the
// 2,048 negatives of every step was ~9% of an RSC15-setting epoch (issue 14). The draws are the
// NumPy form's, bit for bit: the random numbers still come from NumPy's generator.
// Not parallel: called between training chunks, ~1 ns per draw.
#pragma once

#include <cstdint>

#include "types.h"

namespace seqrec {

// out[i] for i < count from the tables prob (n) and alias (n). Returns the first i whose col[i] is
// outside [0, n) (nothing from there on is read or written), or -1.
inline Index alias_pick(Index count, const std::int32_t* col, const double* u, Index n,
                        const double* prob, const std::int32_t* alias, std::int32_t* out) {
  for (Index i = 0; i < count; ++i) {
    const std::int32_t c = col[i];
    if (c < 0 || c >= n) return i;
    out[i] = u[i] < prob[c] ? c : alias[c];
  }
  return -1;
}

}  // namespace seqrec
