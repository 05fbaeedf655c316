#pragma once
/// \file
/// The products of ops/linear.hpp for weights kept as a StoredMatrix (Weight
/// = kvattn::Stored, T = float), each band by its own kernel: F32, F16 and
/// BF16 bands as dense weights are (ops/linear.hpp), Q8_0 and Q4_0 bands by
/// integer dot products against the vectors quantized to Q8_0 blocks
/// (kernels/quantize.hpp), quantized once per product for all its bands, as
/// llama.cpp's CPU kernels multiply. A quantized band computes every row of
/// every vector the same way, one token or a prompt: its results do not
/// depend on the batch, the split or the thread count.

#include <kvattn/kernels/kernels.hpp>
#include <kvattn/kernels/quantize.hpp>
#include <kvattn/ops/linear.hpp>
#include <kvattn/ops/stored_matrix.hpp>
#include <kvattn/types.hpp>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace kvattn::ops {

namespace detail {

template <class W>
Eigen::Map<const RowMatrix<W>> band_map(const StoredMatrix::Band& b, Eigen::Index cols) {
  return Eigen::Map<const RowMatrix<W>>(reinterpret_cast<const W*>(b.data), b.rows, cols);
}

// A float band: the decode product (few) or the prefill one.
template <class W>
void dense_band(const StoredMatrix::Band& b, Eigen::Index cols, const float* x, Eigen::Index xs,
                Eigen::Index batch, float* y, Eigen::Index ys, bool few) {
  if (few) {
    gemm_few<float, W>(band_map<W>(b, cols), x, xs, batch, y + b.first, ys);
    return;
  }
  using Strided = Eigen::OuterStride<>;
  Eigen::Map<const RowMatrix<float>, 0, Strided> in(x, batch, cols, Strided(xs));
  Eigen::Map<RowMatrix<float>, 0, Strided> out(y + b.first, batch, b.rows, Strided(ys));
  linear_batch<float, W>(band_map<W>(b, cols), Vector<float>(), in, out);
}

// A Q8_0 or Q4_0 band against `batch` vectors in Q8_0 (vector c at xq + c * nb):
// blocks of 64 rows on OpenMP threads, each block against every vector while
// its rows are in cache.
inline void quant_band(const StoredMatrix::Band& b, Eigen::Index cols, const kernels::BlockQ8_0* xq,
                       Eigen::Index batch, float* y, Eigen::Index ys) {
  const kernels::KernelTable& k = kernels::active();
  const kernels::QGemvFn fn = b.type == ggml::Q8_0 ? k.gemv_q8_0 : k.gemv_q4_0;
  const Eigen::Index nb = cols / kernels::kQuantBlock;
  constexpr Eigen::Index kBlock = 64;
  const Eigen::Index parts = (b.rows + kBlock - 1) / kBlock;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (b.rows * b.row_bytes * batch >= \
                                              (Eigen::Index(1) << 20))
#endif
  for (Eigen::Index p = 0; p < parts; ++p) {
    const Eigen::Index r0 = p * kBlock, n = std::min(kBlock, b.rows - r0);
    for (Eigen::Index c = 0; c < batch; ++c) {
      fn(b.data + r0 * b.row_bytes, b.row_bytes, n, xq + c * nb, nb, y + c * ys + b.first + r0);
    }
  }
}

// The calling thread's Q8_0 activations (grown, never shrunk: steady-state
// decoding allocates nothing).
inline std::vector<kernels::BlockQ8_0>& q8_activations() {
  thread_local std::vector<kernels::BlockQ8_0> blocks;
  return blocks;
}

}  // namespace detail

