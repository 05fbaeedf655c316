#pragma once
/// \file
/// kvattn::dist::ShardedAttention: one attention layer split across R ranks
/// by heads (Megatron-style tensor parallelism). Rank r owns KV heads
/// [r*n_kv/R, (r+1)*n_kv/R) and their query heads -- their rows of Wq, Wk,
/// Wv (and biases), their KV cache -- and the matching columns of Wo:
///
///   Y_r = attention over the rank's heads (a MultiHeadAttention of
///         n_heads/R query heads and n_kv/R KV heads), times Wo[:, slice_r]
///   Y   = sum_r Y_r (+ bo)      one deterministic all-reduce
///
/// so each rank reads 1/R of the weights and of the cache per token, and
/// every rank gets the full [n x d_model] output. The contract of forward
/// and step is MultiHeadAttention's, with a cache of the rank's heads
/// (make_cache). A call is collective: every rank makes it with the same
/// shapes; a rank that fails inside one must end the job
/// (Communicator::abort), or the others wait.

#include <kvattn/dist/communicator.hpp>
#include <kvattn/layers/multi_head_attention.hpp>

#include <utility>

namespace kvattn::dist {

template <class T, class Weight = T>
class ShardedAttention {
 public:
  using Scalar = T;
  using WeightType = Weight;

  /// The layer a rank runs locally: n_heads/R query heads, n_kv/R KV heads.
  static AttentionConfig local_config(const AttentionConfig& full, int ranks) {
    AttentionConfig c = full;
    c.n_heads = full.n_heads / ranks;
    c.n_kv_heads = full.n_kv_heads / ranks;
    c.score_scale = full.scale();  // 1/sqrt(head_dim) of the full layer, stated explicitly
    return c;
  }

  /// Rank `rank`'s slice of the full weights: rows of Wq, Wk, Wv and their
  /// biases for its heads, columns of Wo (no output bias: it is added once,
  /// after the sum).
  static AttentionWeights<T> slice(const AttentionConfig& full, const AttentionWeights<T>& w,
                                   int rank, int ranks) {
    const Eigen::Index hd = full.head_dim;
    const Eigen::Index nq = full.n_heads / ranks * hd, nkv = full.n_kv_heads / ranks * hd;
    const Eigen::Index q0 = rank * nq, kv0 = rank * nkv;
    AttentionWeights<T> s;
    s.wq = w.wq.middleRows(q0, nq);
    s.wk = w.wk.middleRows(kv0, nkv);
    s.wv = w.wv.middleRows(kv0, nkv);
    s.wo = w.wo.middleCols(q0, nq);
    if (w.bq.size() != 0) s.bq = w.bq.segment(q0, nq);
    if (w.bk.size() != 0) s.bk = w.bk.segment(kv0, nkv);
    if (w.bv.size() != 0) s.bv = w.bv.segment(kv0, nkv);
    return s;
  }

  /// Every rank passes the same full config and weights and keeps its slice.
  /// Throws std::invalid_argument on every rank when the configs or weight
  /// shapes differ between ranks, or n_kv_heads is not a multiple of the rank
  /// count (the message names both values).
  ShardedAttention(Communicator& comm, const AttentionConfig& config,
                   const AttentionWeights<T>& full)
      : ShardedAttention(comm, config, checked_slice(comm, config, full), full.bo) {}

  /// From this rank's slice only (the shapes of slice()), so no rank needs the
  /// whole layer in memory; bo is the full output bias (or empty).
  ShardedAttention(Communicator& comm, const AttentionConfig& config, AttentionWeights<T> mine,
                   Vector<T> bo)
      : comm_(&comm),
        full_(checked(comm, config, mine)),
        local_(local_config(full_, comm.size()), std::move(mine)),
        bo_(std::move(bo)) {
    if (bo_.size() != 0)
      detail::check_size("ShardedAttention", "bo", bo_.size(), "d_model", full_.d_model);
  }

  const AttentionConfig& config() const { return full_; }
  const MultiHeadAttention<T, Weight>& local() const { return local_; }
  Communicator& communicator() const { return *comm_; }
  /// The first KV head this rank owns.
  Eigen::Index first_kv_head() const { return comm_->rank() * local_.config().n_kv_heads; }

  /// A cache of this rank's KV heads.
  template <class Storage = T>
  KVCache<T, Storage> make_cache(Eigen::Index capacity) const {
    return local_.template make_cache<Storage>(capacity);
  }

