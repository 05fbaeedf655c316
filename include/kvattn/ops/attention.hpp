#pragma once
/// \file
/// Attention kernels over cached keys and values.
///
/// For a query q_r and cached keys k_0..k_{n-1} and values v_0..v_{n-1}:
///
///   s_j   = scale * q_r . k_j
///   p     = softmax(s)
///   out_r = sum_j p_j v_j
///
/// Heads are slices of a row: query head h is q[h*head_dim, (h+1)*head_dim).
/// Query head h reads KV head h / group_size, group_size = n_heads / n_kv_heads
/// (n_heads % n_kv_heads == 0). The group_size query heads that share a KV head
/// are contiguous in q and are processed together, so each cached key and value
/// row is read once per step rather than once per query head.
///
/// Kernels do not own memory and do not check shapes beyond eigen_assert; the
/// layer checks shapes before calling them.

#include <kvattn/detail/scratch.hpp>
#include <kvattn/ops/softmax.hpp>
#include <kvattn/types.hpp>

#include <algorithm>

namespace kvattn::ops {

/// S = scale * Q K^T.
///   Q: [n_q x head_dim], K: [n_k x head_dim], S: [n_q x n_k].
template <class T>
void attention_scores(const Eigen::Ref<const RowMatrix<T>>& q,
                      const Eigen::Ref<const RowMatrix<T>>& k, T scale,
                      Eigen::Ref<RowMatrix<T>> s) {
  eigen_assert(q.cols() == k.cols() && s.rows() == q.rows() && s.cols() == k.rows());
  s.noalias() = scale * (q * k.transpose());
}

/// One decode step for one KV head and the group of query heads that read it.
///   q:      [group x head_dim]   the group's query heads, contiguous
///   k, v:   [n_ctx x head_dim]   cached keys and values, contiguous rows; n_ctx >= 1
///   scores: [group x n_ctx]      scratch
///   out:    [group x head_dim]   out_r = sum_j softmax_j(scale * q_r . k_j) v_j
/// Reads each key and value row once; allocates nothing.
template <class T>
void attend_decode_group(const T* q, Eigen::Index group, Eigen::Index head_dim, const T* k,
                         const T* v, Eigen::Index n_ctx, T scale, T* scores, T* out) {
  eigen_assert(group >= 1 && head_dim >= 1 && n_ctx >= 1);
  using ConstRows = Eigen::Map<const RowMatrix<T>>;
  using ConstRow = Eigen::Map<const RowVector<T>>;
  const ConstRows Q(q, group, head_dim);
  const ConstRows K(k, n_ctx, head_dim);
  const ConstRows V(v, n_ctx, head_dim);
  Eigen::Map<RowMatrix<T>> S(scores, group, n_ctx);
  Eigen::Map<RowMatrix<T>> O(out, group, head_dim);

  // When one query head, or when this head's keys fit in L2 (so reading
  // them once per query head costs no memory traffic), each query head takes
  // two matrix-vector products, s = K q and o = V^T p, the fastest form in
  // cache.
  constexpr Eigen::Index kL2Bytes = Eigen::Index(256) << 10;
  if (group == 1 || n_ctx * head_dim * Eigen::Index(sizeof(T)) <= kL2Bytes) {
    for (Eigen::Index r = 0; r < group; ++r) {
      Eigen::Map<Vector<T>> s(scores + r * n_ctx, n_ctx);
      s.noalias() = K * Q.row(r).transpose();
      s *= scale;
      softmax_inplace(s.data(), n_ctx);
      O.row(r).transpose().noalias() = V.transpose() * s;
    }
    return;
  }

  // Scores: each key row is loaded once and dotted with every query of the group.
  for (Eigen::Index j = 0; j < n_ctx; ++j) {
    const ConstRow kj(k + j * head_dim, head_dim);
    for (Eigen::Index r = 0; r < group; ++r) S(r, j) = scale * Q.row(r).dot(kj);
  }
  for (Eigen::Index r = 0; r < group; ++r) softmax_inplace(&S(r, 0), n_ctx);
  // Weighted sum: each value row is loaded once and added into every output of the group.
  O.setZero();
  for (Eigen::Index j = 0; j < n_ctx; ++j) {
    const ConstRow vj(v + j * head_dim, head_dim);
    for (Eigen::Index r = 0; r < group; ++r) O.row(r) += S(r, j) * vj;
  }
}

/// Scratch memory of attend_causal, grown on demand and reused across calls.
template <class T>
struct AttentionScratch {
  Vector<T> q;       // [tile_rows x head_dim]  gathered query heads of one group
  Vector<T> scores;  // [tile_rows x n_ctx]
  Vector<T> out;     // [tile_rows x head_dim]

