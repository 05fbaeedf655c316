#pragma once
/// \file
/// Stateless affine maps on Eigen views. Shapes are checked with eigen_assert
/// only; the classes in layers/ check them at their public entry points.

#include <kvattn/types.hpp>

namespace kvattn::ops {

/// y = W x + b, one token.
///   W: [out x in], b: [out] or empty (no bias), x: [in], y: [out].
template <class T>
void linear(const Eigen::Ref<const RowMatrix<T>>& w, const Eigen::Ref<const Vector<T>>& b,
            const Eigen::Ref<const Vector<T>>& x, Eigen::Ref<Vector<T>> y) {
  eigen_assert(w.cols() == x.size() && w.rows() == y.size());
  eigen_assert(b.size() == 0 || b.size() == y.size());
  y.noalias() = w * x;
  if (b.size() != 0) y += b;
}

/// Y = X W^T + 1 b^T, a batch of tokens (one per row).
///   W: [out x in], b: [out] or empty, X: [n x in], Y: [n x out].
template <class T>
void linear_batch(const Eigen::Ref<const RowMatrix<T>>& w, const Eigen::Ref<const Vector<T>>& b,
                  const Eigen::Ref<const RowMatrix<T>>& x, Eigen::Ref<RowMatrix<T>> y) {
  eigen_assert(w.cols() == x.cols() && w.rows() == y.cols() && x.rows() == y.rows());
  eigen_assert(b.size() == 0 || b.size() == y.cols());
  y.noalias() = x * w.transpose();
  if (b.size() != 0) y.rowwise() += b.transpose();
}

}  // namespace kvattn::ops
