#pragma once
/// \file
/// The plain twin of every kernel in the table: scalar loops straight from
/// the formula, in double, no tiles, no vectors. Tests run each target's
/// kernels against these; they are also what the kernels mean.

#include <kvattn/kernels/common.hpp>

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

/// Code j of a quantized block as stored (kBlockBytes: Q8_0 or Q4_0).
template <Index kBlockBytes>
int quant_code_ref(const std::uint8_t* block, Index j) {
  if constexpr (kBlockBytes == kQ8_0Bytes) {
    return int(std::int8_t(block[2 + j]));
  } else {
    const std::uint8_t byte = block[2 + (j % 16)];
    return int(j < 16 ? byte & 15 : byte >> 4) - 8;
  }
}

/// QGemvFn's sum in double: sum_b d(w_ib) d(x_b) sum_j code_ibj x_bj (the
/// quantized activations' own value, rounded once at the end).
template <Index kBlockBytes>
void gemv_q_ref(const std::uint8_t* w, Index row_bytes, Index rows, const BlockQ8_0* x,
                Index n_blocks, float* y) {
  for (Index i = 0; i < rows; ++i) {
    double sum = 0;
    for (Index b = 0; b < n_blocks; ++b) {
      const std::uint8_t* block = w + i * row_bytes + b * kBlockBytes;
      std::uint16_t d;
      std::memcpy(&d, block, 2);
      double dot = 0;
      for (Index j = 0; j < kQuantBlock; ++j)
        dot += quant_code_ref<kBlockBytes>(block, j) * x[b].qs[j];
      sum += double(half_bits_to_float(d)) * double(half_bits_to_float(x[b].d)) * dot;
    }
    y[i] = float(sum);
  }
}

/// The float-activation twin: sum_j dequantized w_ij times x_j (floats, not
/// quantized), in double.
template <Index kBlockBytes>
void gemv_q_float_ref(const std::uint8_t* w, Index row_bytes, Index rows, const float* x,
                      Index n_blocks, double* y) {
  for (Index i = 0; i < rows; ++i) {
    double sum = 0;
    for (Index b = 0; b < n_blocks; ++b) {
      const std::uint8_t* block = w + i * row_bytes + b * kBlockBytes;
      std::uint16_t d;
      std::memcpy(&d, block, 2);
      for (Index j = 0; j < kQuantBlock; ++j) {
        sum += double(half_bits_to_float(d)) * quant_code_ref<kBlockBytes>(block, j) *
               double(x[b * kQuantBlock + j]);
      }
    }
    y[i] = sum;
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
