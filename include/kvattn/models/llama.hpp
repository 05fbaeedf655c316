#pragma once
/// \file
/// A minimal Llama decoder built from kvattn's layers (the architecture of
/// llama2.c's checkpoints):
///
///   x = embedding[token]                                   [n x dim]
///   per layer:
///     x += MultiHeadAttention(rmsnorm(x) * attention_norm)  (RoPE, GQA, KV cache)
///     h  = rmsnorm(x) * ffn_norm
///     x += (silu(h W1^T) * (h W3^T)) W2^T                  SwiGLU, hidden_dim wide
///   logits = (rmsnorm(x) * final_norm) C^T                  C = classifier or embedding
///
/// with rmsnorm(x) = x / sqrt(mean(x^2) + eps) and silu(a) = a / (1 + e^-a).
/// A LlamaState holds one KV cache per layer: the sequence so far.
///
/// Llama<float, Eigen::bfloat16> (or Eigen::half) keeps every matrix that a
/// step multiplies by (Wq, Wk, Wv, Wo, W1, W2, W3 and the classifier) in 16
/// bits, rounded once when the model is built (layers/projection.hpp); the
/// embedding table and the norms stay in T. A classifier shared with the
/// embedding then gets its own rounded copy.
///
/// Llama<float, kvattn::Stored> keeps every matrix, the embedding table too,
/// as a StoredMatrix (ops/stored_matrix.hpp), built from
/// LlamaWeights<float, StoredMatrix> (read_model_file_stored, to_stored):
/// a GGUF file's Q8_0 / Q4_0 / F16 ... tensors multiplied as stored; the
/// classifier may share the embedding (no copy).

#include <kvattn/cache/kv_cache.hpp>
#include <kvattn/cache/paged_kv_cache.hpp>
#include <kvattn/cache/serialization.hpp>
#include <kvattn/config.hpp>
#include <kvattn/detail/scratch.hpp>
#include <kvattn/error.hpp>
#include <kvattn/layers/multi_head_attention.hpp>
#include <kvattn/ops/linear.hpp>
#include <kvattn/ops/rmsnorm.hpp>
#include <kvattn/types.hpp>

#include <cstdint>
#include <cstring>
#include <istream>
#include <ostream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace kvattn {

/// Shape of a Llama decoder.
struct LlamaConfig {
  Eigen::Index dim = 0;         ///< model width (d_model)
  Eigen::Index hidden_dim = 0;  ///< feed-forward width
  Eigen::Index n_layers = 0;
  Eigen::Index n_heads = 0;
  Eigen::Index n_kv_heads = 0;
  Eigen::Index vocab_size = 0;
  Eigen::Index seq_len = 0;  ///< longest sequence the model was trained for
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeStyle rope = RopeStyle::Interleaved;

  Eigen::Index head_dim() const { return dim / n_heads; }
  AttentionConfig attention() const {
    return AttentionConfig{dim, n_heads, n_kv_heads, head_dim(), rope, rope_theta};
  }

  /// Throws std::invalid_argument naming the first impossible field.
  void validate() const {
    constexpr const char* fn = "LlamaConfig";
    detail::check_arg(dim > 0, fn, "dim", dim, "> 0");
    detail::check_arg(hidden_dim > 0, fn, "hidden_dim", hidden_dim, "> 0");
    detail::check_arg(n_layers > 0, fn, "n_layers", n_layers, "> 0");
    detail::check_arg(n_heads > 0, fn, "n_heads", n_heads, "> 0");
    detail::check_arg(vocab_size > 0, fn, "vocab_size", vocab_size, "> 0");
    detail::check_arg(seq_len > 0, fn, "seq_len", seq_len, "> 0");
    if (dim % n_heads != 0) {
      throw std::invalid_argument(
          detail::concat(fn, ": dim = ", dim, " is not a multiple of n_heads = ", n_heads));
    }
    attention().validate();
  }
};

/// Weights of one decoder layer, [out][in] as nn.Linear stores them. M:
/// RowMatrix<T>, or StoredMatrix (for Llama<float, Stored>).
template <class T, class M = RowMatrix<T>>
struct LlamaLayerWeights {
  Vector<T> attention_norm;          ///< [dim]
  AttentionWeights<T, M> attention;  ///< wq, wk, wv, wo (no biases in Llama)
  Vector<T> ffn_norm;                ///< [dim]
  M w1;                              ///< [hidden_dim x dim]  gate
  M w2;                              ///< [dim x hidden_dim]  down
  M w3;                              ///< [hidden_dim x dim]  up
};

