#pragma once
/// \file
/// Linear (y = W x + b) and QKVProjection (q = Wq x, k = Wk x, v = Wv x).
///
/// Both take their weights in the compute type T and keep them as the
/// template parameter Weight: T itself (default), or, for T = float,
/// Eigen::bfloat16 or Eigen::half, rounded once at construction (as a KV
/// cache stores its rows: round to nearest even; half saturates at +-65504).
/// Reduced weights halve the bytes a decode step reads; the products still
/// accumulate in T. Weight = kvattn::Stored (T = float) keeps each matrix as
/// a StoredMatrix (ops/stored_matrix.hpp): the constructors then also take
/// StoredMatrix weights, kept as they come (a GGUF file's Q8_0 or Q4_0
/// tensors, say), while float weights become an F32 StoredMatrix.

#include <kvattn/cache/storage.hpp>
#include <kvattn/config.hpp>
#include <kvattn/error.hpp>
#include <kvattn/ops/linear.hpp>
#include <kvattn/ops/stored_linear.hpp>
#include <kvattn/types.hpp>

#include <type_traits>
#include <utility>

namespace kvattn {

namespace detail {

/// How a layer keeps its weights: T itself, or bfloat16 / half / Stored for float.
template <class T, class Weight>
struct WeightTraits {
  static_assert(std::is_same<Weight, T>::value || (std::is_same<T, float>::value &&
                                                   (std::is_same<Weight, Eigen::bfloat16>::value ||
                                                    std::is_same<Weight, Eigen::half>::value ||
                                                    std::is_same<Weight, Stored>::value)),
                "weights must be stored as the compute type T, or as Eigen::bfloat16, "
                "Eigen::half or kvattn::Stored when T is float");
};

/// The matrix a layer keeps for Weight: RowMatrix<Weight>, or StoredMatrix.
template <class Weight>
using WeightMatrix =
    std::conditional_t<std::is_same<Weight, Stored>::value, StoredMatrix, RowMatrix<Weight>>;

/// The matrices a layer is built from: RowMatrix<T>, or for Stored a
/// StoredMatrix (float matrices convert with StoredMatrix::encode).
template <class T, class Weight>
using InputMatrix =
    std::conditional_t<std::is_same<Weight, Stored>::value, StoredMatrix, RowMatrix<T>>;

/// dst = src rounded to Weight row by row (encode_row: the cache's rounding).
template <class T, class Weight>
StoredMatrix encoded_weights(StoredMatrix&& w) {
  static_assert(std::is_same<Weight, Stored>::value, "a StoredMatrix is kept by Weight = Stored");
  return std::move(w);
}

template <class T, class Weight>
void encode_weights(const Eigen::Ref<const RowMatrix<T>>& src, Eigen::Ref<RowMatrix<Weight>> dst) {
  eigen_assert(src.rows() == dst.rows() && src.cols() == dst.cols());
  for (Eigen::Index r = 0; r < src.rows(); ++r) {
    encode_row<T, Weight>(src.row(r).data(), src.cols(), dst.row(r).data(), nullptr);
  }
}

template <class T, class Weight>
WeightMatrix<Weight> encoded_weights(RowMatrix<T>&& w) {
  if constexpr (std::is_same<Weight, T>::value) {
    return std::move(w);
  } else if constexpr (std::is_same<Weight, Stored>::value) {
    return w.size() == 0 ? StoredMatrix() : StoredMatrix::encode(w);  // empty: the caller says why
  } else {
    RowMatrix<Weight> out(w.rows(), w.cols());
    encode_weights<T, Weight>(w, out);
    return out;
  }
}

}  // namespace detail

/// y = W x + b with W: [out x in] (row-major, as nn.Linear stores it) and
/// b: [out] or empty (no bias). W is kept as Weight (see the file comment).
template <class T, class Weight = T>
class Linear : detail::WeightTraits<T, Weight> {
 public:
  using Scalar = T;
  using WeightType = Weight;

