// types.h: shared scalar/matrix aliases and the cell kinds.
// Holds: row-major Eigen map aliases used by every kernel, the Cell enum and its gate count.
// Not here: any kernel. Nothing in this header is parallel.
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace seqrec {

using Index = Eigen::Index;

template <class T>
using MatR = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MapR = Eigen::Map<MatR<T>>;
template <class T>
using CMapR = Eigen::Map<const MatR<T>>;
template <class T>
using VecMap = Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>;
// A scratch array of n elements left uninitialised (std::vector<T>(n) zero-fills it first), for
// buffers every element of which is written before it is read.
template <class T>
std::unique_ptr<T[]> scratch_array(Index n) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(n > 0 ? n : 0)]);
}
template <class T>
using CVecMap = Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>;

// The three recurrent cells of DESIGN.md §3.1.
enum class Cell { RNN = 0, GRU = 1, LSTM = 2 };

// Number of gate blocks of width H in W_x, W_h and b: rnn [a], gru [r, z, c], lstm [i, f, g, o].
constexpr int gate_count(Cell cell) { return cell == Cell::RNN ? 1 : (cell == Cell::GRU ? 3 : 4); }

// Weights of one layer. W_x: (I, G*H), W_h: (H, G*H), b: (G*H), all C-contiguous.
template <class T>
struct LayerParams {
  const T* W_x;
  const T* W_h;
  const T* b;
  Index I;  // input width of this layer (E for layer 0, H_{l-1} above)
  Index H;  // hidden width
  bool bf16 = false;  // products in bfloat16 with float32 accumulation (gemm.h); float only
};

// What forward keeps for backward, per layer, for a window of T steps of B rows.
//   h_in  (T, B, H)   state entering step t, after the reset mask
//   h_out (T, B, H)   output of step t (input of the next layer, carried state of the next step)
//   gates (T, B, G*H) activated gates: gru [r, z, c], lstm [i, f, g, o]; unused by rnn (null)
//   c_in, c_out (T, B, H)  lstm memory cell before and after step t; null otherwise
template <class P>
struct LayerCache {
  P* h_in;
  P* h_out;
  P* gates;
  P* c_in;
  P* c_out;
};

}  // namespace seqrec