/// All weights of a Llama decoder.
template <class T, class M = RowMatrix<T>>
struct LlamaWeights {
  LlamaConfig config;
  M token_embedding;  ///< [vocab_size x dim]
  std::vector<LlamaLayerWeights<T, M>> layers;
  Vector<T> final_norm;  ///< [dim]
  M classifier;          ///< [vocab_size x dim], or empty to share token_embedding
};

/// Every matrix of w as a StoredMatrix of ggml type `type` (F32, F16, BF16,
/// Q8_0 or Q4_0; StoredMatrix::encode). A matrix whose width is not a
/// multiple of 32 cannot be Q8_0 or Q4_0 and is kept F16 instead, as
/// llama.cpp's quantizer falls back; the embedding too is encoded. Throws
/// std::invalid_argument for another type.
inline LlamaWeights<float, StoredMatrix> to_stored(LlamaWeights<float> w,
                                                   uint32_t type = ggml::F32) {
  auto enc = [type](RowMatrix<float>& m) {
    if (m.size() == 0) return StoredMatrix();
    const bool blocks = type == ggml::Q8_0 || type == ggml::Q4_0;
    StoredMatrix s = StoredMatrix::encode(m, blocks && m.cols() % 32 != 0 ? ggml::F16 : type);
    m = RowMatrix<float>();  // release the float copy as soon as it is encoded
    return s;
  };
  LlamaWeights<float, StoredMatrix> s;
  s.config = w.config;
  s.token_embedding = enc(w.token_embedding);
  for (LlamaLayerWeights<float>& l : w.layers) {
    LlamaLayerWeights<float, StoredMatrix> o;
    o.attention_norm = std::move(l.attention_norm);
    o.attention = {enc(l.attention.wq),       enc(l.attention.wk),       enc(l.attention.wv),
                   enc(l.attention.wo),       std::move(l.attention.bq), std::move(l.attention.bk),
                   std::move(l.attention.bv), std::move(l.attention.bo)};
    o.ffn_norm = std::move(l.ffn_norm);
    o.w1 = enc(l.w1);
    o.w2 = enc(l.w2);
    o.w3 = enc(l.w3);
    s.layers.push_back(std::move(o));
  }
  s.final_norm = std::move(w.final_norm);
  s.classifier = enc(w.classifier);
  return s;
}

namespace detail {

/// The state file of a list of caches (LlamaState, dist::ShardedLlama):
/// magic "KVATTNLS", version 1 (u32), the number of caches (u32), the tokens
/// they hold (u64), then each cache as kvattn::save writes it.
template <class T, class Storage>
void save_caches(const std::vector<KVCache<T, Storage>>& caches, std::ostream& out,
                 const char* fn) {
  const uint32_t version = 1, layers = uint32_t(caches.size());
  const uint64_t position = caches.empty() ? 0 : uint64_t(caches.front().size());
  out.write("KVATTNLS", 8);
  out.write(reinterpret_cast<const char*>(&version), 4);
  out.write(reinterpret_cast<const char*>(&layers), 4);
  out.write(reinterpret_cast<const char*>(&position), 8);
  for (const KVCache<T, Storage>& c : caches) kvattn::save(c, out);
  if (!out) throw std::runtime_error(concat(fn, ": writing failed"));
}

/// Reads what save_caches wrote into caches of the same shapes and
/// capacities; all or nothing (std::runtime_error naming `what`).
template <class T, class Storage>
void load_caches(std::vector<KVCache<T, Storage>>& caches, std::istream& in,
                 const std::string& what) {
  char magic[8] = {};
  uint32_t version = 0, layers = 0;
  uint64_t position = 0;
  in.read(magic, 8);
  in.read(reinterpret_cast<char*>(&version), 4);
  in.read(reinterpret_cast<char*>(&layers), 4);
  in.read(reinterpret_cast<char*>(&position), 8);
  if (!in) throw std::runtime_error(concat(what, ": truncated: shorter than the state header"));
  if (std::memcmp(magic, "KVATTNLS", 8) != 0) {
    throw std::runtime_error(concat(what, ": not a kvattn Llama state (bad magic)"));
  }
  if (version != 1) {
    throw std::runtime_error(concat(what, ": state format version ", version, " is not supported"));
  }
  if (layers != caches.size()) {
    throw std::runtime_error(concat(what, ": holds ", layers, " layers, expected ", caches.size()));
  }
  std::vector<KVCache<T, Storage>> fresh;
  fresh.reserve(caches.size());
  for (size_t l = 0; l < caches.size(); ++l) {
    const KVCache<T, Storage>& c = caches[l];
    fresh.emplace_back(c.n_kv_heads(), c.head_dim(), c.capacity());
    kvattn::load(fresh.back(), in, concat(what, " layer ", l));
    if (uint64_t(fresh.back().size()) != position) {
      throw std::runtime_error(concat(what, " layer ", l, ": holds ", fresh.back().size(),
                                      " tokens, the state header says ", position));
    }
  }
  caches.swap(fresh);
}

}  // namespace detail