  /// Throws std::invalid_argument if weight is empty or bias is neither empty
  /// nor of size weight.rows().
  explicit Linear(RowMatrix<T> weight, Vector<T> bias = Vector<T>())
      : w_(detail::encoded_weights<T, Weight>(std::move(weight))), b_(std::move(bias)) {
    check();
  }

  /// Weight = Stored: the matrix kept as it comes (same checks).
  template <class W = Weight, std::enable_if_t<std::is_same<W, Stored>::value, int> = 0>
  explicit Linear(StoredMatrix weight, Vector<T> bias = Vector<T>())
      : w_(std::move(weight)), b_(std::move(bias)) {
    check();
  }

  Eigen::Index in_features() const { return w_.cols(); }
  Eigen::Index out_features() const { return w_.rows(); }
  const detail::WeightMatrix<Weight>& weight() const { return w_; }  ///< [out x in]
  const Vector<T>& bias() const { return b_; }                       ///< [out] or empty
  bool has_bias() const { return b_.size() != 0; }

  /// One token: x [in] -> y [out].
  Vector<T> forward(const Eigen::Ref<const Vector<T>>& x) const {
    check_in("Linear::forward", x.size(), "elements");
    Vector<T> y(out_features());
    ops::linear<T, Weight>(w_, b_, x, y);
    return y;
  }

  /// One token into existing storage: x [in], y [out]; allocates nothing
  /// (Stored: but the first Q8_0 / Q4_0 product may grow its thread's scratch).
  void forward(const Eigen::Ref<const Vector<T>>& x, Eigen::Ref<Vector<T>> y) const {
    check_in("Linear::forward", x.size(), "elements");
    detail::check_size("Linear::forward", "y", y.size(), "out_features", out_features());
    ops::linear<T, Weight>(w_, b_, x, y);
  }

  /// A batch: X [n x in] -> Y [n x out], one token per row.
  RowMatrix<T> forward_batch(const Eigen::Ref<const RowMatrix<T>>& x) const {
    check_in("Linear::forward_batch", x.cols(), "columns");
    RowMatrix<T> y(x.rows(), out_features());
    ops::linear_batch<T, Weight>(w_, b_, x, y);
    return y;
  }

  /// A batch into existing storage: X [n x in], Y [n x out].
  void forward_batch(const Eigen::Ref<const RowMatrix<T>>& x, Eigen::Ref<RowMatrix<T>> y) const {
    check_in("Linear::forward_batch", x.cols(), "columns");
    detail::check_shape("Linear::forward_batch", "y", y.rows(), y.cols(),
                        "[x.rows() x out_features]", x.rows(), out_features());
    ops::linear_batch<T, Weight>(w_, b_, x, y);
  }

 private:
  void check() const {
    constexpr const char* fn = "Linear";
    if (w_.rows() == 0 || w_.cols() == 0) {
      throw std::invalid_argument(detail::concat(fn, ": weight has shape ",
                                                 detail::shape_str(w_.rows(), w_.cols()),
                                                 ", expected a non-empty [out x in] matrix"));
    }
    if (b_.size() != 0) detail::check_size(fn, "bias", b_.size(), "out_features", w_.rows());
  }
  void check_in(const char* fn, Eigen::Index n, const char* unit) const {
    if (n != in_features()) {
      throw std::invalid_argument(
          detail::concat(fn, ": x has ", n, " ", unit, ", expected in_features = ", in_features()));
    }
  }

  detail::WeightMatrix<Weight> w_;  // [out x in]
  Vector<T> b_;                     // [out] or empty
};

/// q, k, v for a batch: q [n x n_heads*head_dim], k and v [n x n_kv_heads*head_dim].
template <class T>
struct QKV {
  RowMatrix<T> q, k, v;
};

/// The three distinct projections of attention: q = Wq x + bq, k = Wk x + bk,
/// v = Wv x + bv, with Wq: [n_heads*head_dim x d_model] and Wk, Wv:
/// [n_kv_heads*head_dim x d_model].
///
/// The three matrices are stored stacked in one [q_dim + 2*kv_dim x d_model]
/// matrix so that one pass over the weights (one matrix-vector product on
/// decode) produces q | k | v side by side. wq(), wk(), wv() are views of it.
/// The weights are kept as Weight (see the file comment).
template <class T, class Weight = T>
class QKVProjection : detail::WeightTraits<T, Weight> {
 public:
  using Scalar = T;
  using WeightType = Weight;

