#pragma once
/// \file
/// ShardedLlama's checkpoint reader and forward pass (included by
/// dist/sharded_llama.hpp).

#include <kvattn/dist/sharded_llama.hpp>

namespace kvattn::dist {
namespace detail {

/// Reads the slices of a llama2.c checkpoint's arrays (float32, in file
/// order) into T, seeking to each one.
class Llama2cSlices {
 public:
  Llama2cSlices(std::ifstream& in, const std::string& path) : in_(in), path_(path) {}

  /// Rows [first, first+n) of a [rows x cols] matrix at float offset `at`.
  template <class T>
  RowMatrix<T> rows(uint64_t at, Eigen::Index cols, Eigen::Index first, Eigen::Index n) {
    RowMatrix<T> m(n, cols);
    seek(at + uint64_t(first) * uint64_t(cols));
    kvattn::detail::read_floats(in_, path_, m.data(), uint64_t(n) * uint64_t(cols));
    return m;
  }
  /// Columns [first, first+n) of a [rows x cols] matrix at float offset `at`.
  template <class T>
  RowMatrix<T> cols(uint64_t at, Eigen::Index rows, Eigen::Index cols, Eigen::Index first,
                    Eigen::Index n) {
    RowMatrix<T> m(rows, n);
    for (Eigen::Index r = 0; r < rows; ++r) {
      seek(at + uint64_t(r) * uint64_t(cols) + uint64_t(first));
      kvattn::detail::read_floats(in_, path_, m.row(r).data(), uint64_t(n));
    }
    return m;
  }
  template <class T>
  Vector<T> vector(uint64_t at, Eigen::Index n) {
    Vector<T> v(n);
    seek(at);
    kvattn::detail::read_floats(in_, path_, v.data(), uint64_t(n));
    return v;
  }