  /// x [n x d_model] (the same on every rank) -> [n x d_model] on every rank.
  template <class Storage>
  RowMatrix<T> forward(const Eigen::Ref<const RowMatrix<T>>& x, KVCache<T, Storage>& cache) {
    RowMatrix<T> y(x.rows(), full_.d_model);
    forward(x, cache, y, workspace_);
    return y;
  }

  template <class Storage>
  Vector<T> step(const Eigen::Ref<const Vector<T>>& x, KVCache<T, Storage>& cache) {
    Vector<T> y(full_.d_model);
    forward(Eigen::Map<const RowMatrix<T>>(x.data(), 1, x.size()), cache,
            Eigen::Map<RowMatrix<T>>(y.data(), 1, y.size()), workspace_);
    return y;
  }

  /// Into existing storage y [n x d_model], with caller-owned scratch.
  template <class Storage>
  void forward(const Eigen::Ref<const RowMatrix<T>>& x, KVCache<T, Storage>& cache,
               Eigen::Ref<RowMatrix<T>> y, AttentionWorkspace<T>& ws) const {
    local_.forward(x, cache, y, ws);  // this rank's heads, times its columns of Wo
    if (y.outerStride() == y.cols()) {
      comm_->allreduce_sum(y.data(), y.size());
    } else {
      for (Eigen::Index r = 0; r < y.rows(); ++r) comm_->allreduce_sum(&y(r, 0), y.cols());
    }
    if (bo_.size() != 0) y.rowwise() += bo_.transpose();
  }

 private:
  // The configs and weight shapes of every rank are compared first (a
  // collective every rank takes part in, whatever its config), then the
  // split is checked: each throws on every rank alike.
  static AttentionWeights<T> checked_slice(Communicator& comm, const AttentionConfig& c,
                                           const AttentionWeights<T>& w) {
    Fingerprint f;
    f.add(c.d_model).add(c.n_heads).add(c.n_kv_heads).add(c.head_dim).add(c.rope).add(c.rope_theta);
    f.add(c.scale());
    for (const RowMatrix<T>* m : {&w.wq, &w.wk, &w.wv, &w.wo}) f.add(m->rows()).add(m->cols());
    comm.check_same(f.value(), "ShardedAttention", "the hash of the config and weight shapes");
    c.validate();
    check_split(comm, c);
    detail::check_shape("ShardedAttention", "wq", w.wq.rows(), w.wq.cols(),
                        "[n_heads*head_dim x d_model]", c.q_dim(), c.d_model);
    detail::check_shape("ShardedAttention", "wk", w.wk.rows(), w.wk.cols(),
                        "[n_kv_heads*head_dim x d_model]", c.kv_dim(), c.d_model);
    detail::check_shape("ShardedAttention", "wv", w.wv.rows(), w.wv.cols(),
                        "[n_kv_heads*head_dim x d_model]", c.kv_dim(), c.d_model);
    detail::check_shape("ShardedAttention", "wo", w.wo.rows(), w.wo.cols(),
                        "[d_model x n_heads*head_dim]", c.d_model, c.q_dim());
    return slice(c, w, comm.rank(), comm.size());
  }

  static const AttentionConfig& checked(Communicator& comm, const AttentionConfig& c,
                                        const AttentionWeights<T>& mine) {
    Fingerprint f;
    f.add(c.d_model).add(c.n_heads).add(c.n_kv_heads).add(c.head_dim).add(c.rope).add(c.rope_theta);
    f.add(c.scale());
    for (const RowMatrix<T>* m : {&mine.wq, &mine.wk, &mine.wv, &mine.wo}) {
      f.add(m->rows()).add(m->cols());
    }
    comm.check_same(f.value(), "ShardedAttention", "the hash of the config and slice shapes");
    c.validate();
    check_split(comm, c);
    return c;
  }

  static void check_split(Communicator& comm, const AttentionConfig& c) {
    if (c.n_kv_heads % comm.size() != 0) {
      throw std::invalid_argument(
          detail::concat("ShardedAttention: n_kv_heads = ", c.n_kv_heads,
                         " is not a multiple of the number of ranks = ", comm.size()));
    }
  }

  Communicator* comm_;
  AttentionConfig full_;
  MultiHeadAttention<T, Weight> local_;
  Vector<T> bo_;                     // [d_model] or empty: added after the sum
  AttentionWorkspace<T> workspace_;  // the two-argument forward and step
};

}  // namespace kvattn::dist
