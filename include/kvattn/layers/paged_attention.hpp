#pragma once
/// \file
/// One attention layer over a ragged batch of sequences in a PagedKVCache:
/// what MultiHeadAttention's paged forward and step_batch, and Llama's
/// forward_batch, run after the cache has prepared their blocks.
///
/// The batch's rows are tokens: first the decode entries (one token each),
/// then the prompt entries (several consecutive tokens of one sequence):
///
///   QKV = X [Wq; Wk; Wv]^T (+ b)    decode rows: one pass over the weights for
///                                   all of them, each row exactly the one-token
///                                   product (ops::linear_few); prompt rows:
///                                   a matrix product (ops::linear_batch)
///   RoPE per entry at its positions; K, V written into the entry's blocks
///   decode entries: one parallel decode over (sequence, KV head, chunk) items
///   prompt entries: causal attention over the sequence's gathered rows
///   Y = H Wo^T (+ bo)               split as the projections
///
/// so a decode token's output is bitwise the same whatever else is in the
/// batch, in any order, with any thread count.

#include <kvattn/cache/paged_layer.hpp>
#include <kvattn/layers/multi_head_attention.hpp>
#include <kvattn/ops/attention.hpp>
#include <kvattn/ops/linear.hpp>

#include <new>
#include <vector>

namespace kvattn {

namespace detail {

/// Grows the workspace of one attention layer for the entries (decode
/// entries first, `decode_rows` of them). May throw std::bad_alloc; run it
/// before the cache changes.
template <class T>
void reserve_ragged(AttentionWorkspace<T>& ws, const AttentionConfig& c, const RaggedEntry* e,
                    Eigen::Index count, Eigen::Index decode_rows, Eigen::Index total_rows) {
  grow(ws.qkv_, total_rows * (c.q_dim() + 2 * c.kv_dim()));
  grow(ws.heads_, total_rows * c.q_dim());
  Eigen::Index items = 0;
  for (Eigen::Index i = 0; i < count; ++i) {
    if (e[i].rows == 1 && e[i].row < decode_rows) {
      items += c.n_kv_heads * ops::AttentionScratch<T>::chunks(e[i].pos + 1);
    } else {
      ws.attention_.reserve_prefill(e[i].rows, e[i].pos + e[i].rows, c.group_size(), c.head_dim,
                                    true);
    }
  }
  ws.attention_.reserve_decode_items(std::max<Eigen::Index>(items, 1), c.group_size(), c.head_dim,
                                     std::max<Eigen::Index>(decode_rows, 1));
  ws.reserve_seq_bytes(decode_rows);
}

/// Runs one attention layer over the entries, whose blocks `layer`'s cache
/// has prepared (reserve_ragged first).  x, y: [total rows x d_model].
/// Writes the entries' keys and values; may throw std::bad_alloc from a
/// matrix product (the caller then undoes the cache's prepare()).
template <class Layer, class T, class S>
void run_ragged(const Layer& mha, const Eigen::Ref<const RowMatrix<T>>& x, PagedLayer<T, S> layer,
                const RaggedEntry* e, Eigen::Index count, Eigen::Index decode_rows,
                Eigen::Ref<RowMatrix<T>> y, AttentionWorkspace<T>& ws) {
  using Weight = typename Layer::WeightType;
  const AttentionConfig& c = mha.config();
  const Eigen::Index n = x.rows(), q_dim = c.q_dim(), kv_dim = c.kv_dim();
  const Eigen::Index prompt_rows = n - decode_rows;
  Eigen::Map<RowMatrix<T>> qkv(ws.qkv_.data(), n, q_dim + 2 * kv_dim);  // q | k | v per token
  Eigen::Map<RowMatrix<T>> heads(ws.heads_.data(), n, q_dim);
  const auto& proj = mha.qkv();
  ops::linear_few<T, Weight>(proj.stacked_weight(), proj.stacked_bias(), x.topRows(decode_rows),
                             qkv.topRows(decode_rows));
  if (prompt_rows > 0) {
    ops::linear_batch<T, Weight>(proj.stacked_weight(), proj.stacked_bias(),
                                 x.bottomRows(prompt_rows), qkv.bottomRows(prompt_rows));
  }
  for (Eigen::Index i = 0; i < count; ++i) {
    auto rows = qkv.middleRows(e[i].row, e[i].rows);
    if (c.rope != RopeStyle::None) {
      mha.rope().apply(rows.leftCols(q_dim), e[i].pos);
      mha.rope().apply(rows.middleCols(q_dim, kv_dim), e[i].pos);
    }
    layer.cache().write_rows(e[i].seq, layer.index(), e[i].pos, rows.middleCols(q_dim, kv_dim),
                             rows.rightCols(kv_dim));
  }
  const T scale = static_cast<T>(c.scale());
  using Seq = ops::DecodeSeq<T, PagedSeqView<T, S>>;
  Seq* seqs = ws.template seq_array<Seq>();
  Eigen::Index n_decode = 0;
  for (Eigen::Index i = 0; i < count; ++i) {
    if (e[i].rows == 1 && e[i].row < decode_rows) {
      ::new (static_cast<void*>(seqs + n_decode))
          Seq{nullptr, qkv.row(e[i].row).data(), e[i].pos + 1, heads.row(e[i].row).data()};
      ++n_decode;
    }
  }
  // The views live in the workspace beside the sequences that point at them.
  PagedSeqView<T, S>* views = ws.template view_array<PagedSeqView<T, S>>();
  for (Eigen::Index i = 0, d = 0; i < count; ++i) {
    if (e[i].rows == 1 && e[i].row < decode_rows) {
      const PagedSeqView<T, S>* view = ::new (static_cast<void*>(views + d))
          PagedSeqView<T, S>(layer.view(e[i].seq, e[i].pos + 1));
      std::launder(seqs + d)->cache = view;
      ++d;
    }
  }
  ops::attend_decode_batch<T>(std::launder(seqs), n_decode, c.n_heads, scale, ws.attention_);
  for (Eigen::Index i = 0; i < count; ++i) {
    if (e[i].rows == 1 && e[i].row < decode_rows) continue;
    ops::attend_causal<T>(qkv.middleRows(e[i].row, e[i].rows).leftCols(q_dim),
                          layer.view(e[i].seq, e[i].pos + e[i].rows), e[i].pos, c.n_heads, scale,
                          heads.middleRows(e[i].row, e[i].rows), ws.attention_);
  }
  ops::linear_few<T, Weight>(mha.output().weight(), mha.output().bias(), heads.topRows(decode_rows),
                             y.topRows(decode_rows));
  if (prompt_rows > 0) {
    ops::linear_batch<T, Weight>(mha.output().weight(), mha.output().bias(),
                                 heads.bottomRows(prompt_rows), y.bottomRows(prompt_rows));
  }
}

}  // namespace detail
}  // namespace kvattn
