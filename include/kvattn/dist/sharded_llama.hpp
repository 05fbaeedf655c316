#pragma once
/// \file
/// kvattn::dist::ShardedLlama: the Llama decoder over R ranks.
///
///   attention: ShardedAttention (heads and their cache split, one all-reduce)
///   FFN:       W1, W3 split by rows (hidden units), W2 by columns, one all-reduce
///   embedding, norms: replicated
///   classifier: split by vocabulary rows; the logits are gathered, so every
///              rank has all of them (and samples the same token)
///
/// read_llama2c reads only this rank's slices of a llama2.c checkpoint (its
/// rows of Wq, Wk, Wv, W1, W3 and the classifier, its columns of Wo and W2)
/// plus the replicated tensors. n_kv_heads, hidden_dim and vocab_size must be
/// multiples of the rank count. Every call is collective (see
/// sharded_attention.hpp).

#include <kvattn/dist/sharded_attention.hpp>
#include <kvattn/io/llama2c.hpp>
#include <kvattn/models/llama.hpp>

#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvattn::dist {

/// One rank's slice of a Llama's weights (shapes of a 1/R model, see above).
template <class T>
struct LlamaShard {
  LlamaConfig config;            ///< the full model's
  RowMatrix<T> token_embedding;  ///< [vocab x dim], replicated
  struct Layer {
    Vector<T> attention_norm, ffn_norm;  ///< [dim]
    AttentionWeights<T> attention;       ///< ShardedAttention::slice shapes
    RowMatrix<T> w1, w3;                 ///< [hidden/R x dim]
    RowMatrix<T> w2;                     ///< [dim x hidden/R]
  };
  std::vector<Layer> layers;
  Vector<T> final_norm;     ///< [dim]
  RowMatrix<T> classifier;  ///< [vocab/R x dim]: this rank's rows
};

/// The sequence state on one rank: a cache of the rank's KV heads per layer.
template <class T, class Storage = T>
class ShardedLlamaState {
 public:
  Eigen::Index pos() const { return caches_.front().size(); }
  Eigen::Index capacity() const { return caches_.front().capacity(); }
  void truncate(Eigen::Index n) {
    for (KVCache<T, Storage>& c : caches_) c.truncate(n);
  }
  /// This rank's slice of the state (LlamaState's format); each rank saves its own.
  void save(std::ostream& out) const {
    detail::save_caches(caches_, out, "ShardedLlamaState::save");
  }
  void load(std::istream& in, const std::string& what = "stream") {
    detail::load_caches(caches_, in, what);
  }

 private:
  template <class, class>
  friend class ShardedLlama;
  std::vector<KVCache<T, Storage>> caches_;
};

template <class T, class Weight = T>
class ShardedLlama {
  static_assert(!std::is_same<Weight, Stored>::value,
                "ShardedLlama keeps dense weights (T, bfloat16 or half), not Stored");

 public:
  /// Keeps this rank's slice of full weights every rank passes.
  ShardedLlama(Communicator& comm, const LlamaWeights<T>& full)
      : ShardedLlama(comm, shard(comm, full)) {}

  /// From this rank's slice only.
  ShardedLlama(Communicator& comm, LlamaShard<T> s)
      : comm_(&comm),
        config_(s.config),
        embedding_(std::move(s.token_embedding)),
        final_norm_(std::move(s.final_norm)),
        classifier_(detail::encoded_weights<T, Weight>(std::move(s.classifier))) {
    for (typename LlamaShard<T>::Layer& l : s.layers) {
      layers_.push_back(Layer{std::move(l.attention_norm),
                              ShardedAttention<T, Weight>(comm, config_.attention(),
                                                          std::move(l.attention), Vector<T>()),
                              std::move(l.ffn_norm),
                              detail::encoded_weights<T, Weight>(std::move(l.w1)),
                              detail::encoded_weights<T, Weight>(std::move(l.w2)),
                              detail::encoded_weights<T, Weight>(std::move(l.w3))});
    }
  }

  /// Reads this rank's slices of a llama2.c checkpoint (std::runtime_error
  /// naming the file; std::invalid_argument on every rank for a split that
  /// does not divide).
  static ShardedLlama read_llama2c(Communicator& comm, const std::string& path);

  /// Rank `rank`'s slice of full weights.
  static LlamaShard<T> shard(Communicator& comm, const LlamaWeights<T>& w);

  const LlamaConfig& config() const { return config_; }
  Communicator& communicator() const { return *comm_; }

  template <class Storage = T>
  ShardedLlamaState<T, Storage> make_state(Eigen::Index capacity = 0) const {
    ShardedLlamaState<T, Storage> s;
    for (const Layer& l : layers_) {
      s.caches_.push_back(
          l.attention.template make_cache<Storage>(capacity > 0 ? capacity : config_.seq_len));
    }
    return s;
  }

