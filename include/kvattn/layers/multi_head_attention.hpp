#pragma once
/// \file
/// MultiHeadAttention: one self-attention layer with a KV cache.
///
/// For new tokens X [n_new x d_model] and a cache holding P tokens:
///
///   Q | K | V = X [Wq; Wk; Wv]^T + [bq; bk; bv]      (QKVProjection)
///   rotate Q and K at positions P .. P+n_new-1          (RotaryEmbedding)
///   cache.append(K, V)
///   H[i, head h] = sum_{j <= P+i} softmax_j(scale * q_ih . k_j,h/g) v_j,h/g
///   Y = H Wo^T + bo                                     [n_new x d_model]
///
/// with g = n_heads / n_kv_heads. MHA, GQA and MQA are the same class.
/// MultiHeadAttention<float, Eigen::bfloat16> (or Eigen::half) keeps Wq, Wk,
/// Wv and Wo in 16 bits (layers/projection.hpp); the cache's storage type is
/// chosen separately, per cache.

#include <kvattn/cache/kv_cache.hpp>
#include <kvattn/cache/paged_kv_cache.hpp>
#include <kvattn/config.hpp>
#include <kvattn/detail/scratch.hpp>
#include <kvattn/error.hpp>
#include <kvattn/layers/projection.hpp>
#include <kvattn/ops/attention.hpp>
#include <kvattn/ops/rope.hpp>
#include <kvattn/types.hpp>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

namespace kvattn {

/// The learned parameters of one attention layer, [out][in] as nn.Linear
/// stores them: wq [n_heads*head_dim x d_model], wk and wv
/// [n_kv_heads*head_dim x d_model], wo [d_model x n_heads*head_dim].
/// An empty bias vector means no bias. M: RowMatrix<T>, or StoredMatrix for
/// a layer with Weight = Stored.
template <class T, class M = RowMatrix<T>>
struct AttentionWeights {
  M wq, wk, wv, wo;
  Vector<T> bq, bk, bv, bo;
};

template <class T>
class AttentionWorkspace;

namespace detail {

/// Entry of a ragged batch: rows [row, row + rows) of X are the tokens of
/// `seq` at positions [pos, pos + rows) (in every layer).
struct RaggedEntry {
  SeqId seq = 0;
  Eigen::Index row = 0, rows = 0, pos = 0;
};

template <class T>
class LlamaBatch;
template <class T>
void reserve_ragged(AttentionWorkspace<T>& ws, const AttentionConfig& c, const RaggedEntry* e,
                    Eigen::Index count, Eigen::Index decode_rows, Eigen::Index total_rows);
template <class Layer, class T, class S>
void run_ragged(const Layer& mha, const Eigen::Ref<const RowMatrix<T>>& x, PagedLayer<T, S> layer,
                const RaggedEntry* e, Eigen::Index count, Eigen::Index decode_rows,
                Eigen::Ref<RowMatrix<T>> y, AttentionWorkspace<T>& ws);
}  // namespace detail

/// Scratch memory for MultiHeadAttention calls, sized on first use and reused,
/// so steady-state decoding allocates nothing. One per thread when a layer is
/// shared between threads.
template <class T>
class AttentionWorkspace {
 public:
  /// Grows the buffers for n_new tokens against n_ctx cached positions of a
  /// cache of `capacity` (so that later decode steps never grow them);
  /// `decoded`: the cache stores another type than T. May throw
  /// std::bad_alloc; the buffers stay valid (their contents are scratch).
  void reserve(const AttentionConfig& c, Eigen::Index n_new, Eigen::Index n_ctx,
               Eigen::Index capacity, bool decoded) {
    detail::grow(qkv_, n_new * (c.q_dim() + 2 * c.kv_dim()));
    detail::grow(heads_, n_new * c.q_dim());
    attention_.reserve_decode(capacity, c.n_kv_heads, c.group_size(), c.head_dim);
    if (n_new > 1) attention_.reserve_prefill(n_new, n_ctx, c.group_size(), c.head_dim, decoded);
  }