/// y_c = W x_c for `batch` vectors x_c at x + c * xs ([cols]) into y_c at
/// y + c * ys ([rows]). few: the float bands use the decode product
/// (gemm_few), otherwise the prefill one (linear_batch).
inline void stored_product(const StoredMatrix& w, const float* x, Eigen::Index xs,
                           Eigen::Index batch, float* y, Eigen::Index ys, bool few) {
  if (batch == 0) return;
  const kernels::BlockQ8_0* xq = nullptr;
  const Eigen::Index nb = w.cols() / kernels::kQuantBlock;
  for (const StoredMatrix::Band& b : w.bands()) {
    if (xq == nullptr && (b.type == ggml::Q8_0 || b.type == ggml::Q4_0)) {
      std::vector<kernels::BlockQ8_0>& blocks = detail::q8_activations();
      if (blocks.size() < size_t(batch * nb)) blocks.resize(size_t(batch * nb));
      for (Eigen::Index c = 0; c < batch; ++c) {
        kernels::quantize_q8_0(x + c * xs, w.cols(), blocks.data() + c * nb);
      }
      xq = blocks.data();
    }
  }
  for (const StoredMatrix::Band& b : w.bands()) {
    switch (b.type) {
      case ggml::F32:
        detail::dense_band<float>(b, w.cols(), x, xs, batch, y, ys, few);
        break;
      case ggml::F16:
        detail::dense_band<Eigen::half>(b, w.cols(), x, xs, batch, y, ys, few);
        break;
      case ggml::BF16:
        detail::dense_band<Eigen::bfloat16>(b, w.cols(), x, xs, batch, y, ys, few);
        break;
      default:  // Q8_0 or Q4_0: StoredMatrix holds no other type
        detail::quant_band(b, w.cols(), xq, batch, y, ys);
    }
  }
}

template <class W>
using IfStored = std::enable_if_t<std::is_same<W, Stored>::value, int>;

/// gemm_few for stored weights.
template <class T, class W, IfStored<W> = 0>
void gemm_few(const StoredMatrix& w, const T* x, Eigen::Index xs, Eigen::Index batch, T* y,
              Eigen::Index ys) {
  static_assert(std::is_same<T, float>::value, "stored weights need float compute");
  stored_product(w, x, xs, batch, y, ys, true);
}

/// gemv for stored weights.
template <class T, class W, IfStored<W> = 0>
void gemv(const StoredMatrix& w, const T* x, T* y) {
  gemm_few<T, W>(w, x, w.cols(), 1, y, w.rows());
}

/// linear_few for stored weights.
template <class T, class W, IfStored<W> = 0>
void linear_few(const StoredMatrix& w, const Eigen::Ref<const Vector<T>>& b,
                const Eigen::Ref<const RowMatrix<T>>& x, Eigen::Ref<RowMatrix<T>> y) {
  eigen_assert(w.cols() == x.cols() && w.rows() == y.cols() && x.rows() == y.rows());
  if (x.rows() == 0) return;
  gemm_few<T, W>(w, x.data(), x.outerStride(), x.rows(), y.data(), y.outerStride());
  if (b.size() != 0) y.rowwise() += b.transpose();
}

/// linear for stored weights.
template <class T, class W, IfStored<W> = 0>
void linear(const StoredMatrix& w, const Eigen::Ref<const Vector<T>>& b,
            const Eigen::Ref<const Vector<T>>& x, Eigen::Ref<Vector<T>> y) {
  eigen_assert(w.cols() == x.size() && w.rows() == y.size());
  gemv<T, W>(w, x.data(), y.data());
  if (b.size() != 0) y += b;
}

/// linear_batch for stored weights: float bands by the prefill product,
/// quantized bands exactly as one token at a time.
template <class T, class W, IfStored<W> = 0>
void linear_batch(const StoredMatrix& w, const Eigen::Ref<const Vector<T>>& b,
                  const Eigen::Ref<const RowMatrix<T>>& x, Eigen::Ref<RowMatrix<T>> y) {
  static_assert(std::is_same<T, float>::value, "stored weights need float compute");
  eigen_assert(w.cols() == x.cols() && w.rows() == y.cols() && x.rows() == y.rows());
  stored_product(w, x.data(), x.outerStride(), x.rows(), y.data(), y.outerStride(), x.rows() == 1);
  if (b.size() != 0) y.rowwise() += b.transpose();
}

}  // namespace kvattn::ops