  /// Restores on every rank at once the slices each rank saved with
  /// ShardedLlamaState::save. If any rank's slice does not load, or the
  /// ranks' slices hold different positions, every rank throws
  /// std::runtime_error naming the rank and the reason, and every state is
  /// left as it was (a collective: every rank must call it).
  template <class Storage>
  void load_state(ShardedLlamaState<T, Storage>& state, std::istream& in,
                  const std::string& what = "stream") const {
    ShardedLlamaState<T, Storage> fresh = make_state<Storage>(state.capacity());
    std::string error;
    try {
      fresh.load(in, what);
    } catch (const std::exception& e) {
      error = e.what();
    }
    constexpr uint64_t kFailed = ~uint64_t(0);
    const std::vector<uint64_t> pos =
        comm_->gather_values(error.empty() ? uint64_t(fresh.pos()) : kFailed);
    for (size_t r = 0; r < pos.size(); ++r) {
      if (pos[r] == kFailed) {
        throw std::runtime_error(detail::concat("ShardedLlama::load_state: rank ", r,
                                                " could not load its slice",
                                                int(r) == comm_->rank() ? ": " + error : ""));
      }
    }
    for (size_t r = 1; r < pos.size(); ++r) {
      if (pos[r] != pos[0]) {
        throw std::runtime_error(detail::concat(
            "ShardedLlama::load_state: the slices hold different positions: rank 0 has ", pos[0],
            ", rank ", r, " has ", pos[r]));
      }
    }
    state = std::move(fresh);
  }

  /// A prompt in one batched pass; the logits after its last token, on every rank.
  template <class Storage>
  Vector<T> prefill(const std::vector<int>& tokens, ShardedLlamaState<T, Storage>& state) {
    return run(tokens, state);
  }
  /// One token at position state.pos(); the logits, on every rank.
  template <class Storage>
  Vector<T> step(int token, ShardedLlamaState<T, Storage>& state) {
    return run(std::vector<int>{token}, state);
  }

 private:
  struct Layer {
    Vector<T> attention_norm;
    ShardedAttention<T, Weight> attention;
    Vector<T> ffn_norm;
    RowMatrix<Weight> w1, w2, w3;  // this rank's rows / columns / rows
  };

  template <class Storage>
  Vector<T> run(const std::vector<int>& tokens, ShardedLlamaState<T, Storage>& state);

  Communicator* comm_;
  LlamaConfig config_;
  RowMatrix<T> embedding_;  // [vocab x dim]
  std::vector<Layer> layers_;
  Vector<T> final_norm_;
  RowMatrix<Weight> classifier_;  // [vocab/R x dim]
  RowMatrix<T> x_, xb_, attn_, h1_, h3_;
  Vector<T> local_logits_;
  AttentionWorkspace<T> workspace_;
};

namespace detail {

/// Throws std::invalid_argument naming `what` unless n splits over `ranks`.
inline void check_divides(const char* what, Eigen::Index n, int ranks) {
  if (n % ranks != 0) {
    throw std::invalid_argument(kvattn::detail::concat(
        "ShardedLlama: ", what, " = ", n, " is not a multiple of the number of ranks = ", ranks));
  }
}

inline void check_llama_split(Communicator& comm, const LlamaConfig& c) {
  Fingerprint f;
  f.add(c.dim).add(c.hidden_dim).add(c.n_layers).add(c.n_heads).add(c.n_kv_heads);
  f.add(c.vocab_size).add(c.seq_len).add(c.norm_eps).add(c.rope_theta);
  comm.check_same(f.value(), "ShardedLlama", "the hash of the model config");
  check_divides("n_kv_heads", c.n_kv_heads, comm.size());
  check_divides("hidden_dim", c.hidden_dim, comm.size());
  check_divides("vocab_size", c.vocab_size, comm.size());
}

}  // namespace detail

template <class T, class Weight>
LlamaShard<T> ShardedLlama<T, Weight>::shard(Communicator& comm, const LlamaWeights<T>& w) {
  const LlamaConfig& c = w.config;
  detail::check_llama_split(comm, c);
  const int r = comm.rank(), R = comm.size();
  const Eigen::Index hidden = c.hidden_dim / R, vocab = c.vocab_size / R;
  LlamaShard<T> s;
  s.config = c;
  s.token_embedding = w.token_embedding;
  s.final_norm = w.final_norm;
  const RowMatrix<T>& cls = w.classifier.size() != 0 ? w.classifier : w.token_embedding;
  s.classifier = cls.middleRows(r * vocab, vocab);
  for (const LlamaLayerWeights<T>& l : w.layers) {
    typename LlamaShard<T>::Layer m;
    m.attention_norm = l.attention_norm;
    m.ffn_norm = l.ffn_norm;
    m.attention = ShardedAttention<T>::slice(c.attention(), l.attention, r, R);
    m.w1 = l.w1.middleRows(r * hidden, hidden);
    m.w3 = l.w3.middleRows(r * hidden, hidden);
    m.w2 = l.w2.middleCols(r * hidden, hidden);
    s.layers.push_back(std::move(m));
  }
  return s;
}

}  // namespace kvattn::dist

#include <kvattn/dist/sharded_llama_impl.hpp>  // read_llama2c, run