 private:
  template <class, class>
  friend class MultiHeadAttention;
  template <class>
  friend class detail::LlamaBatch;
  template <class U>
  friend void detail::reserve_ragged(AttentionWorkspace<U>&, const AttentionConfig&,
                                     const detail::RaggedEntry*, Eigen::Index, Eigen::Index,
                                     Eigen::Index);
  template <class Layer, class U, class S>
  friend void detail::run_ragged(const Layer&, const Eigen::Ref<const RowMatrix<U>>&,
                                 PagedLayer<U, S>, const detail::RaggedEntry*, Eigen::Index,
                                 Eigen::Index, Eigen::Ref<RowMatrix<U>>, AttentionWorkspace<U>&);

  // Room for n decode sequences and their cache views (trivially copyable
  // records of at most 64 bytes, placed by run_ragged).
  void reserve_seq_bytes(Eigen::Index n) {
    const size_t words = size_t(std::max<Eigen::Index>(n, 1)) * 64 / sizeof(std::max_align_t) + 1;
    if (seq_bytes_.size() < words) seq_bytes_.resize(words);
    if (view_bytes_.size() < words) view_bytes_.resize(words);
  }
  template <class X>
  X* seq_array() {
    static_assert(sizeof(X) <= 64 && alignof(X) <= alignof(std::max_align_t), "a small record");
    return reinterpret_cast<X*>(seq_bytes_.data());
  }
  template <class X>
  X* view_array() {
    static_assert(sizeof(X) <= 64 && alignof(X) <= alignof(std::max_align_t), "a small record");
    return reinterpret_cast<X*>(view_bytes_.data());
  }

  Vector<T> qkv_;    // [n_new x q_dim + 2*kv_dim]
  Vector<T> heads_;  // [n_new x q_dim]: attention output before Wo
  ops::AttentionScratch<T> attention_;
  // Paged calls: the batch as ragged entries, the blocks prepare() changed,
  // and the decode sequences' records.
  std::vector<detail::RaggedEntry> entries_;
  std::vector<SeqId> seqs_;
  std::vector<Eigen::Index> firsts_, ends_;
  PagedUndo undo_;
  std::vector<std::max_align_t> seq_bytes_, view_bytes_;
};

/// T: the compute type. Weight: how the four projections keep their weights
/// (T, or Eigen::bfloat16 / Eigen::half / kvattn::Stored for float).
template <class T, class Weight = T>
class MultiHeadAttention {
 public:
  using Scalar = T;
  using WeightType = Weight;
  /// What the constructor takes: AttentionWeights<T>, or for Weight = Stored
  /// AttentionWeights<T, StoredMatrix>.
  using Weights = AttentionWeights<T, detail::InputMatrix<T, Weight>>;

  /// Validates config and weight shapes (std::invalid_argument naming the
  /// weight, the expected and the actual shape).
  MultiHeadAttention(const AttentionConfig& config, Weights weights)
      : config_(checked(config)),
        qkv_(config_, weights.wq, weights.wk, weights.wv, weights.bq, weights.bk, weights.bv),
        wo_(checked_wo(config_, std::move(weights.wo)), std::move(weights.bo)),
        rope_(config_.head_dim, config_.rope, config_.rope_theta) {}

  const AttentionConfig& config() const { return config_; }
  const QKVProjection<T, Weight>& qkv() const { return qkv_; }
  const Linear<T, Weight>& output() const { return wo_; }
  const RotaryEmbedding<T>& rope() const { return rope_; }

  /// A cache of the shape this layer needs, storing Storage (see cache/storage.hpp).
  template <class Storage = T>
  KVCache<T, Storage> make_cache(Eigen::Index capacity) const {
    return KVCache<T, Storage>(config_.n_kv_heads, config_.head_dim, capacity);
  }

  /// Runs n_new tokens (x: [n_new x d_model]) at positions cache.size() ...
  /// cache.size()+n_new-1, appends their K and V to the cache and returns
  /// [n_new x d_model]. Token i attends every cached position up to its own.
  /// Throws std::invalid_argument (shapes) or std::length_error (capacity);
  /// a call that throws leaves the cache as it was.
  template <class Storage>
  RowMatrix<T> forward(const Eigen::Ref<const RowMatrix<T>>& x, KVCache<T, Storage>& cache) {
    check(kForward, x.rows(), x.cols(), "columns", cache);
    RowMatrix<T> y(x.rows(), config_.d_model);
    run(x, cache, y, workspace_);
    return y;
  }