/// The sequence state of one conversation: a KV cache per layer, storing
/// Storage (see cache/storage.hpp). Move-only; copy() makes a deep copy.
template <class T, class Storage = T>
class LlamaState {
 public:
  LlamaState(LlamaState&&) noexcept = default;
  LlamaState& operator=(LlamaState&&) noexcept = default;
  LlamaState(const LlamaState&) = delete;
  LlamaState& operator=(const LlamaState&) = delete;

  /// Tokens processed so far: the position the next token gets.
  Eigen::Index pos() const { return caches_.front().size(); }
  Eigen::Index capacity() const { return caches_.front().capacity(); }
  const KVCache<T, Storage>& cache(Eigen::Index layer) const { return caches_.at(size_t(layer)); }

  /// Rolls back to the first n tokens in every layer.
  void truncate(Eigen::Index n) {
    if (n < 0 || n > pos()) {
      throw std::invalid_argument(
          detail::concat("LlamaState::truncate: n = ", n, ", expected 0 <= n <= pos() = ", pos()));
    }
    for (KVCache<T, Storage>& c : caches_) c.truncate(n);
  }
  void clear() noexcept {
    for (KVCache<T, Storage>& c : caches_) c.clear();
  }
  LlamaState copy() const {
    LlamaState s;
    for (const KVCache<T, Storage>& c : caches_) s.caches_.push_back(c.copy());
    return s;
  }

  /// Writes the state: magic "KVATTNLS" (8 bytes), format version 1 (u32),
  /// n_layers (u32), pos (u64), then every layer's cache as kvattn::save
  /// writes it (cache/serialization.hpp; each with its own CRC-32C).
  void save(std::ostream& out) const { detail::save_caches(caches_, out, "LlamaState::save"); }

  /// Reads a state written by save() for a model of this shape. Every layer
  /// is read and checked before any is replaced: on error
  /// (std::runtime_error naming `what`) this state is unchanged.
  void load(std::istream& in, const std::string& what = "stream") {
    detail::load_caches(caches_, in, what);
  }

 private:
  template <class, class>
  friend class Llama;
  LlamaState() = default;
  std::vector<KVCache<T, Storage>> caches_;  // [n_layers]
};

/// One entry of a ragged batch (Llama::forward_batch): tokens of one
/// sequence of a PagedKVCache, to run at its next positions (a prompt chunk,
/// or one token).
struct SeqTokens {
  SeqId seq = 0;
  std::vector<int> tokens;
};

/// T: the compute type. Weight: how the matrices are kept (T, or
/// Eigen::bfloat16 / Eigen::half for float; see the file comment).
template <class T, class Weight = T>
class Llama {
 public:
  using Scalar = T;
  using WeightType = Weight;
  /// What the constructor takes: LlamaWeights<T>, or for Weight = Stored
  /// LlamaWeights<T, StoredMatrix>.
  using Weights = LlamaWeights<T, detail::InputMatrix<T, Weight>>;
  /// The embedding table: RowMatrix<T>, or StoredMatrix for Weight = Stored.
  using Embedding = detail::InputMatrix<T, Weight>;

