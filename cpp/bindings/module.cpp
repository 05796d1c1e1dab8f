// module.cpp: the pybind11 bindings of seqrec_fast._core, and the only file that includes pybind11.
// Every bound function validates what it is handed (type, dtype, C-contiguity, shape, values) before
// it touches memory, raising TypeError / ValueError that name the argument, what it got and what was
// expected. It never converts or copies an input array: callers convert once, visibly, in Python.
// Outputs are allocated here as NumPy arrays, then the GIL is released around the kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "seqrec/gemm.h"
#include "seqrec/parallel.h"
#include "seqrec/rank.h"
#include "seqrec/sampling.h"
#include "seqrec/sequence.h"
#include "seqrec/topk.h"
#include "seqrec/train.h"
#include "seqrec/types.h"

#ifndef SEQREC_MODULE_NAME
#define SEQREC_MODULE_NAME _core
#endif
#ifndef SEQREC_VERSION
#define SEQREC_VERSION "dev"
#endif
#ifndef SEQREC_ISA
#define SEQREC_ISA "generic"
#endif

namespace py = pybind11;
using seqrec::Cell;
using seqrec::Index;

namespace {

constexpr Index ANY = -1;

std::string shape_str(const std::vector<Index>& s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) o << ", ";
    if (s[i] == ANY) o << "?"; else o << s[i];
  }
  if (s.size() == 1) o << ",";
  o << ")";
  return o.str();
}

std::string shape_of(const py::array& a) {
  std::vector<Index> s(a.shape(), a.shape() + a.ndim());
  return shape_str(s);
}

// Validation of the arguments of one call; `fn` prefixes every message.
struct Args {
  const char* fn;

  [[noreturn]] void type_error(const std::string& msg) const {
    throw py::type_error(std::string(fn) + ": " + msg);
  }
  [[noreturn]] void value_error(const std::string& msg) const {
    throw py::value_error(std::string(fn) + ": " + msg);
  }

  // A C-contiguous array of scalar T with the expected shape (ANY matches any extent; `what` names
  // the shape in letters, e.g. "(B, H)").
  template <class T>
  py::array array(py::handle obj, const std::string& name, std::vector<Index> shape,
                  const char* what) const {
    if (!py::isinstance<py::array>(obj)) {
      type_error("argument '" + name + "' must be a numpy.ndarray of dtype " +
                 std::string(py::str(py::dtype::of<T>())) + ", got " +
                 std::string(py::str(py::type::of(obj).attr("__name__"))));
    }
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().equal(py::dtype::of<T>())) {
      type_error("argument '" + name + "' has dtype " + std::string(py::str(a.dtype())) +
                 "; expected " + std::string(py::str(py::dtype::of<T>())) +
                 " (all float arguments of one call share a dtype; convert with "
                 "np.ascontiguousarray(x, dtype=...))");
    }
    check_shape(a, name, shape, what);
    if (!(a.flags() & py::array::c_style)) {
      value_error("argument '" + name + "' must be C-contiguous; got a strided array of shape " +
                  shape_of(a) + " (use np.ascontiguousarray)");
    }
    return a;
  }

  void check_shape(const py::array& a, const std::string& name, const std::vector<Index>& shape,
                   const char* what) const {
    bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
    for (size_t i = 0; ok && i < shape.size(); ++i) {
      ok = shape[i] == ANY || a.shape(i) == shape[i];
    }
    if (!ok) {
      value_error("argument '" + name + "' has shape " + shape_of(a) + "; expected " + what +
                  " = " + shape_str(shape));
    }
  }

  // A reset mask: bool or uint8, C-contiguous, shape (T, B); None means no resets.
  const std::uint8_t* mask(py::handle obj, const std::string& name, Index T, Index B,
                           py::array& keep) const {
    if (obj.is_none()) return nullptr;
    if (!py::isinstance<py::array>(obj)) {
      type_error("argument '" + name + "' must be None or a numpy.ndarray of dtype bool or uint8");
    }
    keep = py::reinterpret_borrow<py::array>(obj);
    const char kind = keep.dtype().kind();
    if (!((kind == 'b' || kind == 'u') && keep.dtype().itemsize() == 1)) {
      type_error("argument '" + name + "' has dtype " + std::string(py::str(keep.dtype())) +
                 "; expected bool or uint8");
    }
    check_shape(keep, name, {T, B}, "(T, B)");
    if (!(keep.flags() & py::array::c_style)) {
      value_error("argument '" + name + "' must be C-contiguous (use np.ascontiguousarray)");
    }
    return static_cast<const std::uint8_t*>(keep.data());
  }

  int threads(int num_threads) const {
    if (num_threads < 1) {
      value_error("num_threads must be >= 1, got " + std::to_string(num_threads));
    }
    return num_threads;
  }
};

Cell parse_cell(const Args& args, const std::string& cell) {
  if (cell == "rnn") return Cell::RNN;
  if (cell == "gru") return Cell::GRU;
  if (cell == "lstm") return Cell::LSTM;
  args.value_error("cell must be one of 'rnn', 'gru', 'lstm'; got '" + cell + "'");
}

template <class T>
T* ptr(py::array& a) {
  return static_cast<T*>(a.mutable_data());
}
template <class T>
const T* cptr(const py::array& a) {
  return static_cast<const T*>(a.data());
}

template <class T>
py::array zeros(std::vector<Index> shape) {
  std::vector<py::ssize_t> s(shape.begin(), shape.end());
  py::array_t<T> a(s);
  std::fill(a.mutable_data(), a.mutable_data() + a.size(), T(0));
  return std::move(a);
}
template <class T>
py::array empty(std::vector<Index> shape) {
  std::vector<py::ssize_t> s(shape.begin(), shape.end());
  return py::array_t<T>(s);
}

// Which float type a call runs in: the dtype of its first float argument.
enum class DType { F32, F64 };
DType dtype_of(const Args& args, py::handle obj, const char* name) {
  if (!py::isinstance<py::array>(obj)) {
    args.type_error(std::string("argument '") + name +
                    "' must be a numpy.ndarray of dtype float32 or float64, got " +
                    std::string(py::str(py::type::of(obj).attr("__name__"))));
  }
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (a.dtype().equal(py::dtype::of<float>())) return DType::F32;
  if (a.dtype().equal(py::dtype::of<double>())) return DType::F64;
  args.type_error(std::string("argument '") + name + "' has dtype " + std::string(py::str(a.dtype())) +
                  "; expected float32 or float64");
}

// ---------------------------------------------------------------------------------------------
// Layer stack: weights and caches as Python lists, validated into LayerParams / LayerCache.

template <class T>
struct Stack {
  std::vector<seqrec::LayerParams<T>> params;
  std::vector<py::array> keep;  // keeps the validated arrays alive
};

template <class T>
Stack<T> parse_weights(const Args& args, Cell cell, py::handle weights, Index E) {
  if (!py::isinstance<py::sequence>(weights) || py::isinstance<py::str>(weights)) {
    args.type_error("argument 'weights' must be a list of (W_x, W_h, b) tuples, one per layer");
  }
  auto seq = py::reinterpret_borrow<py::sequence>(weights);
  if (seq.size() == 0) args.value_error("argument 'weights' is empty; expected at least one layer");
  const Index G = seqrec::gate_count(cell);
  Stack<T> s;
  Index in = E;
  for (size_t l = 0; l < seq.size(); ++l) {
    py::handle item = seq[l];
    if (!py::isinstance<py::sequence>(item) || py::len(item) != 3) {
      args.type_error("weights[" + std::to_string(l) + "] must be a (W_x, W_h, b) tuple");
    }
    auto t = py::reinterpret_borrow<py::sequence>(item);
    const std::string pre = "weights[" + std::to_string(l) + "].";
    py::object whobj = t[1];
    if (!py::isinstance<py::array>(whobj) || py::reinterpret_borrow<py::array>(whobj).ndim() != 2) {
      args.value_error("argument '" + pre + "W_h' must be a 2-d array (H, G*H)");
    }
    const Index H = py::reinterpret_borrow<py::array>(whobj).shape(0);
    if (H < 1) args.value_error("argument '" + pre + "W_h' has H = 0; expected H >= 1");
    auto Wx = args.array<T>(t[0], pre + "W_x", {in, G * H}, "(I, G*H)");
    auto Wh = args.array<T>(whobj, pre + "W_h", {H, G * H}, "(H, G*H)");
    auto b = args.array<T>(t[2], pre + "b", {G * H}, "(G*H,)");
    s.params.push_back({cptr<T>(Wx), cptr<T>(Wh), cptr<T>(b), in, H});
    s.keep.insert(s.keep.end(), {Wx, Wh, b});
    in = H;
  }
  return s;
}

// A list of L state arrays, shapes (B, H_l).
template <class T>
std::vector<const T*> parse_states(const Args& args, py::handle obj, const char* name,
                                   const Stack<T>& st, Index B, std::vector<py::array>& keep) {
  const size_t L = st.params.size();
  if (!py::isinstance<py::sequence>(obj) || py::len(obj) != L) {
    args.type_error(std::string("argument '") + name + "' must be a list of " + std::to_string(L) +
                    " arrays of shape (B, H_l), one per layer");
  }
  auto seq = py::reinterpret_borrow<py::sequence>(obj);
  std::vector<const T*> out;
  for (size_t l = 0; l < L; ++l) {
    auto a = args.array<T>(seq[l], std::string(name) + "[" + std::to_string(l) + "]",
                           {B, st.params[l].H}, "(B, H_l)");
    keep.push_back(a);
    out.push_back(cptr<T>(a));
  }
  return out;
}

// Optional per-layer dropout multipliers: None or a list of L arrays (T, B, H_l).
template <class T>
std::vector<const T*> parse_drop(const Args& args, py::handle obj, const Stack<T>& st, Index Tn,
                                 Index B, std::vector<py::array>& keep) {
  const size_t L = st.params.size();
  std::vector<const T*> out(L, nullptr);
  if (obj.is_none()) return out;
  if (!py::isinstance<py::sequence>(obj) || py::len(obj) != L) {
    args.type_error("argument 'drop' must be None or a list of " + std::to_string(L) +
                    " arrays (T, B, H_l) (or None entries), one per layer");
  }
  auto seq = py::reinterpret_borrow<py::sequence>(obj);
  for (size_t l = 0; l < L; ++l) {
    if (seq[l].is_none()) continue;
    auto a = args.array<T>(seq[l], "drop[" + std::to_string(l) + "]", {Tn, B, st.params[l].H},
                           "(T, B, H_l)");
    keep.push_back(a);
    out[l] = cptr<T>(a);
  }
  return out;
}

// The layer-0 input of a window: (T, B, E) with T, B >= 1.
template <class T>
py::array window_input(const Args& args, py::handle X_) {
  auto X = args.array<T>(X_, "X", {ANY, ANY, ANY}, "(T, B, E)");
  if (X.shape(0) < 1) args.value_error("X has T = 0 steps; expected T >= 1");
  if (X.shape(1) < 1) args.value_error("X has B = 0 rows; expected B >= 1");
  return X;
}