  /// Throws std::invalid_argument if the config is invalid or a weight or bias
  /// shape does not match it. Empty biases mean no bias.
  QKVProjection(const AttentionConfig& config, const Eigen::Ref<const RowMatrix<T>>& wq,
                const Eigen::Ref<const RowMatrix<T>>& wk, const Eigen::Ref<const RowMatrix<T>>& wv,
                const Eigen::Ref<const Vector<T>>& bq = Vector<T>(),
                const Eigen::Ref<const Vector<T>>& bk = Vector<T>(),
                const Eigen::Ref<const Vector<T>>& bv = Vector<T>())
      : d_model_(config.d_model), q_dim_(config.q_dim()), kv_dim_(config.kv_dim()) {
    check(config, wq, wk, wv, bq, bk, bv);
    if constexpr (kStored) {
      RowMatrix<T> all(out_dim(), d_model_);
      all << wq, wk, wv;
      w_ = StoredMatrix::encode(all);
    } else {
      w_.resize(out_dim(), d_model_);
      detail::encode_weights<T, Weight>(wq, w_.topRows(q_dim_));
      detail::encode_weights<T, Weight>(wk, w_.middleRows(q_dim_, kv_dim_));
      detail::encode_weights<T, Weight>(wv, w_.bottomRows(kv_dim_));
    }
  }

  /// Weight = Stored: the three matrices kept as they come, stacked without
  /// a copy (each may have its own type). Same checks.
  template <class W = Weight, std::enable_if_t<std::is_same<W, Stored>::value, int> = 0>
  QKVProjection(const AttentionConfig& config, const StoredMatrix& wq, const StoredMatrix& wk,
                const StoredMatrix& wv, const Eigen::Ref<const Vector<T>>& bq = Vector<T>(),
                const Eigen::Ref<const Vector<T>>& bk = Vector<T>(),
                const Eigen::Ref<const Vector<T>>& bv = Vector<T>())
      : d_model_(config.d_model), q_dim_(config.q_dim()), kv_dim_(config.kv_dim()) {
    check(config, wq, wk, wv, bq, bk, bv);
    w_ = StoredMatrix::stack({&wq, &wk, &wv});
  }

  Eigen::Index d_model() const { return d_model_; }
  Eigen::Index q_dim() const { return q_dim_; }                  ///< n_heads*head_dim
  Eigen::Index kv_dim() const { return kv_dim_; }                ///< n_kv_heads*head_dim
  Eigen::Index out_dim() const { return q_dim_ + 2 * kv_dim_; }  ///< width of q | k | v

  /// A view of some rows of the stacked weight (a StoredMatrix for Stored).
  using RowsView = std::conditional_t<std::is_same<Weight, Stored>::value, StoredMatrix,
                                      Eigen::Map<const RowMatrix<Weight>>>;
  /// Wq: [n_heads*head_dim x d_model].
  RowsView wq() const { return rows(0, q_dim_); }
  /// Wk: [n_kv_heads*head_dim x d_model].
  RowsView wk() const { return rows(q_dim_, kv_dim_); }
  /// Wv: [n_kv_heads*head_dim x d_model].
  RowsView wv() const { return rows(q_dim_ + kv_dim_, kv_dim_); }
  /// The stacked [Wq; Wk; Wv]: [q_dim + 2*kv_dim x d_model].
  const detail::WeightMatrix<Weight>& stacked_weight() const { return w_; }
  /// The stacked [bq; bk; bv] ([q_dim + 2*kv_dim], missing parts zero) or empty.
  const Vector<T>& stacked_bias() const { return b_; }

