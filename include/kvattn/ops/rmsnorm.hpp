#pragma once
/// \file
/// RMSNorm, row by row:
///
///   y = x / sqrt(mean(x^2) + eps) * w        (elementwise with w)
///
///   x: [n x d] (a token per row), w: [d], y: [n x d]; y may alias x.

#include <kvattn/types.hpp>

#include <cmath>

namespace kvattn::ops {

template <class T>
void rmsnorm_rows(const Eigen::Ref<const RowMatrix<T>>& x, const Eigen::Ref<const Vector<T>>& w,
                  T eps, Eigen::Ref<RowMatrix<T>> y) {
  eigen_assert(x.cols() == w.size() && y.rows() == x.rows() && y.cols() == x.cols());
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    const T mean_square = x.row(r).squaredNorm() / T(x.cols());
    const T inv = T(1) / std::sqrt(mean_square + eps);
    y.row(r) = (x.row(r).array() * inv) * w.transpose().array();
  }
}

}  // namespace kvattn::ops