  /// Validates the config and every weight shape (std::invalid_argument
  /// naming the layer and the weight).
  explicit Llama(Weights w)
      : config_(checked(w)),
        embedding_(std::move(w.token_embedding)),
        final_norm_(std::move(w.final_norm)),
        classifier_(rounded && w.classifier.size() == 0
                        ? detail::encoded_weights<T, Weight>(Embedding(embedding_))
                        : detail::encoded_weights<T, Weight>(std::move(w.classifier))) {
    layers_.reserve(w.layers.size());
    for (LlamaLayerWeights<T, detail::InputMatrix<T, Weight>>& lw : w.layers) {
      layers_.push_back(
          Layer{std::move(lw.attention_norm),
                MultiHeadAttention<T, Weight>(config_.attention(), std::move(lw.attention)),
                std::move(lw.ffn_norm), detail::encoded_weights<T, Weight>(std::move(lw.w1)),
                detail::encoded_weights<T, Weight>(std::move(lw.w2)),
                detail::encoded_weights<T, Weight>(std::move(lw.w3))});
      lw = {};  // release the loaded copy as soon as the layer owns it
    }
  }

  const LlamaConfig& config() const { return config_; }
  /// [vocab_size x dim]
  const Embedding& token_embedding() const { return embedding_; }
  /// True when the classifier is the token embedding (no second copy is kept;
  /// never with bf16 / f16 weights, which round a copy).
  bool shares_classifier() const { return classifier_.size() == 0; }

  /// A fresh state holding up to capacity tokens (default: seq_len), its
  /// caches storing Storage.
  template <class Storage = T>
  LlamaState<T, Storage> make_state(Eigen::Index capacity = 0) const {
    const Eigen::Index cap = capacity > 0 ? capacity : config_.seq_len;
    LlamaState<T, Storage> s;
    s.caches_.reserve(size_t(config_.n_layers));
    for (const Layer& l : layers_)
      s.caches_.push_back(l.attention.template make_cache<Storage>(cap));
    return s;
  }

  /// Runs tokens at positions state.pos() ... and returns the logits after
  /// every one of them: [tokens.size() x vocab_size].
  template <class Storage>
  RowMatrix<T> forward(const std::vector<int>& tokens, LlamaState<T, Storage>& state) {
    RowMatrix<T> logits(Eigen::Index(tokens.size()), config_.vocab_size);  // before any change
    const Eigen::Index pos = state.caches_.empty() ? 0 : state.pos();
    run(tokens, state, "Llama::forward");
    try {
      ops::linear_batch<T, Weight>(classifier(), Vector<T>(), x_,
                                   logits);  // a product: may allocate
    } catch (...) {
      state.truncate(pos);
      throw;
    }
    return logits;
  }

  /// Runs a prompt in one batched pass (each layer sees all its tokens at
  /// once) and returns the logits after the last token: [vocab_size].
  template <class Storage>
  Vector<T> prefill(const std::vector<int>& tokens, LlamaState<T, Storage>& state) {
    detail::check_arg(!tokens.empty(), "Llama::prefill", "tokens.size()", 0, "> 0");
    Vector<T> logits(config_.vocab_size);  // allocated before the state changes
    const Eigen::Index pos = state.caches_.empty() ? 0 : state.pos();
    run(tokens, state, "Llama::prefill");
    last_logits(logits, state, pos);
    return logits;
  }

  /// One token at position state.pos(); returns the logits: [vocab_size].
  template <class Storage>
  Vector<T> step(int token, LlamaState<T, Storage>& state) {
    single_[0] = token;
    Vector<T> logits(config_.vocab_size);  // allocated before the state changes
    const Eigen::Index pos = state.caches_.empty() ? 0 : state.pos();
    run(single_, state, "Llama::step");
    last_logits(logits, state, pos);
    return logits;
  }

  /// A pool of n_blocks blocks of block_tokens positions (every layer) for
  /// this model's sequences, storing Storage.
  template <class Storage = T>
  PagedKVCache<T, Storage> make_paged_cache(Eigen::Index n_blocks,
                                            Eigen::Index block_tokens = 16) const {
    return PagedKVCache<T, Storage>(PagedCacheConfig{config_.n_layers, config_.n_kv_heads,
                                                     config_.head_dim(), block_tokens, n_blocks});
  }