  /// x [n x d_model] -> qkv [n x q_dim + 2*kv_dim]: columns [0, q_dim) are q,
  /// then kv_dim columns of k, then kv_dim of v. Allocates nothing.
  void project(const Eigen::Ref<const RowMatrix<T>>& x, Eigen::Ref<RowMatrix<T>> qkv) const {
    constexpr const char* fn = "QKVProjection::project";
    detail::check_cols(fn, "x", x.cols(), "d_model", d_model_);
    detail::check_shape(fn, "qkv", qkv.rows(), qkv.cols(), "[x.rows() x q_dim+2*kv_dim]", x.rows(),
                        out_dim());
    ops::linear_batch<T, Weight>(w_, b_, x, qkv);
  }

  /// A batch: x [n x d_model] -> q [n x q_dim], k and v [n x kv_dim].
  QKV<T> forward_batch(const Eigen::Ref<const RowMatrix<T>>& x) const {
    detail::check_cols("QKVProjection::forward_batch", "x", x.cols(), "d_model", d_model_);
    RowMatrix<T> qkv(x.rows(), out_dim());
    ops::linear_batch<T, Weight>(w_, b_, x, qkv);
    return QKV<T>{qkv.leftCols(q_dim_), qkv.middleCols(q_dim_, kv_dim_), qkv.rightCols(kv_dim_)};
  }

  /// One token: x [d_model] -> q [1 x q_dim], k and v [1 x kv_dim].
  QKV<T> forward(const Eigen::Ref<const Vector<T>>& x) const {
    detail::check_size("QKVProjection::forward", "x", x.size(), "d_model", d_model_);
    return forward_batch(Eigen::Map<const RowMatrix<T>>(x.data(), 1, x.size()));
  }

 private:
  static constexpr bool kStored = std::is_same<Weight, Stored>::value;

  // Checks the config and every shape; sets the stacked bias.
  template <class M>
  void check(const AttentionConfig& config, const M& wq, const M& wk, const M& wv,
             const Eigen::Ref<const Vector<T>>& bq, const Eigen::Ref<const Vector<T>>& bk,
             const Eigen::Ref<const Vector<T>>& bv) {
    constexpr const char* fn = "QKVProjection";
    config.validate();
    detail::check_shape(fn, "wq", wq.rows(), wq.cols(), "[n_heads*head_dim x d_model]", q_dim_,
                        d_model_);
    detail::check_shape(fn, "wk", wk.rows(), wk.cols(), "[n_kv_heads*head_dim x d_model]", kv_dim_,
                        d_model_);
    detail::check_shape(fn, "wv", wv.rows(), wv.cols(), "[n_kv_heads*head_dim x d_model]", kv_dim_,
                        d_model_);
    if (bq.size() != 0) detail::check_size(fn, "bq", bq.size(), "n_heads*head_dim", q_dim_);
    if (bk.size() != 0) detail::check_size(fn, "bk", bk.size(), "n_kv_heads*head_dim", kv_dim_);
    if (bv.size() != 0) detail::check_size(fn, "bv", bv.size(), "n_kv_heads*head_dim", kv_dim_);
    if (bq.size() + bk.size() + bv.size() != 0) {
      b_.setZero(out_dim());
      if (bq.size() != 0) b_.head(q_dim_) = bq;
      if (bk.size() != 0) b_.segment(q_dim_, kv_dim_) = bk;
      if (bv.size() != 0) b_.tail(kv_dim_) = bv;
    }
  }

  RowsView rows(Eigen::Index first, Eigen::Index n) const {
    if constexpr (kStored) {
      return w_.middle_rows(first, n);
    } else {
      return Eigen::Map<const RowMatrix<Weight>>(w_.data() + first * d_model_, n, d_model_);
    }
  }

  Eigen::Index d_model_, q_dim_, kv_dim_;
  detail::WeightMatrix<Weight> w_;  // [q_dim + 2*kv_dim x d_model]: Wq, Wk, Wv stacked
  Vector<T> b_;                     // [q_dim + 2*kv_dim] or empty
};

}  // namespace kvattn
