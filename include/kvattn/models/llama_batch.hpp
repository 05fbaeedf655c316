#pragma once
/// \file
/// Llama::forward_batch: a ragged batch of sequences of a PagedKVCache
/// through every layer (included by models/llama.hpp).
///
///   x = embedding of every entry's tokens      [rows x dim], one-token entries first
///   per layer: x += attention (layers/paged_attention.hpp); x += FFN
///   logits of each entry's last token          [batch x vocab], batch order
///
/// The pool's blocks for every entry's new positions are prepared once, up
/// front (counting copy-on-write copies); each layer then writes its rows.

#include <kvattn/models/llama.hpp>

#include <algorithm>
#include <string>

namespace kvattn {

template <class T, class Weight>
template <class Storage>
RowMatrix<T> Llama<T, Weight>::forward_batch(const std::vector<SeqTokens>& batch,
                                             PagedKVCache<T, Storage>& cache) {
  constexpr const char* fn = "Llama::forward_batch";
  if (cache.n_layers() != config_.n_layers || cache.n_kv_heads() != config_.n_kv_heads ||
      cache.head_dim() != config_.head_dim()) {
    throw std::invalid_argument(detail::concat(
        fn, ": cache has n_layers = ", cache.n_layers(), ", n_kv_heads = ", cache.n_kv_heads(),
        ", head_dim = ", cache.head_dim(), ", expected ", config_.n_layers, ", ",
        config_.n_kv_heads, ", ", config_.head_dim(), " (make_paged_cache)"));
  }
  const Eigen::Index n_batch = Eigen::Index(batch.size());
  // Check every entry before anything changes.
  seqs_.resize(size_t(n_batch));
  Eigen::Index rows = 0, decode_rows = 0;
  for (Eigen::Index b = 0; b < n_batch; ++b) {
    const SeqTokens& e = batch[size_t(b)];
    if (!cache.contains(e.seq)) {
      throw std::invalid_argument(
          detail::concat(fn, ": batch[", b, "].seq = ", e.seq, " is not a sequence of this cache"));
    }
    if (e.tokens.empty()) {
      throw std::invalid_argument(detail::concat(fn, ": batch[", b, "].tokens is empty"));
    }
    for (size_t j = 0; j < e.tokens.size(); ++j) {
      if (e.tokens[j] < 0 || e.tokens[j] >= config_.vocab_size) {
        throw std::invalid_argument(
            detail::concat(fn, ": batch[", b, "].tokens[", j, "] = ", e.tokens[j],
                           ", expected 0 <= token < vocab_size = ", config_.vocab_size));
      }
    }
    const Eigen::Index len = cache.length(e.seq);
    for (Eigen::Index l = 0; l < config_.n_layers; ++l) {
      if (cache.layer_length(e.seq, l) != len) {
        throw std::invalid_argument(detail::concat(
            fn, ": batch[", b, "].seq = ", e.seq, " holds ", cache.layer_length(e.seq, l),
            " tokens in layer ", l, " but ", len, " in others"));
      }
    }
    seqs_[size_t(b)] = e.seq;
    rows += Eigen::Index(e.tokens.size());
    if (e.tokens.size() == 1) ++decode_rows;
  }
  std::sort(seqs_.begin(), seqs_.end());
  for (Eigen::Index b = 1; b < n_batch; ++b) {
    if (seqs_[size_t(b)] == seqs_[size_t(b - 1)]) {
      throw std::invalid_argument(
          detail::concat(fn, ": seq ", seqs_[size_t(b)], " appears more than once in the batch"));
    }
  }
  RowMatrix<T> logits(n_batch, config_.vocab_size);  // allocated before the pool changes
  if (n_batch == 0) return logits;

  // The entries, one-token entries first (in batch order), then the others.
  entries_.resize(size_t(n_batch));
  order_.resize(size_t(n_batch));
  Eigen::Index at = 0, row = 0;
  for (int pass = 0; pass < 2; ++pass) {
    for (Eigen::Index b = 0; b < n_batch; ++b) {
      const SeqTokens& e = batch[size_t(b)];
      if ((e.tokens.size() == 1) != (pass == 0)) continue;
      const Eigen::Index n = Eigen::Index(e.tokens.size());
      entries_[size_t(at)] = detail::RaggedEntry{e.seq, row, n, cache.length(e.seq)};
      order_[size_t(at)] = b;
      ++at;
      row += n;
    }
  }
  detail::reshape_scratch(x_, rows, config_.dim);          // residual stream
  detail::reshape_scratch(xb_, rows, config_.dim);         // normed input of a sublayer
  detail::reshape_scratch(attn_, rows, config_.dim);       // a sublayer's output
  detail::reshape_scratch(h1_, rows, config_.hidden_dim);  // gate
  detail::reshape_scratch(h3_, rows, config_.hidden_dim);  // up
  detail::reshape_scratch(last_, n_batch, config_.dim);
  detail::reserve_ragged(workspace_, config_.attention(), entries_.data(), n_batch, decode_rows,
                         rows);
  seqs_.resize(size_t(n_batch));
  firsts_.resize(size_t(n_batch));
  ends_.resize(size_t(n_batch));
  for (Eigen::Index i = 0; i < n_batch; ++i) {
    seqs_[size_t(i)] = entries_[size_t(i)].seq;
    firsts_[size_t(i)] = entries_[size_t(i)].pos;
    ends_[size_t(i)] = entries_[size_t(i)].pos + entries_[size_t(i)].rows;
  }
  cache.prepare(seqs_.data(), firsts_.data(), ends_.data(), n_batch,
                undo_);  // may throw: no change

  try {
    for (Eigen::Index i = 0; i < n_batch; ++i) {
      const std::vector<int>& tokens = batch[size_t(order_[size_t(i)])].tokens;
      for (size_t j = 0; j < tokens.size(); ++j) {
        embed(entries_[size_t(i)].row + Eigen::Index(j), tokens[j]);
      }
    }
    const T eps = static_cast<T>(config_.norm_eps);
    for (size_t l = 0; l < layers_.size(); ++l) {
      Layer& L = layers_[l];
      ops::rmsnorm_rows<T>(x_, L.attention_norm, eps, xb_);
      detail::run_ragged<MultiHeadAttention<T, Weight>, T, Storage>(
          L.attention, xb_, cache.layer(Eigen::Index(l)), entries_.data(), n_batch, decode_rows,
          attn_, workspace_);
      x_ += attn_;
      feed_forward(L, decode_rows);
    }
    for (Eigen::Index i = 0; i < n_batch; ++i) {
      const detail::RaggedEntry& e = entries_[size_t(i)];
      ops::rmsnorm_rows<T>(x_.row(e.row + e.rows - 1), final_norm_, eps,
                           last_.row(order_[size_t(i)]));
    }
    ops::linear_few<T, Weight>(classifier(), Vector<T>(), last_, logits);
  } catch (...) {
    cache.undo(undo_);
    throw;
  }
  return logits;
}

}  // namespace kvattn