template <Cell K, class T>
py::tuple sequence_forward_impl(const Args& args, py::handle X_, py::handle h0_, py::handle c0_,
                                py::handle reset_, py::handle weights_, py::handle drop_, int nt) {
  constexpr Index G = seqrec::gate_count(K);
  auto X = window_input<T>(args, X_);
  const Index Tn = X.shape(0), B = X.shape(1), E = X.shape(2);
  auto st = parse_weights<T>(args, K, weights_, E);
  const size_t L = st.params.size();
  std::vector<py::array> keep;
  auto h0 = parse_states<T>(args, h0_, "h0", st, B, keep);
  std::vector<const T*> c0;
  if constexpr (K == Cell::LSTM) {
    c0 = parse_states<T>(args, c0_, "c0", st, B, keep);
  } else if (!c0_.is_none()) {
    args.value_error("c0 must be None for cell '" + std::string(K == Cell::RNN ? "rnn" : "gru") + "'");
  }
  py::array rkeep;
  const std::uint8_t* reset = args.mask(reset_, "reset", Tn, B, rkeep);
  auto drop = parse_drop<T>(args, drop_, st, Tn, B, keep);

  py::list caches, h_last, c_last;
  std::vector<seqrec::LayerCache<T>> lc(L);
  for (size_t l = 0; l < L; ++l) {
    const Index H = st.params[l].H;
    py::dict d;
    auto h_in = empty<T>({Tn, B, H}), h_out = empty<T>({Tn, B, H});
    d["h_in"] = h_in;
    d["h_out"] = h_out;
    lc[l] = {ptr<T>(h_in), ptr<T>(h_out), nullptr, nullptr, nullptr};
    auto g = empty<T>({Tn, B, G * H});
    d["gates"] = g;
    lc[l].gates = ptr<T>(g);
    if constexpr (K == Cell::LSTM) {
      auto ci = empty<T>({Tn, B, H}), co = empty<T>({Tn, B, H});
      d["c_in"] = ci;
      d["c_out"] = co;
      lc[l].c_in = ptr<T>(ci);
      lc[l].c_out = ptr<T>(co);
    }
    caches.append(d);
  }
  {
    py::gil_scoped_release release;
    seqrec::FlushDenormals ftz;
    for (size_t l = 0; l < L; ++l) {
      const T* in = l == 0 ? cptr<T>(X) : lc[l - 1].h_out;
      seqrec::layer_forward<K, T>(Tn, B, st.params[l], in, nullptr, h0[l],
                                  K == Cell::LSTM ? c0[l] : nullptr, reset, drop[l], lc[l], nt);
    }
  }
  for (size_t l = 0; l < L; ++l) {
    const Index H = st.params[l].H;
    auto hl = empty<T>({B, H});
    std::copy(lc[l].h_out + (Tn - 1) * B * H, lc[l].h_out + Tn * B * H, ptr<T>(hl));
    h_last.append(hl);
    if constexpr (K == Cell::LSTM) {
      auto cl = empty<T>({B, H});
      std::copy(lc[l].c_out + (Tn - 1) * B * H, lc[l].c_out + Tn * B * H, ptr<T>(cl));
      c_last.append(cl);
    }
  }
  py::object Y = caches[L - 1]["h_out"];
  py::object c_ret = K == Cell::LSTM ? py::object(c_last) : py::object(py::none());
  return py::make_tuple(Y, h_last, c_ret, caches);
}

template <Cell K, class T>
py::tuple sequence_backward_impl(const Args& args, py::handle dY_, py::handle dh_last_,
                                 py::handle dc_last_, py::handle X_, py::handle reset_,
                                 py::handle weights_, py::handle cache_, py::handle drop_, int nt) {
  constexpr Index G = seqrec::gate_count(K);
  auto X = window_input<T>(args, X_);
  const Index Tn = X.shape(0), B = X.shape(1), E = X.shape(2);
  auto st = parse_weights<T>(args, K, weights_, E);
  const size_t L = st.params.size();
  const Index HL = st.params[L - 1].H;
  auto dY = args.array<T>(dY_, "dY", {Tn, B, HL}, "(T, B, H_L)");
  std::vector<py::array> keep;
  std::vector<const T*> dh_last, dc_last;
  if (!dh_last_.is_none()) dh_last = parse_states<T>(args, dh_last_, "dh_last", st, B, keep);
  if constexpr (K == Cell::LSTM) {
    if (!dc_last_.is_none()) dc_last = parse_states<T>(args, dc_last_, "dc_last", st, B, keep);
  } else if (!dc_last_.is_none()) {
    args.value_error("dc_last must be None for a cell without memory cell");
  }
  py::array rkeep;
  const std::uint8_t* reset = args.mask(reset_, "reset", Tn, B, rkeep);
  auto drop = parse_drop<T>(args, drop_, st, Tn, B, keep);
  if (!py::isinstance<py::sequence>(cache_) || py::len(cache_) != L) {
    args.type_error("argument 'cache' must be the list of " + std::to_string(L) +
                    " per-layer dicts returned by sequence_forward");
  }
  auto cseq = py::reinterpret_borrow<py::sequence>(cache_);
  std::vector<seqrec::LayerCache<const T>> lc(L);
  for (size_t l = 0; l < L; ++l) {
    const Index H = st.params[l].H;
    py::handle d = cseq[l];
    if (!py::isinstance<py::dict>(d)) args.type_error("cache[" + std::to_string(l) + "] must be a dict");
    auto dict = py::reinterpret_borrow<py::dict>(d);
    auto get = [&](const char* key, Index width) -> const T* {
      const std::string nm = "cache[" + std::to_string(l) + "]['" + key + "']";
      if (!dict.contains(key)) args.value_error(nm + " is missing");
      auto a = args.array<T>(dict[key], nm, {Tn, B, width}, width == H ? "(T, B, H)" : "(T, B, G*H)");
      keep.push_back(a);
      return cptr<T>(a);
    };
    lc[l] = {get("h_in", H), get("h_out", H), get("gates", G * H), nullptr, nullptr};
    if constexpr (K == Cell::LSTM) {
      lc[l].c_in = get("c_in", H);
      lc[l].c_out = get("c_out", H);
    }
  }

  auto dX = empty<T>({Tn, B, E});
  py::list dh0, dc0, grads;
  std::vector<T*> carry_h(L), carry_c(L, nullptr);
  std::vector<std::array<T*, 3>> gp(L);
  for (size_t l = 0; l < L; ++l) {
    const Index H = st.params[l].H, I = st.params[l].I;
    auto ch = zeros<T>({B, H});
    if (!dh_last.empty()) std::copy(dh_last[l], dh_last[l] + B * H, ptr<T>(ch));
    carry_h[l] = ptr<T>(ch);
    dh0.append(ch);
    if constexpr (K == Cell::LSTM) {
      auto cc = zeros<T>({B, H});
      if (!dc_last.empty()) std::copy(dc_last[l], dc_last[l] + B * H, ptr<T>(cc));
      carry_c[l] = ptr<T>(cc);
      dc0.append(cc);
    }
    auto dWx = empty<T>({I, G * H}), dWh = empty<T>({H, G * H}), db = empty<T>({G * H});
    gp[l] = {ptr<T>(dWx), ptr<T>(dWh), ptr<T>(db)};
    grads.append(py::make_tuple(dWx, dWh, db));
  }
  {
    py::gil_scoped_release release;
    seqrec::FlushDenormals ftz;
    std::vector<T> dIn_above, dIn;
    const T* dOut = cptr<T>(dY);
    for (size_t l = L; l-- > 0;) {
      const auto& p = st.params[l];
      const T* in = l == 0 ? cptr<T>(X) : lc[l - 1].h_out;
      T* dIn_ptr;
      if (l == 0) {
        dIn_ptr = ptr<T>(dX);
      } else {
        dIn.assign(static_cast<size_t>(Tn * B * p.I), T(0));
        dIn_ptr = dIn.data();
      }
      seqrec::layer_backward<K, T>(Tn, B, p, in, nullptr, reset, drop[l], lc[l], dOut, carry_h[l],
                                   carry_c[l], dIn_ptr, gp[l][0], gp[l][1], gp[l][2], nullptr, nt);
      if (l > 0) {
        dIn_above.swap(dIn);
        dOut = dIn_above.data();
      }
    }
  }
  py::object dc_ret = K == Cell::LSTM ? py::object(dc0) : py::object(py::none());
  return py::make_tuple(dX, dh0, dc_ret, grads);
}

template <class T>
py::tuple dispatch_forward(Cell cell, const Args& a, py::handle X, py::handle h0, py::handle c0,
                           py::handle reset, py::handle w, py::handle drop, int nt) {
  switch (cell) {
    case Cell::RNN: return sequence_forward_impl<Cell::RNN, T>(a, X, h0, c0, reset, w, drop, nt);
    case Cell::GRU: return sequence_forward_impl<Cell::GRU, T>(a, X, h0, c0, reset, w, drop, nt);
    default: return sequence_forward_impl<Cell::LSTM, T>(a, X, h0, c0, reset, w, drop, nt);
  }
}
template <class T>
py::tuple dispatch_backward(Cell cell, const Args& a, py::handle dY, py::handle dh, py::handle dc,
                            py::handle X, py::handle reset, py::handle w, py::handle cache,
                            py::handle drop, int nt) {
  switch (cell) {
    case Cell::RNN: return sequence_backward_impl<Cell::RNN, T>(a, dY, dh, dc, X, reset, w, cache, drop, nt);
    case Cell::GRU: return sequence_backward_impl<Cell::GRU, T>(a, dY, dh, dc, X, reset, w, cache, drop, nt);
    default: return sequence_backward_impl<Cell::LSTM, T>(a, dY, dh, dc, X, reset, w, cache, drop, nt);
  }
}

py::tuple sequence_forward(const std::string& cell, py::object X, py::object h0, py::object c0,
                           py::object reset, py::object weights, py::object drop, int num_threads) {
  Args a{"sequence_forward"};
  const Cell k = parse_cell(a, cell);
  const int nt = a.threads(num_threads);
  if (dtype_of(a, X, "X") == DType::F32)
    return dispatch_forward<float>(k, a, X, h0, c0, reset, weights, drop, nt);
  return dispatch_forward<double>(k, a, X, h0, c0, reset, weights, drop, nt);
}

py::tuple sequence_backward(const std::string& cell, py::object dY, py::object dh_last,
                            py::object dc_last, py::object X, py::object reset, py::object weights,
                            py::object cache, py::object drop, int num_threads) {
  Args a{"sequence_backward"};
  const Cell k = parse_cell(a, cell);
  const int nt = a.threads(num_threads);
  if (dtype_of(a, X, "X") == DType::F32)
    return dispatch_backward<float>(k, a, dY, dh_last, dc_last, X, reset, weights, cache, drop, nt);
  return dispatch_backward<double>(k, a, dY, dh_last, dc_last, X, reset, weights, cache, drop, nt);
}

// ---------------------------------------------------------------------------------------------
// Single-step cell kernels: the T = 1, L = 1 case of the layer kernels, with flat arguments.


template <Cell K, class T>
py::tuple cell_forward_impl(const Args& args, py::handle x_, py::handle h_, py::handle c_,
                            py::handle W_x, py::handle W_h, py::handle b, int nt) {
  constexpr Index G = seqrec::gate_count(K);
  auto x = args.array<T>(x_, "x", {ANY, ANY}, "(B, E)");
  const Index B = x.shape(0), E = x.shape(1);
  if (B < 1) args.value_error("x has B = 0 rows; expected B >= 1");
  auto h = args.array<T>(h_, "h", {B, ANY}, "(B, H)");
  const Index H = h.shape(1);
  if (H < 1) args.value_error("h has H = 0 columns; expected H >= 1");
  auto wx = args.array<T>(W_x, "W_x", {E, G * H}, "(E, G*H)");
  auto wh = args.array<T>(W_h, "W_h", {H, G * H}, "(H, G*H)");
  auto bb = args.array<T>(b, "b", {G * H}, "(G*H,)");
  py::array c;
  if constexpr (K == Cell::LSTM) c = args.array<T>(c_, "c", {B, H}, "(B, H)");
  seqrec::LayerParams<T> p{cptr<T>(wx), cptr<T>(wh), cptr<T>(bb), E, H};
  auto h_new = empty<T>({B, H});
  py::array c_new, h_in_dummy = empty<T>({B, H}), gates = empty<T>({B, G * H});
  seqrec::LayerCache<T> lc{ptr<T>(h_in_dummy), ptr<T>(h_new), ptr<T>(gates), nullptr, nullptr};
  py::array c_in_dummy;
  if constexpr (K == Cell::LSTM) {
    c_new = empty<T>({B, H});
    c_in_dummy = empty<T>({B, H});
    lc.c_in = ptr<T>(c_in_dummy);
    lc.c_out = ptr<T>(c_new);
  }
  {
    py::gil_scoped_release release;
    seqrec::FlushDenormals ftz;
    seqrec::layer_forward<K, T>(1, B, p, cptr<T>(x), nullptr, cptr<T>(h),
                                K == Cell::LSTM ? cptr<T>(c) : nullptr, nullptr, nullptr, lc, nt);
  }
  if constexpr (K == Cell::RNN) return py::make_tuple(h_new);
  else if constexpr (K == Cell::GRU) return py::make_tuple(h_new, gates);
  else return py::make_tuple(h_new, c_new, gates);
}

