#pragma once
/// \file
/// Stateless affine maps on Eigen views. Shapes are checked with eigen_assert
/// only; the classes in layers/ check them at their public entry points.
///
/// Weights W [out x in] are stored as W (the compute type T, or bfloat16 /
/// half for T = float: half the bytes a decode step reads); the arithmetic
/// is always in T. One token is a matrix-vector product that reads each
/// weight once, widening reduced weights in registers (no converted copy).

#include <kvattn/ops/simd.hpp>
#include <kvattn/types.hpp>

#include <algorithm>
#include <type_traits>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace kvattn::ops {

#if defined(KVATTN_SIMD_AVX2)
namespace simd {

/// y[i] = w_i . x for rows i < n, row i at w + i * stride, as stored
/// (bfloat16 or half: widened in registers; the last in % 8 columns one at
/// a time).
/// Eight rows at a time, one 8-lane accumulator each, reduced together
/// (sum8) and stored as one vector: eight weight streams in flight read
/// faster than four or one (measured: bfloat16 at 1 thread, 100 MB matrix,
/// about 19 GB/s against 17 with four rows and 12 with one). The row
/// grouping depends only on i, so a row's sum does not depend on how the
/// rows are split between threads.
template <class W>
void matvec(const W* w, Eigen::Index stride, Eigen::Index n, Eigen::Index in, const float* x,
            float* y) {
  const Eigen::Index in8 = in - in % 8;
  // Adds the columns past in8 of row r to its vector sum.
  const auto tail = [&](const W* r, float sum) {
    for (Eigen::Index d = in8; d < in; ++d) sum += static_cast<float>(r[d]) * x[d];
    return sum;
  };
  Eigen::Index i = 0;
  for (; i + 8 <= n; i += 8) {
    const W* r = w + i * stride;
    __m256 a[8];
    for (__m256& v : a) v = _mm256_setzero_ps();
    for (Eigen::Index d = 0; d < in8; d += 8) {
      const __m256 xv = _mm256_loadu_ps(x + d);
      a[0] = _mm256_fmadd_ps(load8(r + d), xv, a[0]);
      a[1] = _mm256_fmadd_ps(load8(r + stride + d), xv, a[1]);
      a[2] = _mm256_fmadd_ps(load8(r + 2 * stride + d), xv, a[2]);
      a[3] = _mm256_fmadd_ps(load8(r + 3 * stride + d), xv, a[3]);
      a[4] = _mm256_fmadd_ps(load8(r + 4 * stride + d), xv, a[4]);
      a[5] = _mm256_fmadd_ps(load8(r + 5 * stride + d), xv, a[5]);
      a[6] = _mm256_fmadd_ps(load8(r + 6 * stride + d), xv, a[6]);
      a[7] = _mm256_fmadd_ps(load8(r + 7 * stride + d), xv, a[7]);
    }
    _mm256_storeu_ps(y + i, sum8(a));
    if (in8 < in) {
      for (Eigen::Index k = 0; k < 8; ++k) y[i + k] = tail(r + k * stride, y[i + k]);
    }
  }
  for (; i < n; ++i) {
    const W* r = w + i * stride;
    __m256 a = _mm256_setzero_ps();
    for (Eigen::Index d = 0; d < in8; d += 8) a = _mm256_fmadd_ps(load8(r + d), load8(x + d), a);
    y[i] = tail(r, sum1(a));
  }
}

}  // namespace simd
#endif

/// W in the signatures below is given explicitly (or defaults to T), never
/// deduced from the argument: a RowMatrix binds to the Ref parameters.
template <class W>
struct NonDeduced {
  using type = W;
};
template <class W>
using WeightRef = Eigen::Ref<const RowMatrix<typename NonDeduced<W>::type>>;

/// y[i] = w_i . x for rows [0, w.rows()) of a block of W (one thread's part
/// of gemv).
template <class T, class W>
void gemv_block(const WeightRef<W>& w, const Eigen::Map<const Vector<T>>& x, T* y) {
  const Eigen::Index n = w.rows();
  if constexpr (std::is_same<W, T>::value) {
    Eigen::Map<Vector<T>>(y, n).noalias() = w * x;
  } else {
#if defined(KVATTN_SIMD_AVX2)
    if constexpr (std::is_same<T, float>::value) {
      simd::matvec(w.data(), w.outerStride(), n, w.cols(), x.data(), y);
      return;
    }
#endif
    for (Eigen::Index i = 0; i < n; ++i) y[i] = w.row(i).template cast<T>().dot(x.transpose());
  }
}

/// y = W x, split into blocks of output rows run on OpenMP threads when the
/// matrix is large enough to pay for them (each row's sum is computed the
/// same way whatever the thread count, so results do not depend on it).
///   W: [out x in] stored as W, x: [in] (contiguous), y: [out] (contiguous).
template <class T, class W = T>
void gemv(const WeightRef<W>& w, const T* x, T* y) {
  const Eigen::Index out = w.rows(), in = w.cols();
  const Eigen::Map<const Vector<T>> xv(x, in);
  if (out * in * Eigen::Index(sizeof(W)) < (Eigen::Index(1) << 20)) {
    // Small: one product inline (a parallel region costs more than it saves).
    gemv_block<T, W>(w, xv, y);
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
    gemv_block<T, W>(w.middleRows(r0, n), xv, y + r0);
  }
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
