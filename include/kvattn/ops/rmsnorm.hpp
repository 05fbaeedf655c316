#pragma once
/// \file
/// RMSNorm, row by row:
///
///   y = x / sqrt(mean(x^2) + eps) * w        (elementwise with w)
///
///   x: [n x d] (a token per row), w: [d], y: [n x d]; y may alias x.
///
/// The sum of squares adds in one fixed order (eight interleaved partial
/// sums, combined pairwise), so a row's result depends on its values only,
/// never on where the row sits in memory or in a batch.

#include <kvattn/types.hpp>

#include <cmath>

namespace kvattn::ops {

/// sum_i x[i]^2 in the fixed order above.
template <class T>
T sum_of_squares(const T* x, Eigen::Index n) {
  T acc[8] = {};
  Eigen::Index i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += x[i + k] * x[i + k];
  }
  for (int k = 0; i < n; ++i, ++k) acc[k] += x[i] * x[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <class T>
void rmsnorm_rows(const Eigen::Ref<const RowMatrix<T>>& x, const Eigen::Ref<const Vector<T>>& w,
                  T eps, Eigen::Ref<RowMatrix<T>> y) {
  eigen_assert(x.cols() == w.size() && y.rows() == x.rows() && y.cols() == x.cols());
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    const T mean_square = sum_of_squares(x.data() + r * x.outerStride(), x.cols()) / T(x.cols());
    const T inv = T(1) / std::sqrt(mean_square + eps);
    for (Eigen::Index i = 0; i < x.cols(); ++i) y(r, i) = (x(r, i) * inv) * w(i);
  }
}

}  // namespace kvattn::ops