// Backward of one step. `saved` holds what forward returned that backward needs:
// rnn: h_new; gru: gates; lstm: (c_new, gates).
template <Cell K, class T>
py::tuple cell_backward_impl(const Args& args, py::handle dh_new_, py::handle dc_new_,
                             py::handle x_, py::handle h_, py::handle c_, py::handle h_new_,
                             py::handle c_new_, py::handle gates_, py::handle W_x,
                             py::handle W_h, int nt) {
  constexpr Index G = seqrec::gate_count(K);
  auto x = args.array<T>(x_, "x", {ANY, ANY}, "(B, E)");
  const Index B = x.shape(0), E = x.shape(1);
  if (B < 1) args.value_error("x has B = 0 rows; expected B >= 1");
  auto h = args.array<T>(h_, "h", {B, ANY}, "(B, H)");
  const Index H = h.shape(1);
  if (H < 1) args.value_error("h has H = 0 columns; expected H >= 1");
  auto dh_new = args.array<T>(dh_new_, "dh_new", {B, H}, "(B, H)");
  auto wx = args.array<T>(W_x, "W_x", {E, G * H}, "(E, G*H)");
  auto wh = args.array<T>(W_h, "W_h", {H, G * H}, "(H, G*H)");
  seqrec::LayerParams<T> p{cptr<T>(wx), cptr<T>(wh), nullptr, E, H};
  seqrec::LayerCache<const T> lc{cptr<T>(h), nullptr, nullptr, nullptr, nullptr};
  py::array h_new, gates, c, c_new, dc_new;
  if constexpr (K == Cell::RNN) {
    h_new = args.array<T>(h_new_, "h_new", {B, H}, "(B, H)");
    lc.h_out = cptr<T>(h_new);
    lc.gates = cptr<T>(h_new);  // without dropout the rnn's gate u is h' itself
  } else {
    gates = args.array<T>(gates_, "gates", {B, G * H}, "(B, G*H)");
    lc.gates = cptr<T>(gates);
  }
  auto dh = empty<T>({B, H});
  std::copy(cptr<T>(dh_new), cptr<T>(dh_new) + B * H, ptr<T>(dh));  // dh_new enters as the carry
  auto zero_out = zeros<T>({B, H});
  py::array dc;
  if constexpr (K == Cell::LSTM) {
    c = args.array<T>(c_, "c", {B, H}, "(B, H)");
    c_new = args.array<T>(c_new_, "c_new", {B, H}, "(B, H)");
    dc_new = args.array<T>(dc_new_, "dc_new", {B, H}, "(B, H)");
    lc.c_in = cptr<T>(c);
    lc.c_out = cptr<T>(c_new);
    dc = empty<T>({B, H});
    std::copy(cptr<T>(dc_new), cptr<T>(dc_new) + B * H, ptr<T>(dc));
  }
  auto dx = empty<T>({B, E});
  auto dWx = empty<T>({E, G * H}), dWh = empty<T>({H, G * H}), db = empty<T>({G * H});
  {
    py::gil_scoped_release release;
    seqrec::FlushDenormals ftz;
    seqrec::layer_backward<K, T>(1, B, p, cptr<T>(x), nullptr, nullptr, nullptr, lc,
                                 cptr<T>(zero_out), ptr<T>(dh), K == Cell::LSTM ? ptr<T>(dc) : nullptr,
                                 ptr<T>(dx), ptr<T>(dWx), ptr<T>(dWh), ptr<T>(db), nullptr, nt);
  }
  if constexpr (K == Cell::LSTM) return py::make_tuple(dx, dh, dc, dWx, dWh, db);
  else return py::make_tuple(dx, dh, dWx, dWh, db);
}

template <Cell K>
py::tuple cell_forward(const char* fn, py::handle x, py::handle h, py::handle c, py::handle W_x,
                       py::handle W_h, py::handle b, int num_threads) {
  Args a{fn};
  const int nt = a.threads(num_threads);
  if (dtype_of(a, x, "x") == DType::F32) return cell_forward_impl<K, float>(a, x, h, c, W_x, W_h, b, nt);
  return cell_forward_impl<K, double>(a, x, h, c, W_x, W_h, b, nt);
}

template <Cell K>
py::tuple cell_backward(const char* fn, py::handle dh_new, py::handle dc_new, py::handle x,
                        py::handle h, py::handle c, py::handle h_new, py::handle c_new,
                        py::handle gates, py::handle W_x, py::handle W_h, int num_threads) {
  Args a{fn};
  const int nt = a.threads(num_threads);
  if (dtype_of(a, x, "x") == DType::F32)
    return cell_backward_impl<K, float>(a, dh_new, dc_new, x, h, c, h_new, c_new, gates, W_x, W_h, nt);
  return cell_backward_impl<K, double>(a, dh_new, dc_new, x, h, c, h_new, c_new, gates, W_x, W_h, nt);
}


// ---------------------------------------------------------------------------------------------
// Training on a chunk of windows.

// An int32 array of the given shape with every value in [lo, hi).
const std::int32_t* index_array(const Args& args, py::handle obj, const std::string& name,
                                std::vector<Index> shape, const char* what, std::int32_t lo,
                                std::int32_t hi, std::vector<py::array>& keep) {
  auto a = args.array<std::int32_t>(obj, name, shape, what);
  keep.push_back(a);
  const std::int32_t* d = cptr<std::int32_t>(a);
  for (py::ssize_t i = 0; i < a.size(); ++i) {
    if (d[i] < lo || d[i] >= hi) {
      throw py::index_error(std::string(args.fn) + ": " + name + " holds " + std::to_string(d[i]) +
                            " at flat position " + std::to_string(i) + "; expected values in [" +
                            std::to_string(lo) + ", " + std::to_string(hi) + ")");
    }
  }
  return d;
}

template <class T>
T* writable(const Args& args, py::array& a, const std::string& name) {
  if (!a.writeable()) args.value_error("argument '" + name + "' must be writable (it is updated in place)");
  return ptr<T>(a);
}

double cfg_num(const Args& args, const py::dict& cfg, const char* key, double dflt) {
  if (!cfg.contains(key)) return dflt;
  try {
    return cfg[key].cast<double>();
  } catch (const py::cast_error&) {
    args.type_error(std::string("config['") + key + "'] must be a number");
  }
}

