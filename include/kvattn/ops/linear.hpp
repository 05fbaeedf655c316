#pragma once
/// \file
/// Stateless affine maps on Eigen views. Shapes are checked with eigen_assert
/// only; the classes in layers/ check them at their public entry points.
///
/// Weights W [out x in] are stored as W (the compute type T, or bfloat16 /
/// half for T = float: half the bytes a decode step reads); the arithmetic
/// is always in T. One token is a matrix-vector product that reads each
/// weight once, widening reduced weights in registers (no converted copy).

#include <kvattn/kernels/kernels.hpp>
#include <kvattn/ops/scratch.hpp>
#include <kvattn/types.hpp>

#include <algorithm>
#include <type_traits>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace kvattn::ops {

/// W in the signatures below is given explicitly (or defaults to T), never
/// deduced from the argument: a RowMatrix binds to the Ref parameters.
template <class W>
struct NonDeduced {
  using type = W;
};
template <>
struct NonDeduced<Stored> {};  // no dense view: ops/stored_linear.hpp has their products
template <class W>
using WeightRef = Eigen::Ref<const RowMatrix<typename NonDeduced<W>::type>>;

/// Y[c][i] = w_i . x_c for the rows of a block of W (one thread's part of
/// gemm_few) and `batch` vectors x_c at x + c * xs; y_c at y + c * ys.
/// float: the active kernel target (each element's bits independent of the
/// batch and the block); other T: Eigen's product.
template <class T, class W>
void gemm_block(const WeightRef<W>& w, const T* x, Eigen::Index xs, Eigen::Index batch, T* y,
                Eigen::Index ys) {
  if constexpr (std::is_same<T, float>::value) {
    kernels::active().gemm<W>()(w.data(), w.outerStride(), w.rows(), w.cols(), x, xs, batch, y, ys);
  } else {
    static_assert(std::is_same<W, T>::value, "reduced weights need float compute");
    using Strided = Eigen::Map<RowMatrix<T>, 0, Eigen::OuterStride<>>;
    using ConstStrided = Eigen::Map<const RowMatrix<T>, 0, Eigen::OuterStride<>>;
    Strided(y, batch, w.rows(), Eigen::OuterStride<>(ys)).noalias() =
        ConstStrided(x, batch, w.cols(), Eigen::OuterStride<>(xs)) * w.transpose();
  }
}

/// Y = X W^T for a few vectors (decode: one token per sequence), split into
/// blocks of output rows run on OpenMP threads when the matrix is large
/// enough to pay for them. The split depends on the shape only, and with
/// float each element is computed the same way in any block and batch: a
/// vector's result does not depend on the thread count or on the others.
///   W: [out x in] stored as W;  x_c at x + c * xs ([in]);  y_c at y + c * ys ([out]).
template <class T, class W = T>
void gemm_few(const WeightRef<W>& w, const T* x, Eigen::Index xs, Eigen::Index batch, T* y,
              Eigen::Index ys) {
  const Eigen::Index out = w.rows();
  if (out * w.cols() * Eigen::Index(sizeof(W)) < (Eigen::Index(1) << 20)) {
    gemm_block<T, W>(w, x, xs, batch, y, ys);  // small: a parallel region costs more than it saves
    return;
  }
  // One vector: blocks of 64 rows. Several: one contiguous range of rows per
  // thread, so that each thread's kernel hints its next rows into cache
  // across the whole range. Either split leaves every element's bits alone.
  constexpr Eigen::Index kBlock = 64;
  if constexpr (std::is_same<T, float>::value)
    (void)kernels::active();  // any error, before the threads
  const Eigen::Index parts = batch == 1 ? (out + kBlock - 1) / kBlock
                                        : Eigen::Index(std::max(1, kvattn::detail::max_threads()));
  const Eigen::Index per = batch == 1 ? kBlock : ((out + parts - 1) / parts + 15) / 16 * 16;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (Eigen::Index b = 0; b < parts; ++b) {
    const Eigen::Index r0 = std::min(out, b * per), n = std::min(per, out - r0);
    if (n > 0) gemm_block<T, W>(w.middleRows(r0, n), x, xs, batch, y + r0, ys);
  }
}

/// y = W x, one vector: gemm_few with one column.
template <class T, class W = T>
void gemv(const WeightRef<W>& w, const T* x, T* y) {
  gemm_few<T, W>(w, x, w.cols(), 1, y, w.rows());
}

/// Y = X W^T + 1 b^T for a few tokens (one per row of X), every row
/// computed exactly as a one-token product would: the batched decode path.
///   W: [out x in], b: [out] or empty, X: [n x in], Y: [n x out].
template <class T, class W = T>
void linear_few(const WeightRef<W>& w, const Eigen::Ref<const Vector<T>>& b,
                const Eigen::Ref<const RowMatrix<T>>& x, Eigen::Ref<RowMatrix<T>> y) {
  eigen_assert(w.cols() == x.cols() && w.rows() == y.cols() && x.rows() == y.rows());
  eigen_assert(b.size() == 0 || b.size() == y.cols());
  if (x.rows() == 0) return;
  gemm_few<T, W>(w, x.data(), x.outerStride(), x.rows(), y.data(), y.outerStride());
  if (b.size() != 0) y.rowwise() += b.transpose();
}

/// y = W x + b, one token.
///   W: [out x in], b: [out] or empty (no bias), x: [in], y: [out].
template <class T, class W = T>
void linear(const WeightRef<W>& w, const Eigen::Ref<const Vector<T>>& b,
            const Eigen::Ref<const Vector<T>>& x, Eigen::Ref<Vector<T>> y) {
  eigen_assert(w.cols() == x.size() && w.rows() == y.size());
  eigen_assert(b.size() == 0 || b.size() == y.size());
  gemv<T, W>(w, x.data(), y.data());
  if (b.size() != 0) y += b;
}

/// Y = X W^T + 1 b^T, a batch of tokens (one per row).
///   W: [out x in], b: [out] or empty, X: [n x in], Y: [n x out].
/// Reduced weights are widened to T a block of rows at a time (the block is
/// allocated per call: prefill, unlike decode, may allocate).
template <class T, class W = T>
void linear_batch(const WeightRef<W>& w, const Eigen::Ref<const Vector<T>>& b,
                  const Eigen::Ref<const RowMatrix<T>>& x, Eigen::Ref<RowMatrix<T>> y) {
  eigen_assert(w.cols() == x.cols() && w.rows() == y.cols() && x.rows() == y.rows());
  eigen_assert(b.size() == 0 || b.size() == y.cols());
  if (x.rows() == 1) {
    gemv<T, W>(w, x.data(), y.data());  // one token: a matrix-vector product, threaded
  } else if constexpr (std::is_same<W, T>::value) {
    y.noalias() = x * w.transpose();  // Eigen's matrix product (threaded by Eigen under OpenMP)
  } else {
    constexpr Eigen::Index kRows = 256;
    RowMatrix<T> block(std::min(kRows, w.rows()), w.cols());
    for (Eigen::Index r0 = 0; r0 < w.rows(); r0 += kRows) {
      const Eigen::Index n = std::min(kRows, w.rows() - r0);
      block.topRows(n) = w.middleRows(r0, n).template cast<T>();
      y.middleCols(r0, n).noalias() = x * block.topRows(n).transpose();
    }
  }
  if (b.size() != 0) y.rowwise() += b.transpose();
}

}  // namespace kvattn::ops