  /// One token: x [d_model] -> [d_model]; same contract as forward.
  template <class Storage>
  Vector<T> step(const Eigen::Ref<const Vector<T>>& x, KVCache<T, Storage>& cache) {
    check(kStep, 1, x.size(), "elements", cache);
    Vector<T> y(config_.d_model);
    run(Eigen::Map<const RowMatrix<T>>(x.data(), 1, x.size()), cache,
        Eigen::Map<RowMatrix<T>>(y.data(), 1, y.size()), workspace_);
    return y;
  }

  /// forward into existing storage y [n_new x d_model], with caller-owned
  /// scratch: const, so one layer can serve several threads, each with its own
  /// cache and workspace.
  template <class Storage>
  void forward(const Eigen::Ref<const RowMatrix<T>>& x, KVCache<T, Storage>& cache,
               Eigen::Ref<RowMatrix<T>> y, AttentionWorkspace<T>& workspace) const {
    check(kForward, x.rows(), x.cols(), "columns", cache);
    detail::check_shape(kForward, "y", y.rows(), y.cols(), "[x.rows() x d_model]", x.rows(),
                        config_.d_model);
    run(x, cache, y, workspace);
  }

  /// step into existing storage y [d_model]; allocates nothing once the
  /// workspace has seen a step for this cache's capacity.
  template <class Storage>
  void step(const Eigen::Ref<const Vector<T>>& x, KVCache<T, Storage>& cache,
            Eigen::Ref<Vector<T>> y, AttentionWorkspace<T>& workspace) const {
    check(kStep, 1, x.size(), "elements", cache);
    detail::check_size(kStep, "y", y.size(), "d_model", config_.d_model);
    run(Eigen::Map<const RowMatrix<T>>(x.data(), 1, x.size()), cache,
        Eigen::Map<RowMatrix<T>>(y.data(), 1, y.size()), workspace);
  }

  // ---- the paged cache: many sequences in one pool ----

  /// Runs n_new tokens of sequence `seq` (x: [n_new x d_model]) at
  /// positions layer.size(seq) ..., appending their K and V to that layer of
  /// the pool (cache.layer(l)); returns [n_new x d_model]. Same contract as
  /// forward(x, cache); a pool without the free blocks the call needs is
  /// std::length_error. A call that throws leaves the pool as it was.
  template <class Storage>
  RowMatrix<T> forward(const Eigen::Ref<const RowMatrix<T>>& x, PagedLayer<T, Storage> layer,
                       SeqId seq) {
    RowMatrix<T> y(x.rows(), config_.d_model);
    forward(x, layer, seq, y, workspace_);
    return y;
  }

  /// forward into existing storage y [n_new x d_model], with caller-owned scratch.
  template <class Storage>
  void forward(const Eigen::Ref<const RowMatrix<T>>& x, PagedLayer<T, Storage> layer, SeqId seq,
               Eigen::Ref<RowMatrix<T>> y, AttentionWorkspace<T>& ws) const {
    check_paged(kForward, x.cols(), "columns", layer);
    detail::check_shape(kForward, "y", y.rows(), y.cols(), "[x.rows() x d_model]", x.rows(),
                        config_.d_model);
    check_seq(kForward, "seq", layer, seq);
    ws.entries_.assign(1, detail::RaggedEntry{seq, 0, x.rows(), layer.size(seq)});
    run_paged(x, layer, x.rows() == 1 ? 1 : 0, y, ws);
  }

  /// One new token for each of B distinct sequences: x [B x d_model], row b
  /// the token of seqs[b] at position layer.size(seqs[b]); y [B x d_model].
  /// One pass over each weight for the whole batch; row b of y is bitwise
  /// what the same sequence would give alone or in any other batch.
  /// Checks everything before it changes anything: std::invalid_argument
  /// for shapes and for an unknown or repeated sequence, std::length_error
  /// when the pool lacks the blocks the batch needs (copy-on-write copies
  /// counted); after any throw every sequence and the pool are as before.
  template <class Storage>
  void step_batch(const Eigen::Ref<const RowMatrix<T>>& x, PagedLayer<T, Storage> layer,
                  const std::vector<SeqId>& seqs, Eigen::Ref<RowMatrix<T>> y) {
    step_batch(x, layer, seqs, y, workspace_);
  }