bool cpu_supports_bf16() {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

seqrec::TrainConfig parse_config(const Args& args, const py::dict& cfg) {
  seqrec::TrainConfig c;
  const std::string loss = cfg.contains("loss") ? py::str(cfg["loss"]).cast<std::string>() : "cross-entropy";
  if (loss == "cross-entropy") c.loss = seqrec::Loss::CrossEntropy;
  else if (loss == "bpr-max") c.loss = seqrec::Loss::BprMax;
  else if (loss == "top1-max") c.loss = seqrec::Loss::Top1Max;
  else args.value_error("config['loss'] must be 'cross-entropy', 'bpr-max' or 'top1-max'; got '" + loss + "'");
  const std::string opt = cfg.contains("optimizer") ? py::str(cfg["optimizer"]).cast<std::string>() : "adagrad";
  if (opt == "adagrad") c.opt.kind = seqrec::Optim::AdagradM;
  else if (opt == "adam") c.opt.kind = seqrec::Optim::Adam;
  else args.value_error("config['optimizer'] must be 'adagrad' or 'adam'; got '" + opt + "'");
  c.bpreg = cfg_num(args, cfg, "bpreg", 1.0);
  c.elu_param = cfg_num(args, cfg, "elu_param", 0.0);
  c.logq = cfg_num(args, cfg, "logq", 0.0);
  c.sample_alpha = cfg_num(args, cfg, "sample_alpha", 0.5);
  c.full_softmax = cfg_num(args, cfg, "full_softmax", 0.0) != 0.0;
  c.batch_size = cfg_num(args, cfg, "batch_size", 32);
  c.opt.lr = cfg_num(args, cfg, "learning_rate", 0.05);
  c.opt.momentum = cfg_num(args, cfg, "momentum", 0.0);
  c.opt.beta1 = cfg_num(args, cfg, "beta1", 0.9);
  c.opt.beta2 = cfg_num(args, cfg, "beta2", 0.999);
  c.opt.eps = cfg_num(args, cfg, "eps", c.opt.kind == seqrec::Optim::Adam ? 1e-8 : 1e-6);
  c.opt.step = static_cast<long long>(cfg_num(args, cfg, "step", 1));
  if (!(c.batch_size > 0)) args.value_error("config['batch_size'] must be > 0");
  if (!(c.opt.lr > 0)) args.value_error("config['learning_rate'] must be > 0");
  if (c.opt.momentum < 0) args.value_error("config['momentum'] must be >= 0");
  if (c.opt.step < 1) args.value_error("config['step'] must be >= 1");
  // precision: "default" (products in the arrays' dtype; "float32"/"float64" name it) or "bf16"
  const std::string prec = cfg.contains("precision") ? py::str(cfg["precision"]).cast<std::string>() : "default";
  if (prec == "bf16") c.bf16 = true;
  else if (prec != "default" && prec != "float32" && prec != "float64")
    args.value_error("config['precision'] must be 'default', 'float32', 'float64' or 'bf16'; got '" + prec + "'");
  if (c.bf16 && !seqrec::bf16_available())
    args.value_error(std::string("config['precision'] = 'bf16' needs AVX-512-BF16 and the avx512 build; "
                                 "this is the '") + SEQREC_ISA + "' build" +
                     (cpu_supports_bf16() ? " (the CPU has avx512_bf16)" : " on a CPU without avx512_bf16") +
                     " (train with precision 'default' / float32 instead)");
  return c;
}

template <Cell KC, class T>
py::tuple train_chunk_impl(const Args& args, const std::string& embedding, py::sequence params,
                           py::sequence state1, py::sequence state2, py::sequence hidden,
                           py::handle cell_state, py::handle x_, py::handle y_, py::handle reset_,
                           py::handle neg_, py::handle drop_embed_, py::handle drop_hidden_,
                           py::handle log_support_, const seqrec::TrainConfig& cfg, int nt,
                           py::handle features_) {
  constexpr Index G = seqrec::gate_count(KC);
  seqrec::TrainModel<T> m;
  m.cell = KC;
  if (embedding == "constrained") m.embedding = seqrec::Embedding::Constrained;
  else if (embedding == "separate") m.embedding = seqrec::Embedding::Separate;
  else if (embedding == "onehot") m.embedding = seqrec::Embedding::OneHot;
  else args.value_error("embedding must be 'constrained', 'separate' or 'onehot'; got '" + embedding + "'");
  const bool separate = m.embedding == seqrec::Embedding::Separate;
  const bool with_features = !features_.is_none();
  const size_t P = params.size();
  const size_t extra = 2 + (separate ? 1 : 0) + (with_features ? 1 : 0);
  if (P < 3 + extra || (P - extra) % 3 != 0) {
    args.value_error("params must be [W_x, W_h, b] per layer, then W_y, b_y" +
                     std::string(separate ? ", E_in" : "") + std::string(with_features ? ", P" : "") +
                     "; got " + std::to_string(P) + " arrays");
  }
  const Index L = static_cast<Index>((P - extra) / 3);
  if (state1.size() != P || state2.size() != P) {
    args.value_error("state1 and state2 must have one entry per parameter (" + std::to_string(P) + ")");
  }
  std::vector<py::array> keep;
  if (cfg.bf16 && !std::is_same<T, float>::value)
    args.type_error("config['precision'] = 'bf16' trains float32 master weights; params are float64");
  const bool need_s2 = cfg.opt.kind == seqrec::Optim::Adam || cfg.opt.momentum > 0;
  // W_y first: it fixes N and H_L.
  auto Wy = args.array<T>(params[3 * L], "params[W_y]", {ANY, ANY}, "(N, H_L)");
  const Index N = Wy.shape(0);
  if (N < 1) args.value_error("W_y has N = 0 items");
  auto bind = [&](size_t i, const std::string& name, std::vector<Index> shape,
                  const char* what) -> seqrec::Param<T> {
    auto a = args.array<T>(params[i], name, shape, what);
    auto s1 = args.array<T>(state1[i], "state1 of " + name, shape, what);
    keep.insert(keep.end(), {a, s1});
    T* s2p = nullptr;
    if (need_s2) {
      auto s2 = args.array<T>(state2[i], "state2 of " + name, shape, what);
      keep.push_back(s2);
      s2p = writable<T>(args, s2, "state2 of " + name);
    }
    Index rows = shape[0], cols = shape.size() > 1 ? shape[1] : 1;
    return {writable<T>(args, a, name), writable<T>(args, s1, "state1 of " + name), s2p, rows, cols};
  };
  // hidden sizes from W_h
  for (Index l = 0; l < L; ++l) {
    py::handle wh = params[3 * l + 1];
    if (!py::isinstance<py::array>(wh) || py::reinterpret_borrow<py::array>(wh).ndim() != 2) {
      args.value_error("params[W_h of layer " + std::to_string(l) + "] must be a 2-d array (H, G*H)");
    }
    m.H.push_back(py::reinterpret_borrow<py::array>(wh).shape(0));
  }
  const Index HL = m.H[L - 1];
  m.N = N;
  m.W_y = bind(3 * L, "W_y", {N, HL}, "(N, H_L)");
  m.b_y = bind(3 * L + 1, "b_y", {N}, "(N,)");
  if (separate) {
    py::handle e = params[3 * L + 2];
    if (!py::isinstance<py::array>(e) || py::reinterpret_borrow<py::array>(e).ndim() != 2) {
      args.value_error("params[E_in] must be a 2-d array (N, E)");
    }
    m.E_in = bind(3 * L + 2, "E_in", {N, py::reinterpret_borrow<py::array>(e).shape(1)}, "(N, E)");
    m.I0 = m.E_in.cols;
  } else {
    m.E_in = {nullptr, nullptr, nullptr, 0, 0};
    m.I0 = m.embedding == seqrec::Embedding::OneHot ? N : HL;
  }
  m.P = {nullptr, nullptr, nullptr, 0, 0};
  if (with_features) {  // item features: F (N, F_dim) read-only, P (F_dim, H_L) the last param
    auto F = args.array<T>(features_, "features", {N, ANY}, "(N, F_dim)");
    keep.push_back(F);
    const Index Fd = F.shape(1);
    if (Fd < 1) args.value_error("features must have F_dim >= 1 columns; got " + shape_of(F));
    m.P = bind(P - 1, "P", {Fd, HL}, "(F_dim, H_L)");
    m.feat.F = cptr<T>(F);
    m.feat.P = m.P.p;
    m.feat.Fd = Fd;
    m.feat.H = HL;
  }
  for (Index l = 0; l < L; ++l) {
    const Index H = m.H[l], in = l == 0 ? m.I0 : m.H[l - 1];
    const std::string ls = std::to_string(l);
    m.W_x.push_back(bind(3 * l, "W_x of layer " + ls, {in, G * H}, l == 0 ? "(I_0, G*H)" : "(H_{l-1}, G*H)"));
    m.W_h.push_back(bind(3 * l + 1, "W_h of layer " + ls, {H, G * H}, "(H, G*H)"));
    m.b.push_back(bind(3 * l + 2, "b of layer " + ls, {G * H}, "(G*H,)"));
  }
  // schedule
  auto xa = args.array<std::int32_t>(x_, "x", {ANY, ANY, ANY}, "(K, T, B)");
  const Index K = xa.shape(0), Tn = xa.shape(1), B = xa.shape(2);
  if (K < 1 || Tn < 1 || B < 1) args.value_error("x must have K, T, B >= 1; got " + shape_of(xa));
  seqrec::Chunk<T> ch;
  ch.K = K; ch.Tn = Tn; ch.B = B;
  ch.x = index_array(args, x_, "x", {K, Tn, B}, "(K, T, B)", -1, static_cast<std::int32_t>(N), keep);
  ch.y = index_array(args, y_, "y", {K, Tn, B}, "(K, T, B)", -1, static_cast<std::int32_t>(N), keep);
  if (reset_.is_none()) args.type_error("argument 'reset' must be a (K, T, B) uint8 array");
  {
    auto r = args.array<std::uint8_t>(reset_, "reset", {K, Tn, B}, "(K, T, B)");
    keep.push_back(r);
    ch.reset = cptr<std::uint8_t>(r);
  }
  if (neg_.is_none()) {
    ch.S = 0;
    ch.neg = nullptr;
  } else {
    auto na = args.array<std::int32_t>(neg_, "neg", {K, Tn, ANY}, "(K, T, S)");
    ch.S = na.shape(2);
    ch.neg = index_array(args, neg_, "neg", {K, Tn, ch.S}, "(K, T, S)", 0, static_cast<std::int32_t>(N), keep);
  }
  if (cfg.full_softmax && ch.S > 0) args.value_error("neg must be None (or S = 0) with full_softmax");
  if (drop_embed_.is_none()) {
    ch.drop_embed = nullptr;
  } else {
    if (m.embedding == seqrec::Embedding::OneHot) {
      args.value_error("drop_embed must be None in one-hot input mode (there is no embedding)");
    }
    auto d = args.array<T>(drop_embed_, "drop_embed", {K, Tn, B, m.I0}, "(K, T, B, I_0)");
    keep.push_back(d);
    ch.drop_embed = cptr<T>(d);
  }
  ch.drop_hidden.assign(static_cast<size_t>(L), nullptr);
  if (!drop_hidden_.is_none()) {
    if (!py::isinstance<py::sequence>(drop_hidden_) || py::len(drop_hidden_) != static_cast<size_t>(L)) {
      args.type_error("drop_hidden must be None or a list of " + std::to_string(L) + " arrays (K, T, B, H_l)");
    }
    auto seq = py::reinterpret_borrow<py::sequence>(drop_hidden_);
    for (Index l = 0; l < L; ++l) {
      if (seq[l].is_none()) continue;
      auto d = args.array<T>(seq[l], "drop_hidden[" + std::to_string(l) + "]", {K, Tn, B, m.H[l]},
                             "(K, T, B, H_l)");
      keep.push_back(d);
      ch.drop_hidden[l] = cptr<T>(d);
    }
  }
  ch.log_support = nullptr;
  if (cfg.logq > 0 && !cfg.full_softmax) {
    if (log_support_.is_none()) args.value_error("log_support (N,) is required when logq > 0");
    auto a = args.array<T>(log_support_, "log_support", {N}, "(N,)");
    keep.push_back(a);
    ch.log_support = cptr<T>(a);
  }
  // carried state
  if (hidden.size() != static_cast<size_t>(L)) {
    args.value_error("hidden must be a list of " + std::to_string(L) + " arrays (B, H_l)");
  }
  std::vector<T*> h(L), c(L, nullptr);
  for (Index l = 0; l < L; ++l) {
    auto a = args.array<T>(hidden[l], "hidden[" + std::to_string(l) + "]", {B, m.H[l]}, "(B, H_l)");
    keep.push_back(a);
    h[l] = writable<T>(args, a, "hidden");
  }
  if constexpr (KC == Cell::LSTM) {
    if (cell_state.is_none() || !py::isinstance<py::sequence>(cell_state) ||
        py::len(cell_state) != static_cast<size_t>(L)) {
      args.value_error("cell_state must be a list of " + std::to_string(L) + " arrays (B, H_l) for lstm");
    }
    auto seq = py::reinterpret_borrow<py::sequence>(cell_state);
    for (Index l = 0; l < L; ++l) {
      auto a = args.array<T>(seq[l], "cell_state[" + std::to_string(l) + "]", {B, m.H[l]}, "(B, H_l)");
      keep.push_back(a);
      c[l] = writable<T>(args, a, "cell_state");
    }
  } else if (!cell_state.is_none()) {
    args.value_error("cell_state must be None for a cell without memory cell");
  }
  py::array_t<double> losses(K);
  py::array_t<long long> counts(K);
  std::fill(losses.mutable_data(), losses.mutable_data() + K, 0.0);
  std::fill(counts.mutable_data(), counts.mutable_data() + K, 0LL);
  seqrec::ChunkResult r;
  {
    py::gil_scoped_release release;
    seqrec::FlushDenormals ftz;
    r = seqrec::train_chunk<KC, T>(m, cfg, ch, h, c, losses.mutable_data(), counts.mutable_data(), nt);
  }
  return py::make_tuple(losses, counts, r.windows_done, r.non_finite, r.updates);
}

py::tuple train_chunk(const std::string& cell, const std::string& embedding, py::sequence params,
                      py::sequence state1, py::sequence state2, py::sequence hidden,
                      py::object cell_state, py::object x, py::object y, py::object reset,
                      py::object neg, py::object drop_embed, py::object drop_hidden,
                      py::object log_support, py::dict config, int num_threads,
                      py::object features) {
  Args a{"train_chunk"};
  const Cell k = parse_cell(a, cell);
  const int nt = a.threads(num_threads);
  const auto cfg = parse_config(a, config);
  if (params.size() == 0) a.value_error("params is empty");
  py::handle w = params[params.size() - 1];
  const DType dt = dtype_of(a, w, "params[-1]");
#define SEQREC_TRAIN(KC, T) \
  return train_chunk_impl<KC, T>(a, embedding, params, state1, state2, hidden, cell_state, x, y, reset, \
                                 neg, drop_embed, drop_hidden, log_support, cfg, nt, \
                                 features)
  if (dt == DType::F32) {
    switch (k) {
      case Cell::RNN: SEQREC_TRAIN(Cell::RNN, float);
      case Cell::GRU: SEQREC_TRAIN(Cell::GRU, float);
      default: SEQREC_TRAIN(Cell::LSTM, float);
    }
  }
  switch (k) {
    case Cell::RNN: SEQREC_TRAIN(Cell::RNN, double);
    case Cell::GRU: SEQREC_TRAIN(Cell::GRU, double);
    default: SEQREC_TRAIN(Cell::LSTM, double);
  }
#undef SEQREC_TRAIN
}


// ---------------------------------------------------------------------------------------------
// Evaluation: rank counts of the targets against every item.

const std::int32_t* parse_exclude(const Args& args, py::handle ex_, Index n, Index N, Index& m,
                                  std::vector<py::array>& keep);

template <class T>
py::tuple score_rank_counts_impl(const Args& args, py::handle H_, py::handle W_, py::handle b_,
                                 py::handle target_, py::handle exclude_, int nt) {
  auto H = args.array<T>(H_, "H", {ANY, ANY}, "(n, D)");
  const Index n = H.shape(0), D = H.shape(1);
  auto W = args.array<T>(W_, "W_y", {ANY, D}, "(N, D)");
  const Index N = W.shape(0);
  if (N < 1) args.value_error("W_y has N = 0 items");
  auto b = args.array<T>(b_, "b_y", {N}, "(N,)");
  std::vector<py::array> keep;
  const std::int32_t* t = index_array(args, target_, "target", {n}, "(n,)", 0,
                                      static_cast<std::int32_t>(N), keep);
  Index m_ex = 0;
  const std::int32_t* ex = parse_exclude(args, exclude_, n, N, m_ex, keep);
  py::array_t<std::int64_t> gt(n), ge(n);
  {
    py::gil_scoped_release release;
    seqrec::FlushDenormals ftz;
    seqrec::score_rank_counts<T>(n, N, D, cptr<T>(H), cptr<T>(W), cptr<T>(b), t, gt.mutable_data(),
                                 ge.mutable_data(), nt, ex, m_ex);
  }
  return py::make_tuple(gt, ge);
}

seqrec::ItemTable parse_table(const Args& args, py::handle table_, py::handle scales_,
                              py::handle b_, Index D, std::vector<py::array>& keep);

// float32: the packed register-tiled kernel. W_y is either the (N, D) table (packed here, one pass
// over it) or already packed by pack_table (what repeated callers such as evaluation pass).
py::tuple score_rank_counts_f32(const Args& args, py::handle H_, py::handle W_, py::handle b_,
                                py::handle target_, py::handle exclude_, int nt) {
  auto H = args.array<float>(H_, "H", {ANY, ANY}, "(n, D)");
  const Index n = H.shape(0), D = H.shape(1);
  std::vector<py::array> keep;
  auto t = parse_table(args, W_, py::none(), b_, D, keep);
  if (t.kind != seqrec::TableKind::F32) {
    args.type_error("W_y must be float32 like H (a float32 (N, D) table or its pack_table layout)");
  }
  const std::int32_t* tg = index_array(args, target_, "target", {n}, "(n,)", 0,
                                       static_cast<std::int32_t>(t.N), keep);
  Index m_ex = 0;
  const std::int32_t* ex = parse_exclude(args, exclude_, n, t.N, m_ex, keep);
  py::array_t<std::int64_t> gt(n), ge(n);
  {
    py::gil_scoped_release release;
    seqrec::FlushDenormals ftz;
    std::vector<float> packed;
    if (!t.packed) {
      packed.resize(static_cast<size_t>((t.N + seqrec::PACK - 1) / seqrec::PACK * D * seqrec::PACK));
      seqrec::pack_rows<float>(static_cast<const float*>(t.data), t.N, D, packed.data());
      t.data = packed.data();
      t.packed = true;
    }
    seqrec::rank_counts_packed<seqrec::TableKind::F32>(t, n, cptr<float>(H), tg, gt.mutable_data(),
                                                       ge.mutable_data(), nt);
    if (ex) {
      seqrec::exclude_rank_counts_packed<seqrec::TableKind::F32>(
          t, n, cptr<float>(H), tg, ex, m_ex, gt.mutable_data(), ge.mutable_data(), nt);
    }
  }
  return py::make_tuple(gt, ge);
}

py::tuple score_rank_counts(py::object H, py::object W_y, py::object b_y, py::object target,
                            int num_threads, py::object exclude) {
  Args a{"score_rank_counts"};
  const int nt = a.threads(num_threads);
  if (dtype_of(a, H, "H") == DType::F32) {
    return score_rank_counts_f32(a, H, W_y, b_y, target, exclude, nt);
  }
  return score_rank_counts_impl<double>(a, H, W_y, b_y, target, exclude, nt);
}

// ---------------------------------------------------------------------------------------------
// Small kernels exposed for tests and benchmarks: the loss of a score matrix, and a lazy
// optimizer update of some rows of a table.

template <class T>
py::tuple loss_grad_impl(const Args& args, py::handle R_, py::handle pos_, const seqrec::TrainConfig& cfg,
                         int nt) {
  auto R = args.array<T>(R_, "R", {ANY, ANY}, "(n, C)");
  const Index n = R.shape(0), C = R.shape(1);
  if (C < 1) args.value_error("R must have C >= 1 columns");
  if (cfg.loss != seqrec::Loss::CrossEntropy && C < 2) {
    args.value_error("R must have C >= 2 columns for a loss over negatives");
  }
  std::vector<py::array> keep;
  const std::int32_t* pos = index_array(args, pos_, "pos", {n}, "(n,)", 0, static_cast<std::int32_t>(C), keep);
  py::array_t<T> loss(n);
  py::array_t<T> grad({n, C});
  {
    py::gil_scoped_release release;
    seqrec::FlushDenormals ftz;
    const T* r = cptr<T>(R);
    T* g = grad.mutable_data();
    T* l = loss.mutable_data();
    seqrec::parallel_for(n, nt, [&](Index i0, Index i1) {
      std::vector<T> s(C), o(C);
      for (Index i = i0; i < i1; ++i) {
        l[i] = seqrec::loss_row(cfg, C, Index(pos[i]), r + i * C, g + i * C, s.data(), o.data());
      }
    }, 4);
  }
  return py::make_tuple(loss, grad);
}

py::tuple loss_grad(py::object R, py::object pos, py::dict config, int num_threads) {
  Args a{"loss_grad"};
  const int nt = a.threads(num_threads);
  const auto cfg = parse_config(a, config);
  if (dtype_of(a, R, "R") == DType::F32) return loss_grad_impl<float>(a, R, pos, cfg, nt);
  return loss_grad_impl<double>(a, R, pos, cfg, nt);
}

template <class T>
void opt_update_rows_impl(const Args& args, seqrec::OptConfig oc, py::handle rows_, py::handle G_,
                          py::handle p_, py::handle s1_, py::handle s2_, int nt) {
  auto p = args.array<T>(p_, "p", {ANY, ANY}, "(N, W)");
  const Index N = p.shape(0), W = p.shape(1);
  auto s1 = args.array<T>(s1_, "s1", {N, W}, "(N, W)");
  py::array s2;
  const bool adagrad = oc.kind == seqrec::Optim::AdagradM;
  if (s2_.is_none()) {
    if (!adagrad) args.value_error("adam needs s2 (N, W) (its second moment)");
    if (oc.momentum > 0) args.value_error("adagrad with momentum > 0 needs s2 (N, W) (the momentum)");
  } else {
    s2 = args.array<T>(s2_, "s2", {N, W}, "(N, W)");
  }
  std::vector<py::array> keep;
  auto rows_arr = args.array<std::int32_t>(rows_, "rows", {ANY}, "(r,)");
  const Index nr = rows_arr.shape(0);
  const std::int32_t* rows = index_array(args, rows_arr, "rows", {nr}, "(r,)", 0,
                                         static_cast<std::int32_t>(N), keep);
  {
    std::vector<std::uint8_t> seen(static_cast<size_t>(N), 0);
    for (Index k = 0; k < nr; ++k) {
      if (seen[rows[k]]++) {
        args.value_error("rows holds " + std::to_string(rows[k]) +
                         " more than once; rows must be distinct (sum their gradients first)");
      }
    }
  }
  auto G = args.array<T>(G_, "G", {nr, W}, "(r, W)");
  T* pp = writable<T>(args, p, "p");
  T* s1p = writable<T>(args, s1, "s1");
  // Adagrad without momentum leaves s2 untouched (as the reference does)
  T* s2p = (s2_.is_none() || (adagrad && !(oc.momentum > 0))) ? nullptr : writable<T>(args, s2, "s2");
  {
    py::gil_scoped_release release;
    seqrec::FlushDenormals ftz;
    seqrec::row_update<T>(oc, W, rows, nr, cptr<T>(G), pp, s1p, s2p, nt);
  }
}

// The alias method's last step (sampling.h) for AliasSampler.draw.
py::array alias_pick(py::object col_, py::object u_, py::object prob_, py::object alias_) {
  Args a{"alias_pick"};
  auto prob = a.array<double>(prob_, "prob", {ANY}, "(n,)");
  const Index n = prob.shape(0);
  auto alias = a.array<std::int32_t>(alias_, "alias", {n}, "(n,), as prob");
  const py::ssize_t nd = py::isinstance<py::array>(col_) ? py::reinterpret_borrow<py::array>(col_).ndim() : 1;
  auto col = a.array<std::int32_t>(col_, "col", std::vector<Index>(static_cast<size_t>(nd), ANY), "(...)");
  std::vector<Index> shape(col.shape(), col.shape() + col.ndim());
  auto u = a.array<double>(u_, "u", shape, "the shape of col");
  py::array out = py::array(py::dtype::of<std::int32_t>(), std::vector<py::ssize_t>(shape.begin(), shape.end()));
  const Index count = static_cast<Index>(col.size());
  Index bad;
  {
    py::gil_scoped_release release;
    bad = seqrec::alias_pick(count, cptr<std::int32_t>(col), cptr<double>(u), n, cptr<double>(prob),
                             cptr<std::int32_t>(alias), ptr<std::int32_t>(out));
  }
  if (bad >= 0) {
    throw py::index_error("alias_pick: col holds " + std::to_string(cptr<std::int32_t>(col)[bad]) +
                          " at flat position " + std::to_string(bad) + "; expected values in [0, " +
                          std::to_string(n) + ")");
  }
  return out;
}

void opt_update_rows(py::dict config, long long step, py::object rows, py::object G, py::object p,
                     py::object s1, py::object s2, int num_threads) {
  Args a{"opt_update_rows"};
  const int nt = a.threads(num_threads);
  if (step < 1) a.value_error("step must be >= 1, got " + std::to_string(step));
  auto oc = parse_config(a, config).opt;
  oc.step = step;
  if (dtype_of(a, p, "p") == DType::F32) {
    opt_update_rows_impl<float>(a, oc, rows, G, p, s1, s2, nt);
  } else {
    opt_update_rows_impl<double>(a, oc, rows, G, p, s1, s2, nt);
  }
}


// ---------------------------------------------------------------------------------------------
// Serving: top-k, and one fused step + top-k.

// The item table used for scoring: float32 (N, D), uint16 bfloat16 bits, or int8 + scales (N,).
seqrec::ItemTable parse_table(const Args& args, py::handle table_, py::handle scales_,
                              py::handle b_, Index D, std::vector<py::array>& keep) {
  if (!py::isinstance<py::array>(table_)) {
    args.type_error("the item table must be a numpy.ndarray (float32, uint16 bfloat16 bits or int8)");
  }
  auto t = py::reinterpret_borrow<py::array>(table_);
  seqrec::ItemTable it;
  it.packed = t.ndim() == 3;
  // N comes from the bias; a packed table is (ceil(N/16), D, 16)
  if (!py::isinstance<py::array>(b_) || py::reinterpret_borrow<py::array>(b_).ndim() != 1) {
    args.value_error("b_y must be a 1-d float32 array (N,)");
  }
  const Index N = py::reinterpret_borrow<py::array>(b_).shape(0);
  if (N < 1) args.value_error("b_y has N = 0 items");
  std::vector<Index> shape = it.packed ? std::vector<Index>{(N + seqrec::PACK - 1) / seqrec::PACK, D, seqrec::PACK}
                                       : std::vector<Index>{N, D};
  const char* what = it.packed ? "(ceil(N/16), D, 16) from pack_table" : "(N, D)";
  py::array a;
  if (t.dtype().equal(py::dtype::of<float>())) {
    it.kind = seqrec::TableKind::F32;
    a = args.array<float>(t, "table", shape, what);
  } else if (t.dtype().equal(py::dtype::of<std::uint16_t>())) {
    it.kind = seqrec::TableKind::BF16;
    a = args.array<std::uint16_t>(t, "table", shape, what);
  } else if (t.dtype().equal(py::dtype::of<std::int8_t>())) {
    it.kind = seqrec::TableKind::I8;
    a = args.array<std::int8_t>(t, "table", shape, what);
  } else {
    args.type_error("the item table has dtype " + std::string(py::str(t.dtype())) +
                    "; expected float32, uint16 (bfloat16 bits) or int8");
  }
  keep.push_back(a);
  it.data = a.data();
  it.N = N;
  it.D = D;
  auto b = args.array<float>(b_, "b_y", {N}, "(N,)");
  keep.push_back(b);
  it.bias = cptr<float>(b);
  it.scales = nullptr;
  if (it.kind == seqrec::TableKind::I8) {
    if (scales_.is_none()) args.value_error("an int8 table needs scales (N,) float32");
    auto sc = args.array<float>(scales_, "scales", {N}, "(N,)");
    keep.push_back(sc);
    it.scales = cptr<float>(sc);
  } else if (!scales_.is_none()) {
    args.value_error("scales are only for an int8 table");
  }
  return it;
}

template <class S>
py::array pack_typed(const Args& args, py::handle W_) {
  auto W = args.array<S>(W_, "W", {ANY, ANY}, "(N, D)");
  const Index N = W.shape(0), D = W.shape(1);
  if (N < 1 || D < 1) args.value_error("W must have N >= 1 rows and D >= 1 columns");
  const Index nb = (N + seqrec::PACK - 1) / seqrec::PACK;
  // 64-byte aligned (a cache line, one AVX-512 packet): NumPy's allocator only guarantees 16, and a
  // float32 table at offset 16 or 32 makes every 64-byte load of the scan straddle two cache lines
  // (measured on the AMD EPYC box: single-query top-k at N=40k 330 us vs 260 us aligned).
  const std::size_t bytes = (static_cast<std::size_t>(nb) * D * seqrec::PACK * sizeof(S) + 63) / 64 * 64;
  void* mem = std::aligned_alloc(64, bytes);
  if (mem == nullptr) throw std::bad_alloc();
  py::capsule owner(mem, [](void* q) { std::free(q); });
  py::array_t<S> out({nb, D, seqrec::PACK}, static_cast<S*>(mem), owner);
  {
    py::gil_scoped_release release;
    seqrec::pack_rows<S>(cptr<S>(W), N, D, out.mutable_data());
  }
  return std::move(out);
}

py::array pack_table(py::object W) {
  Args a{"pack_table"};
  if (!py::isinstance<py::array>(W)) a.type_error("W must be a numpy.ndarray");
  auto arr = py::reinterpret_borrow<py::array>(W);
  if (arr.dtype().equal(py::dtype::of<float>())) return pack_typed<float>(a, W);
  if (arr.dtype().equal(py::dtype::of<std::uint16_t>())) return pack_typed<std::uint16_t>(a, W);
  if (arr.dtype().equal(py::dtype::of<std::int8_t>())) return pack_typed<std::int8_t>(a, W);
  a.type_error("W has dtype " + std::string(py::str(arr.dtype())) + "; expected float32, uint16 or int8");
}

const std::int32_t* parse_exclude(const Args& args, py::handle ex_, Index n, Index N, Index& m,
                                  std::vector<py::array>& keep) {
  m = 0;
  if (ex_.is_none()) return nullptr;
  auto e = args.array<std::int32_t>(ex_, "exclude", {n, ANY}, "(n, m)");
  m = e.shape(1);
  return index_array(args, e, "exclude", {n, m}, "(n, m)", -1, static_cast<std::int32_t>(N), keep);
}

py::tuple topk_run(const seqrec::ItemTable& t, const float* H, Index n, Index k,
                   const std::int32_t* ex, Index m, int nt) {
  const Index kk = std::min(k, t.N);
  py::array_t<std::int32_t> idx({n, kk});
  py::array_t<float> sc({n, kk});
  {
    py::gil_scoped_release release;
    seqrec::FlushDenormals ftz;
    seqrec::topk_scores(t, n, H, k, ex, m, idx.mutable_data(), sc.mutable_data(), nt);
  }
  return py::make_tuple(idx, sc);
}

Index parse_k(const Args& args, py::handle k_) {
  Index k;
  try {
    k = k_.cast<Index>();
  } catch (const py::cast_error&) {
    args.type_error("k must be an int");
  }
  if (k < 1) args.value_error("k must be >= 1, got " + std::to_string(k));
  return k;
}

py::tuple topk(py::object H_, py::object W_y, py::object b_y, py::object k_, py::object exclude,
               py::object scales, int num_threads) {
  Args a{"topk"};
  const int nt = a.threads(num_threads);
  auto H = a.array<float>(H_, "H", {ANY, ANY}, "(n, D)");
  const Index n = H.shape(0), D = H.shape(1);
  const Index k = parse_k(a, k_);
  std::vector<py::array> keep;
  auto t = parse_table(a, W_y, scales, b_y, D, keep);
  Index m;
  const std::int32_t* ex = parse_exclude(a, exclude, n, t.N, m, keep);
  return topk_run(t, cptr<float>(H), n, k, ex, m, nt);
}

// The inputs of one recurrent step over n queries, validated once for every step kernel (step_topk,
// step_rank): the input table, the stacked layer weights, the item indices and the in-place states.
template <class T>
struct StepInputs {
  bool onehot = false, separate = false;
  py::array E_in;
  Index I0 = 0, L = 0, n = 0;
  Stack<T> st;
  const std::int32_t* items = nullptr;
  std::vector<T*> h, c;

  // X (n, I0): the rows of the input table for the items (empty under one-hot input). GIL not needed.
  std::vector<T> gather(const py::array& W_y) const {
    std::vector<T> X(onehot ? 0 : n * I0);
    if (!onehot) {
      const T* table = separate ? cptr<T>(E_in) : cptr<T>(W_y);
      for (Index r = 0; r < n; ++r) std::copy(table + Index(items[r]) * I0, table + Index(items[r] + 1) * I0, X.data() + r * I0);
    }
    return X;
  }
};

template <Cell K, class T>
StepInputs<T> parse_step_inputs(const Args& a, const std::string& embedding, py::handle weights,
                                py::handle E_in_, Index N, Index HL, py::handle h_, py::handle c_,
                                py::handle items_, std::vector<py::array>& keep) {
  StepInputs<T> s;
  s.onehot = embedding == "onehot";
  s.separate = embedding == "separate";
  if (!s.onehot && !s.separate && embedding != "constrained") {
    a.value_error("embedding must be 'constrained', 'separate' or 'onehot'; got '" + embedding + "'");
  }
  s.I0 = HL;
  if (s.separate) {
    s.E_in = a.array<T>(E_in_, "E_in", {N, ANY}, "(N, E)");
    s.I0 = s.E_in.shape(1);
  } else if (s.onehot) {
    s.I0 = N;
  }
  s.st = parse_weights<T>(a, K, weights, s.I0);
  const Index L = s.L = static_cast<Index>(s.st.params.size());
  if (s.st.params[L - 1].H != HL) a.value_error("the last layer's width must equal W_y's columns");
  auto items_a = a.array<std::int32_t>(items_, "items", {ANY}, "(n,)");
  const Index n = s.n = items_a.shape(0);
  if (n < 1) a.value_error("items is empty");
  s.items = index_array(a, items_a, "items", {n}, "(n,)", 0, static_cast<std::int32_t>(N), keep);
  const std::string dt = std::is_same_v<T, float> ? "float32" : "float64";
  if (!py::isinstance<py::sequence>(h_) || py::len(h_) != static_cast<size_t>(L)) {
    a.type_error("h must be a list of " + std::to_string(L) + " " + dt + " arrays (n, H_l)");
  }
  s.h.assign(L, nullptr);
  s.c.assign(L, nullptr);
  auto hs = py::reinterpret_borrow<py::sequence>(h_);
  for (Index l = 0; l < L; ++l) {
    auto x = a.array<T>(hs[l], "h[" + std::to_string(l) + "]", {n, s.st.params[l].H}, "(n, H_l)");
    keep.push_back(x);
    s.h[l] = writable<T>(a, x, "h");
  }
  if constexpr (K == Cell::LSTM) {
    if (c_.is_none() || !py::isinstance<py::sequence>(c_) || py::len(c_) != static_cast<size_t>(L)) {
      a.type_error("c must be a list of " + std::to_string(L) + " " + dt + " arrays (n, H_l) for lstm");
    }
    auto cs = py::reinterpret_borrow<py::sequence>(c_);
    for (Index l = 0; l < L; ++l) {
      auto x = a.array<T>(cs[l], "c[" + std::to_string(l) + "]", {n, s.st.params[l].H}, "(n, H_l)");
      keep.push_back(x);
      s.c[l] = writable<T>(a, x, "c");
    }
  } else if (!c_.is_none()) {
    a.value_error("c must be None for a cell without memory cell");
  }
  return s;
}

template <Cell K>
py::tuple step_topk_impl(const Args& a, const std::string& embedding, py::handle weights,
                         py::handle E_in_, py::handle W_y_, py::handle b_y, py::handle h_,
                         py::handle c_, py::handle items_, Index k, py::handle exclude,
                         py::handle table_, py::handle scales, int nt) {
  auto W_y = a.array<float>(W_y_, "W_y", {ANY, ANY}, "(N, H_L)");
  const Index N = W_y.shape(0), HL = W_y.shape(1);
  if (N < 1) a.value_error("W_y has N = 0 items");
  std::vector<py::array> keep;
  auto s = parse_step_inputs<K, float>(a, embedding, weights, E_in_, N, HL, h_, c_, items_, keep);
  const Index n = s.n, L = s.L;
  const bool onehot = s.onehot;
  const std::int32_t* items = s.items;
  auto& st = s.st;
  auto& h = s.h;
  auto& c = s.c;
  if (!py::isinstance<py::array>(b_y) || py::reinterpret_borrow<py::array>(b_y).ndim() != 1 ||
      py::reinterpret_borrow<py::array>(b_y).shape(0) != N) {
    a.value_error("b_y must be a float32 array (N,) with the N rows of W_y");
  }
  auto t = parse_table(a, table_.is_none() ? py::handle(W_y) : table_, scales, b_y, HL, keep);
  Index m;
  const std::int32_t* ex = parse_exclude(a, exclude, n, N, m, keep);
  const Index kk = std::min(k, N);
  py::array_t<std::int32_t> idx({n, kk});
  py::array_t<float> sc({n, kk});
  {
    py::gil_scoped_release release;
    seqrec::FlushDenormals ftz;
    const std::vector<float> X = s.gather(W_y);
    constexpr int G = seqrec::gate_count(K);
    std::vector<std::vector<float>> hin(L), hout(L), gates(L), cin(L), cout(L);
    for (Index l = 0; l < L; ++l) {
      const Index H = st.params[l].H;
      hin[l].resize(n * H);
      hout[l].resize(n * H);
      gates[l].resize(n * G * H);
      if (K == Cell::LSTM) { cin[l].resize(n * H); cout[l].resize(n * H); }
      seqrec::LayerCache<float> lc{hin[l].data(), hout[l].data(), gates[l].data(),
                                   K == Cell::LSTM ? cin[l].data() : nullptr,
                                   K == Cell::LSTM ? cout[l].data() : nullptr};
      const float* in = l == 0 ? X.data() : hout[l - 1].data();
      seqrec::layer_forward<K, float>(1, n, st.params[l], in, (onehot && l == 0) ? items : nullptr, h[l],
                                      K == Cell::LSTM ? c[l] : nullptr, nullptr, nullptr, lc, nt);
      std::copy(hout[l].begin(), hout[l].end(), h[l]);
      if (K == Cell::LSTM) std::copy(cout[l].begin(), cout[l].end(), c[l]);
    }
    seqrec::topk_scores(t, n, hout[L - 1].data(), k, ex, m, idx.mutable_data(), sc.mutable_data(), nt);
  }
  return py::make_tuple(idx, sc);
}

py::tuple step_topk(const std::string& cell, const std::string& embedding, py::object weights,
                    py::object E_in, py::object W_y, py::object b_y, py::object h, py::object c,
                    py::object items, py::object k_, py::object exclude, py::object table,
                    py::object scales, int num_threads) {
  Args a{"step_topk"};
  const Cell kc = parse_cell(a, cell);
  const int nt = a.threads(num_threads);
  const Index k = parse_k(a, k_);
  switch (kc) {
    case Cell::RNN: return step_topk_impl<Cell::RNN>(a, embedding, weights, E_in, W_y, b_y, h, c, items, k, exclude, table, scales, nt);
    case Cell::GRU: return step_topk_impl<Cell::GRU>(a, embedding, weights, E_in, W_y, b_y, h, c, items, k, exclude, table, scales, nt);
    default: return step_topk_impl<Cell::LSTM>(a, embedding, weights, E_in, W_y, b_y, h, c, items, k, exclude, table, scales, nt);
  }
}

// ---------------------------------------------------------------------------------------------
// Re-ranking a candidate list (rank.h), alone and fused with one step.

// candidates: int32 (n, C), every entry in [0, N).
const std::int32_t* parse_candidates(const Args& a, py::handle cand_, Index n, Index N, Index& C,
                                     std::vector<py::array>& keep) {
  auto ca = a.array<std::int32_t>(cand_, "candidates", {n, ANY}, "(n, C)");
  C = ca.shape(1);
  return index_array(a, ca, "candidates", {n, C}, "(n, C)", 0, static_cast<std::int32_t>(N), keep);
}

template <class T>
py::tuple rank_run(Index n, Index D, const T* H, const T* W, const T* b, Index C,
                   const std::int32_t* cand, int nt) {
  py::array_t<std::int32_t> idx({n, C});
  py::array_t<T> sc({n, C});
  {
    py::gil_scoped_release release;
    seqrec::FlushDenormals ftz;
    seqrec::rank_candidates<T>(n, D, H, W, b, C, cand, idx.mutable_data(), sc.mutable_data(), nt);
  }
  return py::make_tuple(idx, sc);
}

template <class T>
py::tuple rank_candidates_impl(const Args& a, py::handle H_, py::handle W_, py::handle b_,
                               py::handle cand_, int nt) {
  auto H = a.array<T>(H_, "H", {ANY, ANY}, "(n, D)");
  const Index n = H.shape(0), D = H.shape(1);
  auto W = a.array<T>(W_, "W_y", {ANY, D}, "(N, D)");
  const Index N = W.shape(0);
  if (N < 1) a.value_error("W_y has N = 0 items");
  auto b = a.array<T>(b_, "b_y", {N}, "(N,)");
  std::vector<py::array> keep;
  Index C;
  const std::int32_t* cand = parse_candidates(a, cand_, n, N, C, keep);
  return rank_run<T>(n, D, cptr<T>(H), cptr<T>(W), cptr<T>(b), C, cand, nt);
}

py::tuple rank_candidates(py::object H, py::object W_y, py::object b_y, py::object candidates,
                          int num_threads) {
  Args a{"rank_candidates"};
  const int nt = a.threads(num_threads);
  if (dtype_of(a, H, "H") == DType::F32) return rank_candidates_impl<float>(a, H, W_y, b_y, candidates, nt);
  return rank_candidates_impl<double>(a, H, W_y, b_y, candidates, nt);
}

template <Cell K, class T>
py::tuple step_rank_impl(const Args& a, const std::string& embedding, py::handle weights,
                         py::handle E_in_, py::handle W_y_, py::handle b_y_, py::handle h_,
                         py::handle c_, py::handle items_, py::handle cand_, int nt) {
  auto W_y = a.array<T>(W_y_, "W_y", {ANY, ANY}, "(N, H_L)");
  const Index N = W_y.shape(0), HL = W_y.shape(1);
  if (N < 1) a.value_error("W_y has N = 0 items");
  auto b_y = a.array<T>(b_y_, "b_y", {N}, "(N,)");
  std::vector<py::array> keep;
  auto s = parse_step_inputs<K, T>(a, embedding, weights, E_in_, N, HL, h_, c_, items_, keep);
  const Index n = s.n, L = s.L;
  Index C;
  const std::int32_t* cand = parse_candidates(a, cand_, n, N, C, keep);
  py::array_t<std::int32_t> idx({n, C});
  py::array_t<T> sc({n, C});
  {
    py::gil_scoped_release release;
    seqrec::FlushDenormals ftz;
    const std::vector<T> X = s.gather(W_y);
    seqrec::stack_step<K, T>(n, s.st.params, X.data(), s.onehot ? s.items : nullptr, s.h, s.c, nt);
    seqrec::rank_candidates<T>(n, HL, s.h[L - 1], cptr<T>(W_y), cptr<T>(b_y), C, cand,
                               idx.mutable_data(), sc.mutable_data(), nt);
  }
  return py::make_tuple(idx, sc);
}

template <class T>
py::tuple step_rank_cell(Cell kc, const Args& a, const std::string& embedding, py::handle weights,
                         py::handle E_in, py::handle W_y, py::handle b_y, py::handle h, py::handle c,
                         py::handle items, py::handle cand, int nt) {
  switch (kc) {
    case Cell::RNN: return step_rank_impl<Cell::RNN, T>(a, embedding, weights, E_in, W_y, b_y, h, c, items, cand, nt);
    case Cell::GRU: return step_rank_impl<Cell::GRU, T>(a, embedding, weights, E_in, W_y, b_y, h, c, items, cand, nt);
    default: return step_rank_impl<Cell::LSTM, T>(a, embedding, weights, E_in, W_y, b_y, h, c, items, cand, nt);
  }
}

py::tuple step_rank(const std::string& cell, const std::string& embedding, py::object weights,
                    py::object E_in, py::object W_y, py::object b_y, py::object h, py::object c,
                    py::object items, py::object candidates, int num_threads) {
  Args a{"step_rank"};
  const Cell kc = parse_cell(a, cell);
  const int nt = a.threads(num_threads);
  if (dtype_of(a, W_y, "W_y") == DType::F32) {
    return step_rank_cell<float>(kc, a, embedding, weights, E_in, W_y, b_y, h, c, items, candidates, nt);
  }
  return step_rank_cell<double>(kc, a, embedding, weights, E_in, W_y, b_y, h, c, items, candidates, nt);
}

// Whether the running CPU (and OS) supports an instruction-set feature; the Python loader uses it to
// pick the fastest module variant that is safe to import.
bool cpu_supports(const std::string& feature) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  if (feature == "avx2") return __builtin_cpu_supports("avx2");
  if (feature == "fma") return __builtin_cpu_supports("fma");
  if (feature == "f16c") return __builtin_cpu_supports("f16c");
  if (feature == "avx512f") return __builtin_cpu_supports("avx512f");
  if (feature == "avx512cd") return __builtin_cpu_supports("avx512cd");
  if (feature == "avx512bw") return __builtin_cpu_supports("avx512bw");
  if (feature == "avx512dq") return __builtin_cpu_supports("avx512dq");
  if (feature == "avx512vl") return __builtin_cpu_supports("avx512vl");
  if (feature == "avx512bf16") return __builtin_cpu_supports("avx512bf16");
#else
  (void)feature;
#endif
  return false;
}

