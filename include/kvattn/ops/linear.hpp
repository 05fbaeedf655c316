#pragma once
/// \file
/// Stateless affine maps on Eigen views. Shapes are checked with eigen_assert
/// only; the classes in layers/ check them at their public entry points.

#include <kvattn/types.hpp>

#include <algorithm>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace kvattn::ops {

/// y = W x, split into blocks of output rows run on OpenMP threads when the
/// matrix is large enough to pay for them (each row's sum is computed the
/// same way whatever the thread count, so results do not depend on it).
///   W: [out x in], x: [in] (contiguous), y: [out] (contiguous).
template <class T>
void gemv(const Eigen::Ref<const RowMatrix<T>>& w, const T* x, T* y) {
  const Eigen::Index out = w.rows(), in = w.cols();
  const Eigen::Map<const Vector<T>> xv(x, in);
  if (out * in * Eigen::Index(sizeof(T)) < (Eigen::Index(1) << 20)) {
    // Small: one product inline (a parallel region costs more than it saves).
    Eigen::Map<Vector<T>>(y, out).noalias() = w * xv;
    return;
  }
  // Large: blocks of rows; the split depends on the shape only, so every row
  // is computed the same way with any number of threads.
  constexpr Eigen::Index kBlock = 64;
  const Eigen::Index blocks = (out + kBlock - 1) / kBlock;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (Eigen::Index b = 0; b < blocks; ++b) {
    const Eigen::Index r0 = b * kBlock, n = std::min(kBlock, out - r0);
    Eigen::Map<Vector<T>>(y + r0, n).noalias() = w.middleRows(r0, n) * xv;
  }
}

/// y = W x + b, one token.
///   W: [out x in], b: [out] or empty (no bias), x: [in], y: [out].
template <class T>
void linear(const Eigen::Ref<const RowMatrix<T>>& w, const Eigen::Ref<const Vector<T>>& b,
            const Eigen::Ref<const Vector<T>>& x, Eigen::Ref<Vector<T>> y) {
  eigen_assert(w.cols() == x.size() && w.rows() == y.size());
  eigen_assert(b.size() == 0 || b.size() == y.size());
  gemv<T>(w, x.data(), y.data());
  if (b.size() != 0) y += b;
}

/// Y = X W^T + 1 b^T, a batch of tokens (one per row).
///   W: [out x in], b: [out] or empty, X: [n x in], Y: [n x out].
template <class T>
void linear_batch(const Eigen::Ref<const RowMatrix<T>>& w, const Eigen::Ref<const Vector<T>>& b,
                  const Eigen::Ref<const RowMatrix<T>>& x, Eigen::Ref<RowMatrix<T>> y) {
  eigen_assert(w.cols() == x.cols() && w.rows() == y.cols() && x.rows() == y.rows());
  eigen_assert(b.size() == 0 || b.size() == y.cols());
  if (x.rows() == 1) {
    gemv<T>(w, x.data(), y.data());  // one token: a matrix-vector product, threaded
  } else {
    y.noalias() = x * w.transpose();  // Eigen's matrix product (threaded by Eigen under OpenMP)
  }
  if (b.size() != 0) y.rowwise() += b.transpose();
}

}  // namespace kvattn::ops