  /// step_batch with caller-owned scratch; allocates nothing once the
  /// workspace has seen a batch of this size and these lengths.
  template <class Storage>
  void step_batch(const Eigen::Ref<const RowMatrix<T>>& x, PagedLayer<T, Storage> layer,
                  const std::vector<SeqId>& seqs, Eigen::Ref<RowMatrix<T>> y,
                  AttentionWorkspace<T>& ws) const {
    constexpr const char* fn = "MultiHeadAttention::step_batch";
    check_paged(fn, x.cols(), "columns", layer);
    const Eigen::Index batch = Eigen::Index(seqs.size());
    if (x.rows() != batch) {
      throw std::invalid_argument(
          detail::concat(fn, ": x has ", x.rows(), " rows, expected one per sequence = ", batch));
    }
    detail::check_shape(fn, "y", y.rows(), y.cols(), "[seqs.size() x d_model]", batch,
                        config_.d_model);
    ws.seqs_.assign(seqs.begin(), seqs.end());
    std::sort(ws.seqs_.begin(), ws.seqs_.end());
    for (Eigen::Index b = 0; b < batch; ++b) {
      check_seq(fn, "seqs[b]", layer, seqs[size_t(b)]);
      if (b > 0 && ws.seqs_[size_t(b)] == ws.seqs_[size_t(b - 1)]) {
        throw std::invalid_argument(
            detail::concat(fn, ": seq ", ws.seqs_[size_t(b)], " appears more than once in seqs"));
      }
    }
    ws.entries_.resize(size_t(batch));
    for (Eigen::Index b = 0; b < batch; ++b) {
      ws.entries_[size_t(b)] =
          detail::RaggedEntry{seqs[size_t(b)], b, 1, layer.size(seqs[size_t(b)])};
    }
    run_paged(x, layer, batch, y, ws);
  }

 private:
  static constexpr const char* kForward = "MultiHeadAttention::forward";
  static constexpr const char* kStep = "MultiHeadAttention::step";

  template <class Storage>
  void check_paged(const char* fn, Eigen::Index width, const char* unit,
                   const PagedLayer<T, Storage>& layer) const {
    if (width != config_.d_model) {
      throw std::invalid_argument(detail::concat(fn, ": x has ", width, " ", unit,
                                                 ", expected d_model = ", config_.d_model));
    }
    if (layer.n_kv_heads() != config_.n_kv_heads || layer.head_dim() != config_.head_dim) {
      throw std::invalid_argument(detail::concat(
          fn, ": cache has n_kv_heads = ", layer.n_kv_heads(), ", head_dim = ", layer.head_dim(),
          ", expected n_kv_heads = ", config_.n_kv_heads, ", head_dim = ", config_.head_dim));
    }
  }
  template <class Storage>
  static void check_seq(const char* fn, const char* arg, const PagedLayer<T, Storage>& layer,
                        SeqId seq) {
    if (!layer.cache().contains(seq)) {
      throw std::invalid_argument(
          detail::concat(fn, ": ", arg, " = ", seq, " is not a sequence of this cache"));
    }
  }