int max_threads() {
#ifdef SEQREC_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace

PYBIND11_MODULE(SEQREC_MODULE_NAME, m) {
  m.doc() = "seqrec_fast C++ kernels (private; use the seqrec_fast package API).";
  m.attr("__version__") = SEQREC_VERSION;
  m.attr("ISA") = SEQREC_ISA;
  m.def("openmp_enabled", &seqrec::have_openmp, "True when the kernels were built with OpenMP.");
  m.def("cpu_supports", &cpu_supports, py::arg("feature"),
        "Whether this CPU supports an x86 feature ('avx2', 'fma', 'f16c', 'avx512f', ...).");
  m.def("bf16_available", &seqrec::bf16_available,
        "Whether this build and CPU run bfloat16 products (AVX-512-BF16, vdpbf16ps): the avx512 "
        "variant on a CPU with avx512_bf16.");
  m.def("gemm_bf16",
        [](py::object A_, py::object B_, bool trans_a, bool trans_b) {
          Args a{"gemm_bf16"};
          if (!seqrec::bf16_available())
            a.value_error(std::string("needs AVX-512-BF16 and the avx512 build; this is the '") +
                          SEQREC_ISA + "' build on " +
                          (cpu_supports_bf16() ? "a CPU with" : "a CPU without") + " avx512_bf16");
          py::array A = a.array<float>(A_, "A", {ANY, ANY}, trans_a ? "(K, M)" : "(M, K)");
          const Index M = A.shape(trans_a ? 1 : 0), K = A.shape(trans_a ? 0 : 1);
          py::array B = a.array<float>(B_, "B", {trans_b ? ANY : K, trans_b ? K : ANY},
                                       trans_b ? "(N, K)" : "(K, N)");
          const Index N = B.shape(trans_b ? 0 : 1);
          py::array_t<float> C({M, N});
          {
            py::gil_scoped_release release;
            using CM = seqrec::CMapR<float>;
            seqrec::MapR<float> Cm(C.mutable_data(), M, N);
            const float* pa = static_cast<const float*>(A.data());
            const float* pb = static_cast<const float*>(B.data());
            if (!trans_a && !trans_b) seqrec::gemm_bf16(Cm, CM(pa, M, K), CM(pb, K, N), false);
            else if (trans_a && !trans_b) seqrec::gemm_bf16(Cm, CM(pa, K, M).transpose(), CM(pb, K, N), false);
            else if (!trans_a) seqrec::gemm_bf16(Cm, CM(pa, M, K), CM(pb, N, K).transpose(), false);
            else seqrec::gemm_bf16(Cm, CM(pa, K, M).transpose(), CM(pb, N, K).transpose(), false);
          }
          return C;
        },
        py::arg("A"), py::arg("B"), py::arg("trans_a") = false, py::arg("trans_b") = false,
        "C (M, N) = op(A) · op(B) with both operands rounded to bfloat16 (nearest even) and float32 "
        "accumulation: the product of precision='bf16' training. A (M, K) float32, or (K, M) with "
        "trans_a; B (K, N) float32, or (N, K) with trans_b. Raises ValueError where bf16_available() "
        "is False.");
  m.def("max_threads", &max_threads, "OpenMP's default thread count (1 without OpenMP).");
  // Thread policy of every kernel's parallel loop (parallel.h; issue 14).
  m.def("parallel_backend", &seqrec::parallel_backend,
        "'pool' (the work-claiming pool, default) or 'openmp' (SEQREC_PARALLEL=openmp).");
  m.def("set_parallel_backend", [](const std::string& name) {
          if (!seqrec::set_parallel_backend(name)) {
            throw py::value_error("parallel backend must be 'pool'" +
                                  std::string(seqrec::have_openmp() ? " or 'openmp'" : "") +
                                  ", got '" + name + "'");
          }
        }, py::arg("name"), "Select the backend of every parallel loop (process-wide).");
  m.def("pool_spin_us", []() { return seqrec::detail::Pool::instance().spin_us(); },
        "How long (µs) an idle pool thread spins before it sleeps (SEQREC_SPIN_US, default 20).");
  m.def("set_pool_spin_us", [](long us) {
          if (us < 0) throw py::value_error("spin_us must be >= 0, got " + std::to_string(us));
          seqrec::detail::Pool::instance().set_spin_us(us);
        }, py::arg("us"), "Set how long (µs) idle pool threads spin before they sleep.");
  m.def("pool_solo_ms", []() { return seqrec::detail::Pool::instance().solo_ms(); },
        "How long (ms) a caller runs its parallel loops alone after a helper thread stalled one "
        "(it lost its core to another process) (SEQREC_SOLO_MS, default 100; 0: never).");
  m.def("set_pool_solo_ms", [](long ms) {
          if (ms < 0 || ms > 86400000L) {
            throw py::value_error("solo_ms must be between 0 and 86,400,000 (a day), got " +
                                  std::to_string(ms));
          }
          seqrec::detail::Pool::instance().set_solo_ms(ms);
        }, py::arg("ms"), "Set the back-off after a stalled helper (ms; 0 turns it off).");
  m.def("pool_backoffs", []() {
          auto& pool = seqrec::detail::Pool::instance();
          py::dict d;
          d["stalled"] = pool.stalled_backoffs();
          d["shared_cpu"] = pool.shared_backoffs();
          return d;
        },
        "How many times the pool backed off to the calling thread alone, by cause: 'stalled' (a "
        "helper held a chunk while off its core), 'shared_cpu' (the helper kept running on the "
        "caller's CPU).");
  m.def("pool_workers", []() { return seqrec::detail::Pool::instance().workers(); },
        "Worker threads the pool has started (the calling thread is not counted).");
  m.def("eigen_simd", []() { return std::string(Eigen::SimdInstructionSetsInUse()); },
        "The SIMD instruction sets Eigen was compiled for.");
  py::options opts;

  m.def("rnn_forward",
        [](py::object x, py::object h, py::object W_x, py::object W_h, py::object b, int nt) {
          py::tuple out = cell_forward<Cell::RNN>("rnn_forward", x, h, py::none(), W_x, W_h, b, nt);
          return py::object(out[0]);
        },
        py::arg("x"), py::arg("h"), py::arg("W_x"), py::arg("W_h"), py::arg("b"),
        py::arg("num_threads") = 1,
        "One Elman step h' = tanh(x·W_x + h·W_h + b).\n\n"
        "x (B, E), h (B, H), W_x (E, H), W_h (H, H), b (H,); float32 or float64, C-contiguous.\n"
        "Returns h_new (B, H).");
  m.def("rnn_backward",
        [](py::object dh_new, py::object x, py::object h, py::object h_new, py::object W_x,
           py::object W_h, int nt) {
          return cell_backward<Cell::RNN>("rnn_backward", dh_new, py::none(), x, h, py::none(), h_new,
                                          py::none(), py::none(), W_x, W_h, nt);
        },
        py::arg("dh_new"), py::arg("x"), py::arg("h"), py::arg("h_new"), py::arg("W_x"),
        py::arg("W_h"), py::arg("num_threads") = 1,
        "Backward of rnn_forward. Returns (dx, dh, dW_x, dW_h, db).");
  m.def("gru_forward",
        [](py::object x, py::object h, py::object W_x, py::object W_h, py::object b, int nt) {
          return cell_forward<Cell::GRU>("gru_forward", x, h, py::none(), W_x, W_h, b, nt);
        },
        py::arg("x"), py::arg("h"), py::arg("W_x"), py::arg("W_h"), py::arg("b"),
        py::arg("num_threads") = 1,
        "One GRU4Rec GRU step (reset gate before the hidden product).\n\n"
        "x (B, E), h (B, H), W_x (E, 3H), W_h (H, 3H), b (3H,), gate blocks [r | z | c].\n"
        "Returns (h_new (B, H), gates (B, 3H) = activated [r, z, c]).");
  m.def("gru_backward",
        [](py::object dh_new, py::object x, py::object h, py::object gates, py::object W_x,
           py::object W_h, int nt) {
          return cell_backward<Cell::GRU>("gru_backward", dh_new, py::none(), x, h, py::none(),
                                          py::none(), py::none(), gates, W_x, W_h, nt);
        },
        py::arg("dh_new"), py::arg("x"), py::arg("h"), py::arg("gates"), py::arg("W_x"),
        py::arg("W_h"), py::arg("num_threads") = 1,
        "Backward of gru_forward. Returns (dx, dh, dW_x, dW_h, db).");
  m.def("lstm_forward",
        [](py::object x, py::object h, py::object c, py::object W_x, py::object W_h, py::object b,
           int nt) { return cell_forward<Cell::LSTM>("lstm_forward", x, h, c, W_x, W_h, b, nt); },
        py::arg("x"), py::arg("h"), py::arg("c"), py::arg("W_x"), py::arg("W_h"), py::arg("b"),
        py::arg("num_threads") = 1,
        "One LSTM step. x (B, E), h and c (B, H), W_x (E, 4H), W_h (H, 4H), b (4H,), gate blocks\n"
        "[i | f | g | o]. Returns (h_new, c_new, gates (B, 4H) activated).");
  m.def("lstm_backward",
        [](py::object dh_new, py::object dc_new, py::object x, py::object h, py::object c,
           py::object c_new, py::object gates, py::object W_x, py::object W_h, int nt) {
          return cell_backward<Cell::LSTM>("lstm_backward", dh_new, dc_new, x, h, c, py::none(),
                                           c_new, gates, W_x, W_h, nt);
        },
        py::arg("dh_new"), py::arg("dc_new"), py::arg("x"), py::arg("h"), py::arg("c"),
        py::arg("c_new"), py::arg("gates"), py::arg("W_x"), py::arg("W_h"),
        py::arg("num_threads") = 1,
        "Backward of lstm_forward. Returns (dx, dh, dc, dW_x, dW_h, db).");
  m.def("sequence_forward", &sequence_forward, py::arg("cell"), py::arg("X"), py::arg("h0"),
        py::arg("c0"), py::arg("reset"), py::arg("weights"), py::arg("drop") = py::none(),
        py::arg("num_threads") = 1,
        "Forward over a window of T steps through L stacked layers.\n\n"
        "cell: 'rnn' | 'gru' | 'lstm'. X (T, B, E). h0: list of L arrays (B, H_l); c0: same for lstm,\n"
        "else None. reset: None or (T, B) bool/uint8, nonzero zeroes the row's carried state before\n"
        "step t. weights: list of L (W_x (I_l, G*H_l), W_h (H_l, G*H_l), b (G*H_l,)).\n"
        "drop: None or a list of L (T, B, H_l) dropout multipliers on each layer's output (the\n"
        "dropped-out output is also the carried state).\n"
        "Returns (Y (T, B, H_L), h_last list, c_last list or None, cache list of per-layer dicts).");
  m.def("pack_table", &pack_table, py::arg("W"),
        "Packs an item table (N, D) (float32, uint16 bfloat16 bits or int8) into the serving layout\n"
        "(ceil(N/16), D, 16): 16 items' weights contiguous per dimension. topk and step_topk accept it\n"
        "wherever they take a table; scores are the same sums in the same order.");
  m.def("topk", &topk, py::arg("H"), py::arg("W_y"), py::arg("b_y"), py::arg("k"),
        py::arg("exclude") = py::none(), py::arg("scales") = py::none(), py::arg("num_threads") = 1,
        "Top-k items per query by H·W_y[j] + b_y[j], fused with blocked scoring.\n\n"
        "H (n, D) float32; W_y (N, D) float32, or uint16 bfloat16 bits, or int8 with scales (N,);\n"
        "b_y (N,) float32; exclude: None or int32 (n, m) padded with -1. Ties go to the lower index.\n"
        "Returns (idx int32 (n, min(k, N)), scores float32); idx -1 / score -inf past the eligible.");
  m.def("step_topk", &step_topk, py::arg("cell"), py::arg("embedding"), py::arg("weights"),
        py::arg("E_in"), py::arg("W_y"), py::arg("b_y"), py::arg("h"), py::arg("c"), py::arg("items"),
        py::arg("k"), py::arg("exclude") = py::none(), py::arg("table") = py::none(),
        py::arg("scales") = py::none(), py::arg("num_threads") = 1,
        "One serving event for n sessions in one call: advance the states h (and c) in place by\n"
        "items (n,) int32, then the top k of the new outputs (see topk). table/scales: an optional\n"
        "reduced-precision copy of W_y for scoring. Returns (idx, scores).");
  m.def("rank_candidates", &rank_candidates, py::arg("H"), py::arg("W_y"), py::arg("b_y"),
        py::arg("candidates"), py::arg("num_threads") = 1,
        "Scores only the candidate rows of the item table and orders them, per query.\n\n"
        "H (n, D), W_y (N, D), b_y (N,): float32 or float64, one dtype; candidates (n, C) int32 in\n"
        "[0, N) (callers drop duplicates). Score y_j = H·W_y[j] + b_y[j] (float32: bit-identical to\n"
        "topk over the row-major W_y). Order: higher score first, NaN last, ties to the lower index.\n"
        "Returns (idx int32 (n, C) the candidates in that order, scores (n, C)).");
  m.def("step_rank", &step_rank, py::arg("cell"), py::arg("embedding"), py::arg("weights"),
        py::arg("E_in"), py::arg("W_y"), py::arg("b_y"), py::arg("h"), py::arg("c"), py::arg("items"),
        py::arg("candidates"), py::arg("num_threads") = 1,
        "One event and a re-ranking in one call: advance the states h (and c) in place by items (n,)\n"
        "int32 (as step_topk), then rank_candidates of the new outputs against candidates (n, C).\n"
        "float32 or float64 (the dtype of W_y). Returns (idx, scores).");
  m.def("score_rank_counts", &score_rank_counts, py::arg("H"), py::arg("W_y"), py::arg("b_y"),
        py::arg("target"), py::arg("num_threads") = 1, py::arg("exclude") = py::none(),
        "Counts, per query, the items scoring above and at least the target's score.\n\n"
        "H (n, D) final hidden states; W_y (N, D), b_y (N,) the output table; target (n,) int32.\n"
        "For float32, W_y may also be pack_table(W_y) (callers that score many batches against one\n"
        "table pack it once). Scores y_j = H·W_y[j] + b_y[j] are computed in register tiles (never an\n"
        "(n, N) array); a NaN target score counts as the worst: gt = ge = N.\n"
        "exclude: None or int32 (n, m) padded with -1: per query, items removed from the ranking\n"
        "(not counted; duplicates count once; the target itself is always ranked), e.g. the items a\n"
        "user interacted with before (leave-one-out evaluation). A NaN target then gets N - #removed.\n"
        "Returns (gt (n,) int64, ge (n,) int64).");
  m.def("loss_grad", &loss_grad, py::arg("R"), py::arg("pos"), py::arg("config"),
        py::arg("num_threads") = 1,
        "The training loss of a score matrix, row by row, and its gradient.\n\n"
        "R (n, C) float32/float64 scores; pos (n,) int32 column of each row's positive;\n"
        "config: loss ('cross-entropy', 'bpr-max', 'top1-max'), elu_param, bpreg.\n"
        "Returns (loss (n,), grad (n, C)), before division by the batch size.");
  m.def("alias_pick", &alias_pick, py::arg("col"), py::arg("u"), py::arg("prob"), py::arg("alias"),
        "The alias method's last step: out = where(u < prob[col], col, alias[col]) in one pass.\n"
        "col int32 (any shape, values in [0, n)), u float64 (the shape of col), prob float64 (n,),\n"
        "alias int32 (n,). Returns int32 of col's shape. (AliasSampler.draw.)");
  m.def("opt_update_rows", &opt_update_rows, py::arg("config"), py::arg("step"), py::arg("rows"),
        py::arg("G"), py::arg("p"), py::arg("s1"), py::arg("s2"), py::arg("num_threads") = 1,
        "Lazy optimizer update, in place, of the distinct rows (r,) int32 of a table p (N, W) from\n"
        "their summed gradients G (r, W). s1: Adagrad accumulator / Adam m; s2: momentum / Adam v,\n"
        "or None for Adagrad without momentum. config: optimizer ('adagrad', 'adam'),\n"
        "learning_rate, momentum, beta1, beta2, eps; step: 1-based update count.");
  m.def("train_chunk", &train_chunk, py::arg("cell"), py::arg("embedding"), py::arg("params"),
        py::arg("state1"), py::arg("state2"), py::arg("hidden"), py::arg("cell_state"), py::arg("x"),
        py::arg("y"), py::arg("reset"), py::arg("neg"), py::arg("drop_embed"), py::arg("drop_hidden"),
        py::arg("log_support"), py::arg("config"), py::arg("num_threads") = 1,
        py::arg("features") = py::none(),
        "Trains on K windows of T steps (T = bptt) of B session-parallel slots, in place.\n\n"
        "params: [W_x, W_h, b] per layer, then W_y (N, H_L), b_y (N,), and E_in (N, E) in\n"
        "'separate' mode; state1/state2: optimizer state of the same shapes (Adagrad: accumulator,\n"
        "momentum; Adam: m, v; state2 entries may be None for Adagrad without momentum).\n"
        "hidden: list of L (B, H_l) carried states (updated); cell_state: same for lstm, else None.\n"
        "x, y: (K, T, B) int32 input and target items, -1 for an idle slot; reset: (K, T, B) uint8;\n"
        "neg: (K, T, S) int32 sampled negatives or None; drop_embed: (K, T, B, I_0) or None;\n"
        "drop_hidden: list of L (K, T, B, H_l) (or None entries) or None; log_support: (N,) log item\n"
        "support (needed when logq > 0). config: loss, bpreg, elu_param, logq, sample_alpha,\n"
        "full_softmax, batch_size, optimizer, learning_rate, momentum, beta1, beta2, eps, step.\n"
        "Returns (losses (K,), counts (K,), windows_done, non_finite, updates). A window whose loss\n"
        "is NaN/inf is not applied, and the call returns there with non_finite = True.\n"
        "features: None, or the item feature matrix F (N, F_dim); then params ends with P\n"
        "(F_dim, H_L) and every item vector is W_y[j] + F[j]·P (output side; input side too\n"
        "when constrained); P gets the gradient of the rows touched in each window.");
  m.def("sequence_backward", &sequence_backward, py::arg("cell"), py::arg("dY"), py::arg("dh_last"),
        py::arg("dc_last"), py::arg("X"), py::arg("reset"), py::arg("weights"), py::arg("cache"),
        py::arg("drop") = py::none(), py::arg("num_threads") = 1,
        "Truncated BPTT over the window of sequence_forward. dY (T, B, H_L); dh_last / dc_last:\n"
        "None or lists of (B, H_l). Returns (dX (T, B, E), dh0 list, dc0 list or None,\n"
        "grads list of (dW_x, dW_h, db)).");
}
