#pragma once
/// \file
/// Numerically stable softmax.
///
///   p_i = exp(x_i - m) / sum_j exp(x_j - m),  m = max_j x_j
///
/// Subtracting the maximum keeps every exponent <= 0, so nothing overflows and
/// the largest term is exactly 1 (the sum is >= 1, never 0).

#include <kvattn/error.hpp>
#include <kvattn/types.hpp>

namespace kvattn {
namespace ops {

/// Softmax of x[0..n) in place; n >= 1. Plain-pointer form used by the kernels.
template <class T>
void softmax_inplace(T* x, Eigen::Index n) {
  eigen_assert(n >= 1);
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> a(x, n);
  const T m = a.maxCoeff();
  a = (a - m).exp();
  a *= T(1) / a.sum();
}

}  // namespace ops

/// Softmax of a vector in place. Throws std::invalid_argument if x is empty.
template <class T>
void softmax_inplace(Eigen::Ref<Vector<T>> x) {
  detail::check_arg(x.size() > 0, "softmax_inplace", "x.size()", x.size(), "> 0");
  ops::softmax_inplace(x.data(), x.size());
}

/// Softmax of a vector, returned.
template <class T>
Vector<T> softmax(const Eigen::Ref<const Vector<T>>& x) {
  Vector<T> p = x;
  softmax_inplace<T>(p);
  return p;
}

/// Softmax of each row of x in place (x: [rows x n], n >= 1).
template <class T>
void softmax_rows_inplace(Eigen::Ref<RowMatrix<T>> x) {
  detail::check_arg(x.cols() > 0, "softmax_rows_inplace", "x.cols()", x.cols(), "> 0");
  for (Eigen::Index r = 0; r < x.rows(); ++r) ops::softmax_inplace(&x(r, 0), x.cols());
}

}  // namespace kvattn