  // ws.entries_ holds the batch (decode entries, `decode_rows` of them,
  // first): grows the scratch, prepares the blocks, runs, and undoes the
  // cache's changes if anything throws.
  template <class Storage>
  void run_paged(const Eigen::Ref<const RowMatrix<T>>& x, PagedLayer<T, Storage> layer,
                 Eigen::Index decode_rows, Eigen::Ref<RowMatrix<T>> y,
                 AttentionWorkspace<T>& ws) const {
    if (x.rows() == 0) return;
    const Eigen::Index count = Eigen::Index(ws.entries_.size());
    detail::reserve_ragged(ws, config_, ws.entries_.data(), count, decode_rows, x.rows());
    ws.seqs_.resize(size_t(count));
    ws.firsts_.resize(size_t(count));
    ws.ends_.resize(size_t(count));
    for (Eigen::Index i = 0; i < count; ++i) {
      const detail::RaggedEntry& e = ws.entries_[size_t(i)];
      ws.seqs_[size_t(i)] = e.seq;
      ws.firsts_[size_t(i)] = e.pos;
      ws.ends_[size_t(i)] = e.pos + e.rows;
    }
    layer.cache().prepare(ws.seqs_.data(), ws.firsts_.data(), ws.ends_.data(), count, ws.undo_);
    try {
      detail::run_ragged(*this, x, layer, ws.entries_.data(), count, decode_rows, y, ws);
    } catch (...) {
      layer.cache().undo(ws.undo_);
      throw;
    }
  }

  static const AttentionConfig& checked(const AttentionConfig& c) {
    c.validate();
    return c;
  }
  template <class M>
  static M checked_wo(const AttentionConfig& c, M wo) {
    detail::check_shape("MultiHeadAttention", "wo", wo.rows(), wo.cols(),
                        "[d_model x n_heads*head_dim]", c.d_model, c.q_dim());
    return wo;
  }

  template <class Cache>
  void check(const char* fn, Eigen::Index n_new, Eigen::Index width, const char* unit,
             const Cache& cache) const {
    if (width != config_.d_model) {
      throw std::invalid_argument(detail::concat(fn, ": x has ", width, " ", unit,
                                                 ", expected d_model = ", config_.d_model));
    }
    if (cache.n_kv_heads() != config_.n_kv_heads || cache.head_dim() != config_.head_dim) {
      throw std::invalid_argument(detail::concat(
          fn, ": cache has n_kv_heads = ", cache.n_kv_heads(), ", head_dim = ", cache.head_dim(),
          ", expected n_kv_heads = ", config_.n_kv_heads, ", head_dim = ", config_.head_dim));
    }
    cache.check_room(fn, n_new);
  }

  // Shapes are checked; the cache has room for x.rows() more tokens.
  template <class Storage>
  void run(const Eigen::Ref<const RowMatrix<T>>& x, KVCache<T, Storage>& cache,
           Eigen::Ref<RowMatrix<T>> y, AttentionWorkspace<T>& ws) const {
    const Eigen::Index n_new = x.rows();
    if (n_new == 0) return;
    const Eigen::Index pos = cache.size();
    const Eigen::Index q_dim = config_.q_dim();
    const Eigen::Index kv_dim = config_.kv_dim();
    ws.reserve(config_, n_new, pos + n_new, cache.capacity(),
               !std::is_same<Storage, T>::value);  // may throw; nothing changed yet

    Eigen::Map<RowMatrix<T>> qkv(ws.qkv_.data(), n_new, qkv_.out_dim());  // q | k | v per token
    Eigen::Map<RowMatrix<T>> heads(ws.heads_.data(), n_new, q_dim);
    ops::linear_batch<T, Weight>(qkv_.stacked_weight(), qkv_.stacked_bias(), x, qkv);
    if (config_.rope != RopeStyle::None) {
      rope_.apply(qkv.leftCols(q_dim), pos);
      rope_.apply(qkv.middleCols(q_dim, kv_dim), pos);
    }
    cache.append(qkv.middleCols(q_dim, kv_dim), qkv.rightCols(kv_dim));
    try {
      ops::attend_causal<T>(qkv.leftCols(q_dim), cache, pos, config_.n_heads,
                            static_cast<T>(config_.scale()), heads, ws.attention_);
      ops::linear_batch<T, Weight>(wo_.weight(), wo_.bias(), heads, y);
    } catch (...) {
      cache.truncate(pos);  // e.g. std::bad_alloc inside a matrix product: undo the append
      throw;
    }
  }

  AttentionConfig config_;
  QKVProjection<T, Weight> qkv_;
  Linear<T, Weight> wo_;
  RotaryEmbedding<T> rope_;
  AttentionWorkspace<T> workspace_;  // used by the two-argument forward and step
};

}  // namespace kvattn

#include <kvattn/layers/paged_attention.hpp>  // detail::run_ragged
