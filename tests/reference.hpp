#pragma once
// The plain, obviously-correct implementation that the library is tested
// against: double precision, explicit loops straight from the formulas, no
// cache, no fused matrices, no tiling. It shares only the config and weight
// structs with the library.

#include <kvattn/config.hpp>
#include <kvattn/layers/multi_head_attention.hpp>

#include <cmath>
#include <vector>

namespace reference {

using kvattn::AttentionConfig;
using kvattn::RopeStyle;
using Mat = kvattn::RowMatrix<double>;
using Vec = kvattn::Vector<double>;

// y = W x + b, W [out x in].
inline Vec linear(const Mat& w, const Vec& b, const Vec& x) {
  Vec y(w.rows());
  for (Eigen::Index o = 0; o < w.rows(); ++o) {
    double acc = b.size() ? b(o) : 0.0;
    for (Eigen::Index i = 0; i < w.cols(); ++i) acc += w(o, i) * x(i);
    y(o) = acc;
  }
  return y;
}

// RoPE of every head of one token x [k*head_dim] at position pos.
inline Vec rope(const Vec& x, Eigen::Index head_dim, RopeStyle style, double theta,
                Eigen::Index pos) {
  Vec y = x;
  if (style == RopeStyle::None) return y;
  const Eigen::Index half = head_dim / 2;
  for (Eigen::Index h = 0; h < x.size() / head_dim; ++h) {
    for (Eigen::Index i = 0; i < half; ++i) {
      const double angle = double(pos) * std::pow(theta, -2.0 * double(i) / double(head_dim));
      const Eigen::Index a = h * head_dim + (style == RopeStyle::Interleaved ? 2 * i : i);
      const Eigen::Index b = a + (style == RopeStyle::Interleaved ? 1 : half);
      y(a) = x(a) * std::cos(angle) - x(b) * std::sin(angle);
      y(b) = x(a) * std::sin(angle) + x(b) * std::cos(angle);
    }
  }
  return y;
}

// Causal self-attention over the whole sequence x [n x d_model], recomputing
// everything: token t attends tokens 0..t. Returns [n x d_model].
inline Mat attention(const AttentionConfig& c, const kvattn::AttentionWeights<double>& w,
                     const Mat& x) {
  const Eigen::Index n = x.rows(), hd = c.head_dim;
  const Eigen::Index group = c.n_heads / c.n_kv_heads;
  std::vector<Vec> q(n), k(n), v(n);
  for (Eigen::Index t = 0; t < n; ++t) {
    const Vec xt = x.row(t).transpose();
    q[t] = rope(linear(w.wq, w.bq, xt), hd, c.rope, c.rope_theta, t);
    k[t] = rope(linear(w.wk, w.bk, xt), hd, c.rope, c.rope_theta, t);
    v[t] = linear(w.wv, w.bv, xt);
  }
  const double scale = c.score_scale ? *c.score_scale : 1.0 / std::sqrt(double(hd));
  Mat y(n, c.d_model);
  for (Eigen::Index t = 0; t < n; ++t) {
    Vec heads = Vec::Zero(c.n_heads * hd);
    for (Eigen::Index h = 0; h < c.n_heads; ++h) {
      const Eigen::Index kvh = h / group;
      std::vector<double> s(static_cast<size_t>(t + 1));
      double m = -INFINITY;
      for (Eigen::Index j = 0; j <= t; ++j) {
        double dot = 0;
        for (Eigen::Index d = 0; d < hd; ++d) dot += q[t](h * hd + d) * k[j](kvh * hd + d);
        s[size_t(j)] = scale * dot;
        m = std::max(m, s[size_t(j)]);
      }
      double sum = 0;
      for (double& e : s) sum += (e = std::exp(e - m));
      for (Eigen::Index j = 0; j <= t; ++j) {
        for (Eigen::Index d = 0; d < hd; ++d) {
          heads(h * hd + d) += s[size_t(j)] / sum * v[j](kvh * hd + d);
        }
      }
    }
    y.row(t) = linear(w.wo, w.bo, heads).transpose();
  }
  return y;
}

}  // namespace reference