  /// Runs a ragged batch: each entry's tokens at its sequence's next
  /// positions (some entries a prompt chunk, others one token), and returns
  /// the logits after each entry's last token, [batch.size() x vocab_size],
  /// in batch order. An entry of one token is computed exactly as it would
  /// be alone (bitwise, whatever else is in the batch, with any thread
  /// count); prompt chunks agree with a solo prefill to float rounding.
  /// Checks everything first: std::invalid_argument for an unknown or
  /// repeated sequence, an empty entry, a token out of range, a pool made
  /// for another model; std::length_error when the pool lacks the blocks the
  /// whole batch needs. After any throw the pool is as it was.
  template <class Storage>
  RowMatrix<T> forward_batch(const std::vector<SeqTokens>& batch, PagedKVCache<T, Storage>& cache);

 private:
  // bf16 / f16 weights: the classifier is a rounded copy, never the embedding.
  static constexpr bool rounded =
      !std::is_same<Weight, T>::value && !std::is_same<Weight, Stored>::value;

  struct Layer {
    Vector<T> attention_norm;
    MultiHeadAttention<T, Weight> attention;
    Vector<T> ffn_norm;
    detail::WeightMatrix<Weight> w1, w2, w3;
  };

  // x_.row(i) = the embedding of token.
  void embed(Eigen::Index i, int token) {
    if constexpr (std::is_same<Weight, Stored>::value) {
      embedding_.row(token, x_.row(i).data());
    } else {
      x_.row(i) = embedding_.row(token);
    }
  }

  // Y = X W^T: the first decode_rows rows as one-token products (bitwise
  // independent of the others), the rest as one matrix product.
  void project(const detail::WeightMatrix<Weight>& w, const Eigen::Ref<const RowMatrix<T>>& x,
               Eigen::Ref<RowMatrix<T>> y, Eigen::Index decode_rows) const {
    ops::linear_few<T, Weight>(w, Vector<T>(), x.topRows(decode_rows), y.topRows(decode_rows));
    const Eigen::Index rest = x.rows() - decode_rows;
    if (rest > 0)
      ops::linear_batch<T, Weight>(w, Vector<T>(), x.bottomRows(rest), y.bottomRows(rest));
  }

  // The feed-forward block on x_'s rows, added into x_ (xb_: the normed input).
  void feed_forward(const Layer& L, Eigen::Index decode_rows) {
    const T eps = static_cast<T>(config_.norm_eps);
    ops::rmsnorm_rows<T>(x_, L.ffn_norm, eps, xb_);
    project(L.w1, xb_, h1_, decode_rows);
    project(L.w3, xb_, h3_, decode_rows);
    if constexpr (std::is_same<T, float>::value) {
      for (Eigen::Index r = 0; r < h1_.rows(); ++r) {  // silu(h1) * h3, row by row
        kernels::active().silu_mul(h1_.row(r).data(), h3_.row(r).data(), h1_.cols());
      }
    } else {
      h1_.array() = h1_.array() / (T(1) + (-h1_.array()).exp()) * h3_.array();
    }
    project(L.w2, h1_, attn_, decode_rows);
    x_ += attn_;
  }

  static const LlamaConfig& checked(const Weights& w) {
    const LlamaConfig& c = w.config;
    c.validate();
    constexpr const char* fn = "Llama";
    detail::check_shape(fn, "token_embedding", w.token_embedding.rows(), w.token_embedding.cols(),
                        "[vocab_size x dim]", c.vocab_size, c.dim);
    detail::check_size(fn, "final_norm", w.final_norm.size(), "dim", c.dim);
    if (w.classifier.size() != 0) {
      detail::check_shape(fn, "classifier", w.classifier.rows(), w.classifier.cols(),
                          "[vocab_size x dim]", c.vocab_size, c.dim);
    }
    if (Eigen::Index(w.layers.size()) != c.n_layers) {
      throw std::invalid_argument(detail::concat(fn, ": layers has ", w.layers.size(),
                                                 " entries, expected n_layers = ", c.n_layers));
    }
    for (size_t l = 0; l < w.layers.size(); ++l) {
      const auto& lw = w.layers[l];
      const std::string at = detail::concat(fn, " layer ", l);
      detail::check_size(at.c_str(), "attention_norm", lw.attention_norm.size(), "dim", c.dim);
      detail::check_size(at.c_str(), "ffn_norm", lw.ffn_norm.size(), "dim", c.dim);
      detail::check_shape(at.c_str(), "w1", lw.w1.rows(), lw.w1.cols(), "[hidden_dim x dim]",
                          c.hidden_dim, c.dim);
      detail::check_shape(at.c_str(), "w2", lw.w2.rows(), lw.w2.cols(), "[dim x hidden_dim]", c.dim,
                          c.hidden_dim);
      detail::check_shape(at.c_str(), "w3", lw.w3.rows(), lw.w3.cols(), "[hidden_dim x dim]",
                          c.hidden_dim, c.dim);
    }
    return c;
  }

