#pragma once
/// \file
/// Growing scratch buffers without losing them on std::bad_alloc.
///
/// Eigen's resize() releases the old buffer before allocating the new one, so
/// a failed allocation leaves the object pointing at freed memory. These
/// helpers allocate first and swap after, which cannot fail.

#include <Eigen/Core>

namespace kvattn::detail {

/// Ensures v has at least n elements (contents are scratch, not kept).
template <class V>
void grow(V& v, Eigen::Index n) {
  if (v.size() < n) {
    V bigger(n);
    v.swap(bigger);
  }
}

/// Gives m the shape rows x cols (contents are scratch, not kept).
template <class M>
void reshape_scratch(M& m, Eigen::Index rows, Eigen::Index cols) {
  if (m.rows() != rows || m.cols() != cols) {
    M other(rows, cols);
    m.swap(other);
  }
}

}  // namespace kvattn::detail
