#pragma once
/// \file
/// Rotary position embedding (RoPE).
///
/// For a head of width head_dim = 2*half and a token at absolute position p,
/// pair i (0 <= i < half) is rotated by the angle p * theta^(-2i/head_dim):
///
///   (a, b) -> (a cos - b sin, a sin + b cos)
///
/// Interleaved pairs features (2i, 2i+1) (Meta's Llama, llama2.c);
/// HalfSplit pairs (i, i + half) (GPT-NeoX, HuggingFace).
/// A dot product of a query rotated at m with a key rotated at n then
/// depends on the positions only through m - n.

#include <kvattn/config.hpp>
#include <kvattn/error.hpp>
#include <kvattn/types.hpp>

#include <cmath>
#include <vector>

namespace kvattn {

/// Applies RoPE to rows of heads laid side by side: x is [n x n_heads*head_dim],
/// row r is at absolute position first_pos + r.
template <class T>
class RotaryEmbedding {
 public:
  using Scalar = T;

  /// head_dim > 0, even unless style is None; theta finite and > 0.
  RotaryEmbedding(Eigen::Index head_dim, RopeStyle style, double theta = 10000.0)
      : head_dim_(head_dim), style_(style), theta_(theta) {
    constexpr const char* fn = "RotaryEmbedding";
    detail::check_arg(head_dim > 0, fn, "head_dim", head_dim, "> 0");
    if (style != RopeStyle::None) {
      detail::check_arg(head_dim % 2 == 0, fn, "head_dim", head_dim, "even when rope is enabled");
      detail::check_arg(std::isfinite(theta) && theta > 0, fn, "theta", theta, "finite and > 0");
      const Eigen::Index half = head_dim / 2;
      inv_freq_.resize(static_cast<size_t>(half));
      for (Eigen::Index i = 0; i < half; ++i) {
        inv_freq_[static_cast<size_t>(i)] =
            std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
      }
    }
  }

  Eigen::Index head_dim() const { return head_dim_; }
  RopeStyle style() const { return style_; }
  double theta() const { return theta_; }

  /// Angle of pair i at position pos: pos * theta^(-2i/head_dim).
  double angle(Eigen::Index pos, Eigen::Index i) const {
    return static_cast<double>(pos) * inv_freq_[static_cast<size_t>(i)];
  }

  /// Rotates every head of every row in place. x: [n x k*head_dim], row r at
  /// position first_pos + r. Throws std::invalid_argument if x.cols() is not a
  /// multiple of head_dim or first_pos < 0.
  void apply(Eigen::Ref<RowMatrix<T>> x, Eigen::Index first_pos) const {
    constexpr const char* fn = "RotaryEmbedding::apply";
    if (x.cols() % head_dim_ != 0) {
      throw std::invalid_argument(detail::concat(
          fn, ": x has ", x.cols(), " columns, expected a multiple of head_dim = ", head_dim_));
    }
    detail::check_arg(first_pos >= 0, fn, "first_pos", first_pos, ">= 0");
    if (style_ == RopeStyle::None) return;
    for (Eigen::Index r = 0; r < x.rows(); ++r) rotate_row(&x(r, 0), x.cols(), first_pos + r);
  }

  /// Rotates every head of one token in place. x: [k*head_dim] at position pos.
  void apply_token(Eigen::Ref<Vector<T>> x, Eigen::Index pos) const {
    Eigen::Map<RowMatrix<T>> row(x.data(), 1, x.size());
    apply(row, pos);
  }

 private:
  // Rotates the heads of one token: x[0..width), width a multiple of head_dim.
  void rotate_row(T* x, Eigen::Index width, Eigen::Index pos) const {
    const Eigen::Index half = head_dim_ / 2;
    // Interleaved: pair i is (2i, 2i+1); HalfSplit: (i, i+half).
    const Eigen::Index first_step = style_ == RopeStyle::Interleaved ? 2 : 1;
    const Eigen::Index partner = style_ == RopeStyle::Interleaved ? 1 : half;
    for (Eigen::Index i = 0; i < half; ++i) {
      const double a = angle(pos, i);
      const T c = static_cast<T>(std::cos(a));
      const T s = static_cast<T>(std::sin(a));
      for (Eigen::Index h = 0; h < width; h += head_dim_) {
        T* p0 = x + h + i * first_step;
        T* p1 = p0 + partner;
        const T a0 = *p0;
        const T a1 = *p1;
        *p0 = a0 * c - a1 * s;
        *p1 = a0 * s + a1 * c;
      }
    }
  }

  Eigen::Index head_dim_;
  RopeStyle style_;
  double theta_;
  std::vector<double> inv_freq_;  // [head_dim/2]: theta^(-2i/head_dim)
};

}  // namespace kvattn