  const detail::WeightMatrix<Weight>& classifier() const {
    if constexpr (rounded) {
      return classifier_;
    } else {
      return classifier_.size() != 0 ? classifier_ : embedding_;
    }
  }

  // The classifier on the last row; if it throws (a first product may grow
  // scratch), the state is rolled back to `pos`.
  template <class Storage>
  void last_logits(Vector<T>& logits, LlamaState<T, Storage>& state, Eigen::Index pos) const {
    try {
      ops::linear<T, Weight>(classifier(), Vector<T>(), x_.row(x_.rows() - 1).transpose(), logits);
    } catch (...) {
      state.truncate(pos);
      throw;
    }
  }

  // Runs the tokens through every layer; leaves the final-normed hidden
  // states in x_ [n x dim]. Checks everything first; if anything throws
  // later, every cache is rolled back, so the state is as before.
  template <class Storage>
  void run(const std::vector<int>& tokens, LlamaState<T, Storage>& state, const char* fn) {
    const Eigen::Index n = Eigen::Index(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
        throw std::invalid_argument(
            detail::concat(fn, ": tokens[", i, "] = ", tokens[i],
                           ", expected 0 <= token < vocab_size = ", config_.vocab_size));
      }
    }
    if (Eigen::Index(state.caches_.size()) != config_.n_layers ||
        state.caches_.front().n_kv_heads() != config_.n_kv_heads ||
        state.caches_.front().head_dim() != config_.head_dim()) {
      throw std::invalid_argument(detail::concat(fn, ": state was not made by this model"));
    }
    state.caches_.front().check_room(fn, n);
    const Eigen::Index pos = state.pos();

    detail::reshape_scratch(x_, n, config_.dim);          // residual stream
    detail::reshape_scratch(xb_, n, config_.dim);         // normed input of a sublayer
    detail::reshape_scratch(attn_, n, config_.dim);       // attention output
    detail::reshape_scratch(h1_, n, config_.hidden_dim);  // gate
    detail::reshape_scratch(h3_, n, config_.hidden_dim);  // up
    const T eps = static_cast<T>(config_.norm_eps);
    for (Eigen::Index i = 0; i < n; ++i) embed(i, tokens[size_t(i)]);
    try {
      for (size_t l = 0; l < layers_.size(); ++l) {
        Layer& L = layers_[l];
        ops::rmsnorm_rows<T>(x_, L.attention_norm, eps, xb_);
        L.attention.forward(xb_, state.caches_[l], attn_, workspace_);
        x_ += attn_;
        feed_forward(L, n == 1 ? 1 : 0);
      }
      ops::rmsnorm_rows<T>(x_, final_norm_, eps, x_);
    } catch (...) {
      for (KVCache<T, Storage>& c : state.caches_) {
        if (c.size() > pos) c.truncate(pos);
      }
      throw;
    }
  }

  LlamaConfig config_;
  Embedding embedding_;  // [vocab_size x dim]
  std::vector<Layer> layers_;
  Vector<T> final_norm_;                     // [dim]
  detail::WeightMatrix<Weight> classifier_;  // [vocab_size x dim] or empty (shared with embedding_)

  // Scratch, reused across calls: [n x dim] and [n x hidden_dim].
  RowMatrix<T> x_, xb_, attn_, h1_, h3_;
  AttentionWorkspace<T> workspace_;
  std::vector<int> single_ = std::vector<int>(1);
  // forward_batch: the batch as ragged entries (one-token entries first),
  // the batch index of each entry, the pool's undo log, and the final rows.
  std::vector<detail::RaggedEntry> entries_;
  std::vector<Eigen::Index> order_, firsts_, ends_;
  std::vector<SeqId> seqs_;
  PagedUndo undo_;
  RowMatrix<T> last_;  // [batch x dim]
};

}  // namespace kvattn

#include <kvattn/models/llama_batch.hpp>  // Llama::forward_batch
