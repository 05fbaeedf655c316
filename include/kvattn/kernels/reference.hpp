#pragma once
/// \file
/// The plain twin of every kernel in the table: scalar loops straight from
/// the formula, in double, no tiles, no vectors. Tests run each target's
/// kernels against these; they are also what the kernels mean.

#include <kvattn/kernels/types.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace kvattn::kernels {

/// Row r of a span as the kernels read it: the stored value times the row's scale.
template <class S>
double stored_value(const S* row, const float* scales, Index r, Index d) {
  const double x = double(static_cast<float>(row[d]));
  return scales != nullptr ? x * double(scales[r]) : x;
}

/// ChunkTask in double: s_rj = scale q_r.k_j, m_r = max_j s_rj,
/// l_r = sum_j e^(s_rj - m_r), acc_r = sum_j e^(s_rj - m_r) v_j.
template <class S>
void attend_ref(const ChunkTask<S>& t) {
  const Index g = t.g, hd = t.hd;
  for (Index r = 0; r < g; ++r) {
    std::vector<double> s;
    for (Index i = 0; i < t.n_spans; ++i) {
      const KVSpan<S>& sp = t.spans[i];
      for (Index j = 0; j < sp.rows; ++j) {
        double dot = 0;
        for (Index d = 0; d < hd; ++d) {
          dot += double(t.q[r * hd + d]) * stored_value(sp.k + j * sp.stride, sp.k_scales, j, d);
        }
        s.push_back(double(t.scale) * dot);
      }
    }
    const double m = *std::max_element(s.begin(), s.end());
    double l = 0;
    std::vector<double> acc(size_t(hd), 0.0);
    size_t at = 0;
    for (Index i = 0; i < t.n_spans; ++i) {
      const KVSpan<S>& sp = t.spans[i];
      for (Index j = 0; j < sp.rows; ++j, ++at) {
        const double e = std::exp(s[at] - m);
        l += e;
        for (Index d = 0; d < hd; ++d) {
          acc[size_t(d)] += e * stored_value(sp.v + j * sp.stride, sp.v_scales, j, d);
        }
      }
    }
    t.m[r] = float(m);
    t.l[r] = float(l);
    for (Index d = 0; d < hd; ++d) t.acc[r * hd + d] = float(acc[size_t(d)]);
  }
}

/// y[b*ys + i] = sum_d w[i*ws + d] x[b*xs + d], in double.
template <class W>
void gemm_ref(const W* w, Index ws, Index rows, Index in, const float* x, Index xs, Index batch,
              float* y, Index ys) {
  for (Index b = 0; b < batch; ++b) {
    for (Index i = 0; i < rows; ++i) {
      double sum = 0;
      for (Index d = 0; d < in; ++d) {
        sum += double(static_cast<float>(w[i * ws + d])) * double(x[b * xs + d]);
      }
      y[b * ys + i] = float(sum);
    }
  }
}

/// a[i] = a[i] / (1 + exp(-a[i])) * b[i], in double.
inline void silu_mul_ref(float* a, const float* b, Index n) {
  for (Index i = 0; i < n; ++i) {
    const double x = a[i];
    a[i] = float(x / (1.0 + std::exp(-x)) * double(b[i]));
  }
}

}  // namespace kvattn::kernels
