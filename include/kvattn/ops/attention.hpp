#pragma once
/// \file
/// Attention over cached keys and values: the score product, prefill
/// (attend_causal: many query tokens, causal mask) and decode (decode.hpp:
/// one query token per sequence).
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
/// Kernels do not own memory and check shapes with eigen_assert only; the
/// layers check them before calling.

#include <kvattn/ops/decode.hpp>
#include <kvattn/ops/scratch.hpp>
#include <kvattn/ops/softmax.hpp>
#include <kvattn/types.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace kvattn {

namespace ops {

/// S = scale * Q K^T.
///   Q: [n_q x head_dim], K: [n_k x head_dim], S: [n_q x n_k].
template <class T>
void attention_scores(const Eigen::Ref<const RowMatrix<T>>& q,
                      const Eigen::Ref<const RowMatrix<T>>& k, T scale,
                      Eigen::Ref<RowMatrix<T>> s) {
  eigen_assert(q.cols() == k.cols() && s.rows() == q.rows() && s.cols() == k.rows());
  s.noalias() = scale * (q * k.transpose());
}

/// Causal attention of n_new query tokens against a cache.
///   q:     [n_new x n_heads*head_dim]   token i is at absolute position first_pos + i
///   cache: holds at least first_pos + n_new tokens; token i attends positions 0..first_pos+i
///   out:   [n_new x n_heads*head_dim]
///   scratch: reserve_prefill(n_new, first_pos + n_new, ...) for n_new > 1,
///            reserve_decode(>= first_pos + 1, ...) for n_new == 1
/// The Cache also provides key_rows(h, first, n, buf) / value_rows(...):
/// rows [first, first+n) of head h in T, [n x head_dim] contiguous (a
/// pointer into the cache, or into buf where they are converted or gathered).
/// One token takes attend_decode; more are processed per KV head in tiles of
/// AttentionScratch::tile_tokens tokens with matrix products and a causal mask.
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
  if (n_new == 0) return;
  if (n_new == 1) {
    eigen_assert(out.outerStride() == out.cols() || out.rows() == 1);
    attend_decode<T>(q.data(), cache, first_pos + 1, n_heads, scale, out.data(), scratch);
    return;
  }

  const Eigen::Index total = first_pos + n_new;
  for (Eigen::Index h = 0; h < n_kv; ++h) {
    const Eigen::Map<const RowMatrix<T>> keys(cache.key_rows(h, 0, total, scratch.keys.data()),
                                              total, hd);
    const Eigen::Map<const RowMatrix<T>> values(
        cache.value_rows(h, 0, total, scratch.values.data()), total, hd);
    for (Eigen::Index i0 = 0; i0 < n_new; i0 += AttentionScratch<T>::tile_tokens) {
      const Eigen::Index i1 = std::min(n_new, i0 + AttentionScratch<T>::tile_tokens);
      const Eigen::Index rows = (i1 - i0) * g;    // row (i - i0)*g + r is token i, head h*g + r
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
      // O = P V over visible positions only (a masked 0 times a NaN or
      // infinite future value would still poison the sum): one product over
      // the positions every token of the tile sees, then each token's few
      // extra positions.
      const Eigen::Index common = first_pos + i0 + 1;
      O.noalias() = S.leftCols(common) * values.topRows(common);
      for (Eigen::Index i = i0 + 1; i < i1; ++i) {
        const Eigen::Index extra = first_pos + i + 1 - common;
        O.middleRows((i - i0) * g, g).noalias() +=
            S.block((i - i0) * g, common, g, extra) * values.middleRows(common, extra);
      }
      for (Eigen::Index i = i0; i < i1; ++i) {
        for (Eigen::Index r = 0; r < g; ++r) {
          out.row(i).segment((h * g + r) * hd, hd) = O.row((i - i0) * g + r);
        }
      }
    }
  }
}

}  // namespace ops
}  // namespace kvattn