 private:
  void seek(uint64_t floats) {
    in_.clear();
    in_.seekg(std::streamoff(sizeof(Llama2cHeader) + floats * sizeof(float)));
    if (!in_) kvattn::detail::file_error(path_, "cannot seek");
  }
  std::ifstream& in_;
  const std::string& path_;
};

}  // namespace detail

template <class T, class Weight>
ShardedLlama<T, Weight> ShardedLlama<T, Weight>::read_llama2c(Communicator& comm,
                                                              const std::string& path) {
  std::ifstream in;
  const uint64_t size = kvattn::detail::open_binary(path, in);
  Llama2cHeader h{};
  if (size < sizeof h) kvattn::detail::file_error(path, "too short for the llama2.c header");
  kvattn::detail::read_bytes(in, path, &h, sizeof h);
  bool shared = true;
  LlamaShard<T> s;
  s.config = llama2c_config(h, path, &shared);
  const LlamaConfig& c = s.config;
  if (size != llama2c_file_size(c, shared)) {
    kvattn::detail::file_error(
        path, kvattn::detail::concat("file is ", size, " bytes, its header implies ",
                                     llama2c_file_size(c, shared)));
  }
  detail::check_llama_split(comm, c);
  const int r = comm.rank(), R = comm.size();
  const Eigen::Index dim = c.dim, hd = c.head_dim(), kv_dim = c.n_kv_heads * hd, L = c.n_layers;
  const Eigen::Index hidden = c.hidden_dim, vocab = c.vocab_size;
  const Eigen::Index nq = c.n_heads / R * hd, nkv = kv_dim / R, nh = hidden / R, nv = vocab / R;
  // Float offsets of the arrays, in file order.
  const uint64_t emb = 0, att_norm = emb + uint64_t(vocab * dim), wq = att_norm + uint64_t(L * dim);
  const uint64_t wk = wq + uint64_t(L * dim * dim), wv = wk + uint64_t(L * kv_dim * dim);
  const uint64_t wo = wv + uint64_t(L * kv_dim * dim), ffn_norm = wo + uint64_t(L * dim * dim);
  const uint64_t w1 = ffn_norm + uint64_t(L * dim), w2 = w1 + uint64_t(L * hidden * dim);
  const uint64_t w3 = w2 + uint64_t(L * dim * hidden), fin = w3 + uint64_t(L * hidden * dim);
  const uint64_t cls = fin + uint64_t(dim) + uint64_t(c.seq_len * hd);  // past the RoPE tables
  detail::Llama2cSlices read(in, path);
  s.token_embedding = read.rows<T>(emb, dim, 0, vocab);
  s.final_norm = read.vector<T>(fin, dim);
  s.classifier =
      shared ? s.token_embedding.middleRows(r * nv, nv) : read.rows<T>(cls, dim, r * nv, nv);
  for (Eigen::Index l = 0; l < L; ++l) {
    typename LlamaShard<T>::Layer m;
    m.attention_norm = read.vector<T>(att_norm + uint64_t(l * dim), dim);
    m.ffn_norm = read.vector<T>(ffn_norm + uint64_t(l * dim), dim);
    m.attention.wq = read.rows<T>(wq + uint64_t(l * dim * dim), dim, r * nq, nq);
    m.attention.wk = read.rows<T>(wk + uint64_t(l * kv_dim * dim), dim, r * nkv, nkv);
    m.attention.wv = read.rows<T>(wv + uint64_t(l * kv_dim * dim), dim, r * nkv, nkv);
    m.attention.wo = read.cols<T>(wo + uint64_t(l * dim * dim), dim, dim, r * nq, nq);
    m.w1 = read.rows<T>(w1 + uint64_t(l * hidden * dim), dim, r * nh, nh);
    m.w2 = read.cols<T>(w2 + uint64_t(l * dim * hidden), dim, hidden, r * nh, nh);
    m.w3 = read.rows<T>(w3 + uint64_t(l * hidden * dim), dim, r * nh, nh);
    s.layers.push_back(std::move(m));
  }
  return ShardedLlama(comm, std::move(s));
}

template <class T, class Weight>
template <class Storage>
Vector<T> ShardedLlama<T, Weight>::run(const std::vector<int>& tokens,
                                       ShardedLlamaState<T, Storage>& state) {
  constexpr const char* fn = "ShardedLlama";
  const Eigen::Index n = Eigen::Index(tokens.size());
  kvattn::detail::check_arg(n > 0, fn, "tokens.size()", n, "> 0");
  for (size_t i = 0; i < tokens.size(); ++i) {
    kvattn::detail::check_arg(tokens[i] >= 0 && tokens[i] < config_.vocab_size, fn, "token",
                              tokens[i], "in [0, vocab_size)");
  }
  state.caches_.front().check_room(fn, n);
  const Eigen::Index pos = state.pos();
  kvattn::detail::reshape_scratch(x_, n, config_.dim);
  kvattn::detail::reshape_scratch(xb_, n, config_.dim);
  kvattn::detail::reshape_scratch(attn_, n, config_.dim);
  kvattn::detail::reshape_scratch(h1_, n, layers_.front().w1.rows());
  kvattn::detail::reshape_scratch(h3_, n, layers_.front().w3.rows());
  Vector<T> logits(config_.vocab_size);
  local_logits_.resize(classifier_.rows());
  const T eps = static_cast<T>(config_.norm_eps);
  for (Eigen::Index i = 0; i < n; ++i) x_.row(i) = embedding_.row(tokens[size_t(i)]);
  try {
    for (size_t l = 0; l < layers_.size(); ++l) {
      Layer& L = layers_[l];
      ops::rmsnorm_rows<T>(x_, L.attention_norm, eps, xb_);
      L.attention.forward(xb_, state.caches_[l], attn_, workspace_);  // all-reduced
      x_ += attn_;
      ops::rmsnorm_rows<T>(x_, L.ffn_norm, eps, xb_);
      ops::linear_batch<T, Weight>(L.w1, Vector<T>(), xb_, h1_);
      ops::linear_batch<T, Weight>(L.w3, Vector<T>(), xb_, h3_);
      for (Eigen::Index i = 0; i < n; ++i) {  // silu(h1) * h3, this rank's hidden units
        if constexpr (std::is_same<T, float>::value) {
          kernels::active().silu_mul(h1_.row(i).data(), h3_.row(i).data(), h1_.cols());
        } else {
          h1_.row(i).array() =
              h1_.row(i).array() / (T(1) + (-h1_.row(i).array()).exp()) * h3_.row(i).array();
        }
      }
      ops::linear_batch<T, Weight>(L.w2, Vector<T>(), h1_, attn_);  // a partial sum over ranks
      comm_->allreduce_sum(attn_.data(), attn_.size());
      x_ += attn_;
    }
    ops::rmsnorm_rows<T>(x_.bottomRows(1), final_norm_, eps, xb_.topRows(1));
    ops::gemv<T, Weight>(classifier_, xb_.row(0).data(), local_logits_.data());
    comm_->allgather(local_logits_.data(), local_logits_.size(),
                     logits.data());  // vocabulary order
  } catch (...) {
    for (KVCache<T, Storage>& c : state.caches_) {
      if (c.size() > pos) c.truncate(pos);
    }
    throw;
  }
  return logits;
}

}  // namespace kvattn::dist
