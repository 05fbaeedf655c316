#pragma once
/// \file
/// AttentionConfig: the shape of one attention layer, and its validation.

#include <kvattn/error.hpp>

#include <Eigen/Core>
#include <cmath>
#include <optional>

namespace kvattn {

/// How rotary position embedding pairs the features of a head.
enum class RopeStyle {
  None,         ///< no rotary embedding
  Interleaved,  ///< rotate pairs (2i, 2i+1), as Meta's Llama and llama2.c do
  HalfSplit,    ///< rotate pairs (i, i + head_dim/2), as GPT-NeoX and HuggingFace do
};

/// Printable name of a RopeStyle.
inline const char* to_string(RopeStyle style) {
  switch (style) {
    case RopeStyle::None:
      return "None";
    case RopeStyle::Interleaved:
      return "Interleaved";
    case RopeStyle::HalfSplit:
      return "HalfSplit";
  }
  return "?";
}

/// Shape of one attention layer.
///
/// Query head h reads KV head h / group_size(), group_size() = n_heads / n_kv_heads:
/// n_kv_heads == n_heads is multi-head attention, 1 < n_kv_heads < n_heads is
/// grouped-query attention, n_kv_heads == 1 is multi-query attention.
struct AttentionConfig {
  Eigen::Index d_model = 0;     ///< width of the layer's input and output
  Eigen::Index n_heads = 0;     ///< query heads
  Eigen::Index n_kv_heads = 0;  ///< key/value heads; divides n_heads
  Eigen::Index head_dim = 0;    ///< features per head; even when rope != None
  RopeStyle rope = RopeStyle::None;
  double rope_theta =
      10000.0;  ///< RoPE base: pair i at position p turns by p * theta^(-2i/head_dim)
  std::optional<double> score_scale =
      std::nullopt;  ///< scores are scale * q.k; default 1/sqrt(head_dim)

  Eigen::Index group_size() const { return n_heads / n_kv_heads; }
  Eigen::Index q_dim() const { return n_heads * head_dim; }  ///< width of q: n_heads*head_dim
  Eigen::Index kv_dim() const {
    return n_kv_heads * head_dim;
  }  ///< width of k and v: n_kv_heads*head_dim
  double scale() const {
    return score_scale ? *score_scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
  }

  /// Throws std::invalid_argument naming the first impossible field.
  void validate() const {
    constexpr const char* fn = "AttentionConfig";
    detail::check_arg(d_model > 0, fn, "d_model", d_model, "> 0");
    detail::check_arg(n_heads > 0, fn, "n_heads", n_heads, "> 0");
    detail::check_arg(n_kv_heads > 0, fn, "n_kv_heads", n_kv_heads, "> 0");
    detail::check_arg(head_dim > 0, fn, "head_dim", head_dim, "> 0");
    if (n_heads % n_kv_heads != 0) {
      throw std::invalid_argument(detail::concat(
          fn, ": n_heads = ", n_heads, " is not a multiple of n_kv_heads = ", n_kv_heads));
    }
    if (rope != RopeStyle::None) {
      detail::check_arg(head_dim % 2 == 0, fn, "head_dim", head_dim, "even when rope is enabled");
      detail::check_arg(std::isfinite(rope_theta) && rope_theta > 0, fn, "rope_theta", rope_theta,
                        "finite and > 0");
    }
    if (score_scale) {
      detail::check_arg(std::isfinite(*score_scale), fn, "score_scale", *score_scale, "finite");
    }
  }
};

}  // namespace kvattn