  /// Query tokens processed together in attend_causal (bounds the score buffer).
  static constexpr Eigen::Index tile_tokens = 32;

  /// Grows the buffers so attend_causal can run n_new tokens against n_ctx
  /// positions with the given group size. May throw std::bad_alloc; the
  /// buffers stay valid (their contents are scratch).
  void reserve(Eigen::Index n_new, Eigen::Index n_ctx, Eigen::Index group, Eigen::Index head_dim) {
    const Eigen::Index rows = std::min(n_new, tile_tokens) * group;
    detail::grow(q, rows * head_dim);
    detail::grow(scores, rows * n_ctx);
    detail::grow(out, rows * head_dim);
  }
};

/// Causal attention of n_new query tokens against a cache.
///   q:     [n_new x n_heads*head_dim]   token i is at absolute position first_pos + i
///   cache: holds at least first_pos + n_new tokens; token i attends positions 0..first_pos+i
///          (Cache provides n_kv_heads(), head_dim(), keys(h), values(h) as contiguous row views)
///   out:   [n_new x n_heads*head_dim]
///   scratch: reserved with reserve(n_new, first_pos + n_new, group, head_dim)
/// One token (n_new == 1) takes attend_decode_group; more tokens are processed
/// in tiles of AttentionScratch::tile_tokens with matrix products.
template <class T, class Cache>
void attend_causal(const Eigen::Ref<const RowMatrix<T>>& q, const Cache& cache,
                   Eigen::Index first_pos, Eigen::Index n_heads, T scale,
                   Eigen::Ref<RowMatrix<T>> out, AttentionScratch<T>& scratch) {
  const Eigen::Index n_new = q.rows();
  const Eigen::Index hd = cache.head_dim();
  const Eigen::Index n_kv = cache.n_kv_heads();
  const Eigen::Index g = n_heads / n_kv;
  eigen_assert(n_heads % n_kv == 0 && q.cols() == n_heads * hd && out.rows() == n_new &&
               out.cols() == q.cols() && first_pos + n_new <= cache.size());

  if (n_new == 1) {
    const Eigen::Index n_ctx = first_pos + 1;
    eigen_assert(scratch.scores.size() >= g * n_ctx);
    for (Eigen::Index h = 0; h < n_kv; ++h) {
      attend_decode_group<T>(q.data() + h * g * hd, g, hd, cache.keys(h).data(),
                             cache.values(h).data(), n_ctx, scale, scratch.scores.data(),
                             &out(0, h * g * hd));
    }
    return;
  }

  for (Eigen::Index h = 0; h < n_kv; ++h) {
    const typename Cache::View keys = cache.keys(h);
    const typename Cache::View values = cache.values(h);
    for (Eigen::Index i0 = 0; i0 < n_new; i0 += AttentionScratch<T>::tile_tokens) {
      const Eigen::Index i1 = std::min(n_new, i0 + AttentionScratch<T>::tile_tokens);
      const Eigen::Index rows = (i1 - i0) * g;  // row (i - i0)*g + r is token i, head h*g + r
      const Eigen::Index n_ctx = first_pos + i1;  // the tile's last token sees this many
      eigen_assert(scratch.scores.size() >= rows * n_ctx && scratch.q.size() >= rows * hd);
      Eigen::Map<RowMatrix<T>> Q(scratch.q.data(), rows, hd);
      Eigen::Map<RowMatrix<T>> S(scratch.scores.data(), rows, n_ctx);
      Eigen::Map<RowMatrix<T>> O(scratch.out.data(), rows, hd);
      for (Eigen::Index i = i0; i < i1; ++i) {
        for (Eigen::Index r = 0; r < g; ++r) {
          Q.row((i - i0) * g + r) = q.row(i).segment((h * g + r) * hd, hd);
        }
      }
      S.noalias() = scale * (Q * keys.topRows(n_ctx).transpose());
      for (Eigen::Index i = i0; i < i1; ++i) {
        const Eigen::Index visible = first_pos + i + 1;  // causal mask: positions 0..first_pos+i
        for (Eigen::Index r = 0; r < g; ++r) {
          T* row = &S((i - i0) * g + r, 0);
          softmax_inplace(row, visible);
          std::fill(row + visible, row + n_ctx, T(0));
        }
      }
      O.noalias() = S * values.topRows(n_ctx);
      for (Eigen::Index i = i0; i < i1; ++i) {
        for (Eigen::Index r = 0; r < g; ++r) {
          out.row(i).segment((h * g + r) * hd, hd) = O.row((i - i0) * g + r);
        }
      }
    }
  }
}

}  // namespace kvattn::ops
