#pragma once
/// \file
/// Readers for llama2.c's checkpoint ("version 0") and tokenizer files.
///
/// Checkpoint: seven little-endian int32 (dim, hidden_dim, n_layers, n_heads,
/// n_kv_heads, vocab_size, seq_len; a negative vocab_size means the classifier
/// has its own weights at the end), then float32 arrays, every matrix
/// row-major [out][in]: token embedding [vocab][dim]; attention RMSNorm
/// [layers][dim]; wq [layers][dim][dim]; wk, wv [layers][kv_dim][dim]; wo
/// [layers][dim][dim]; FFN RMSNorm [layers][dim]; w1 [layers][hidden][dim];
/// w2 [layers][dim][hidden]; w3 [layers][hidden][dim]; final RMSNorm [dim];
/// two legacy RoPE tables [seq_len][head_size/2] (skipped); the classifier
/// [vocab][dim] when vocab_size was negative. The file size must equal what
/// the header implies.
///
/// Tokenizer: int32 max_token_length, then per token: float32 score, int32
/// byte length, the bytes.
///
/// Every problem is a std::runtime_error naming the file and what is wrong;
/// sizes are checked against the file size before anything is allocated.

#include <kvattn/error.hpp>
#include <kvattn/models/llama.hpp>
#include <kvattn/models/tokenizer.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <istream>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvattn {

/// The header of a llama2.c checkpoint, as stored.
struct Llama2cHeader {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

namespace detail {

[[noreturn]] inline void file_error(const std::string& path, const std::string& what) {
  throw std::runtime_error(concat(path, ": ", what));
}

// Opens a regular file for binary reading; returns its size.
inline uint64_t open_binary(const std::string& path, std::ifstream& in) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) file_error(path, "cannot open: no such file");
  if (!std::filesystem::is_regular_file(status))
    file_error(path, "cannot open: not a regular file");
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) file_error(path, "cannot read its size: " + ec.message());
  in.open(path, std::ios::binary);
  if (!in) file_error(path, "cannot open for reading");
  const uint32_t one = 1;
  unsigned char first = 0;
  std::memcpy(&first, &one, 1);
  if (first != 1) file_error(path, "llama2.c files are little-endian; this host is not");
  return size;
}

inline void read_bytes(std::istream& in, const std::string& path, void* dst, uint64_t n) {
  in.read(static_cast<char*>(dst), std::streamsize(n));
  if (uint64_t(in.gcount()) != n) file_error(path, "unexpected end of file");
}

// Reads n float32 values into dst (converted to T).
template <class T>
void read_floats(std::istream& in, const std::string& path, T* dst, uint64_t n) {
  if constexpr (std::is_same<T, float>::value) {
    read_bytes(in, path, dst, n * sizeof(float));
  } else {
    std::vector<float> chunk(std::min<uint64_t>(n, 1 << 16));
    for (uint64_t done = 0; done < n;) {
      const uint64_t m = std::min<uint64_t>(n - done, chunk.size());
      read_bytes(in, path, chunk.data(), m * sizeof(float));
      for (uint64_t i = 0; i < m; ++i) dst[done + i] = static_cast<T>(chunk[i]);
      done += m;
    }
  }
}

template <class T>
RowMatrix<T> read_matrix(std::istream& in, const std::string& path, Eigen::Index rows,
                         Eigen::Index cols) {
  RowMatrix<T> m(rows, cols);
  read_floats(in, path, m.data(), uint64_t(rows) * uint64_t(cols));
  return m;
}

template <class T>
Vector<T> read_vector(std::istream& in, const std::string& path, Eigen::Index n) {
  Vector<T> v(n);
  read_floats(in, path, v.data(), uint64_t(n));
  return v;
}

}  // namespace detail

/// Checks a header's fields for plausibility and returns the model config,
/// with shared_classifier set from the sign of vocab_size. Throws
/// std::runtime_error naming `path` and the field.
inline LlamaConfig llama2c_config(const Llama2cHeader& h, const std::string& path,
                                  bool* shared_classifier = nullptr) {
  auto field = [&](const char* name, int64_t v, int64_t limit) {
    if (v <= 0 || v > limit) {
      detail::file_error(path, detail::concat("header field ", name, " = ", v, " is not in [1, ",
                                              limit, "]: not a llama2.c checkpoint, or corrupt"));
    }
  };
  field("dim", h.dim, 1 << 16);
  field("hidden_dim", h.hidden_dim, 1 << 18);
  field("n_layers", h.n_layers, 1 << 10);
  field("n_heads", h.n_heads, 1 << 10);
  field("n_kv_heads", h.n_kv_heads, 1 << 10);
  field("|vocab_size|", h.vocab_size < 0 ? -int64_t(h.vocab_size) : int64_t(h.vocab_size), 1 << 22);
  field("seq_len", h.seq_len, 1 << 22);
  if (h.n_heads % h.n_kv_heads != 0) {
    detail::file_error(path, detail::concat("n_heads = ", h.n_heads,
                                            " is not a multiple of n_kv_heads = ", h.n_kv_heads));
  }
  if (h.dim % h.n_heads != 0 || (h.dim / h.n_heads) % 2 != 0) {
    detail::file_error(path, detail::concat("dim = ", h.dim, " is not n_heads = ", h.n_heads,
                                            " times an even head size"));
  }
  if (shared_classifier) *shared_classifier = h.vocab_size > 0;
  LlamaConfig c;
  c.dim = h.dim;
  c.hidden_dim = h.hidden_dim;
  c.n_layers = h.n_layers;
  c.n_heads = h.n_heads;
  c.n_kv_heads = h.n_kv_heads;
  c.vocab_size = h.vocab_size < 0 ? -int64_t(h.vocab_size) : h.vocab_size;
  c.seq_len = h.seq_len;
  return c;
}

/// Size in bytes of a checkpoint with this (plausible) config.
inline uint64_t llama2c_file_size(const LlamaConfig& c, bool shared_classifier) {
  const uint64_t dim = uint64_t(c.dim), hidden = uint64_t(c.hidden_dim), L = uint64_t(c.n_layers);
  const uint64_t kv_dim = uint64_t(c.n_kv_heads * c.head_dim());
  const uint64_t vocab = uint64_t(c.vocab_size);
  const uint64_t floats = vocab * dim                                     // token embedding
                          + L * dim                                       // attention RMSNorm
                          + L * dim * dim * 2                             // wq, wo
                          + L * kv_dim * dim * 2                          // wk, wv
                          + L * dim                                       // FFN RMSNorm
                          + L * hidden * dim * 3                          // w1, w2, w3
                          + dim                                           // final RMSNorm
                          + uint64_t(c.seq_len) * uint64_t(c.head_dim())  // two RoPE tables
                          + (shared_classifier ? 0 : vocab * dim);
  return sizeof(Llama2cHeader) + floats * sizeof(float);
}

/// Reads a llama2.c checkpoint. T is the compute type (float32 values are
/// converted for double). The classifier stays empty when the file shares it
/// with the token embedding, so no weight is held twice.
template <class T = float>
LlamaWeights<T> read_llama2c_checkpoint(std::istream& in, uint64_t size, const std::string& path);

template <class T = float>
LlamaWeights<T> read_llama2c_checkpoint(const std::string& path) {
  std::ifstream in;
  const uint64_t size = detail::open_binary(path, in);
  return read_llama2c_checkpoint<T>(in, size, path);
}

/// The same from a stream holding `size` bytes; `path` names it in errors.
template <class T>
LlamaWeights<T> read_llama2c_checkpoint(std::istream& in, uint64_t size, const std::string& path) {
  if (size < sizeof(Llama2cHeader)) {
    detail::file_error(path, detail::concat("file is ", size, " bytes, too short for the ",
                                            sizeof(Llama2cHeader), "-byte llama2.c header"));
  }
  Llama2cHeader h{};
  detail::read_bytes(in, path, &h, sizeof h);
  bool shared = true;
  LlamaWeights<T> w;
  w.config = llama2c_config(h, path, &shared);
  const LlamaConfig& c = w.config;
  const uint64_t expected = llama2c_file_size(c, shared);
  if (size != expected) {
    detail::file_error(
        path, detail::concat("file is ", size, " bytes, but its header (dim ", h.dim,
                             ", hidden_dim ", h.hidden_dim, ", n_layers ", h.n_layers, ", n_heads ",
                             h.n_heads, ", n_kv_heads ", h.n_kv_heads, ", vocab_size ",
                             h.vocab_size, ", seq_len ", h.seq_len, ") implies ", expected,
                             " bytes: truncated, corrupt or not a llama2.c checkpoint"));
  }

  const Eigen::Index dim = c.dim, hidden = c.hidden_dim, kv_dim = c.n_kv_heads * c.head_dim();
  const size_t L = size_t(c.n_layers);
  w.token_embedding = detail::read_matrix<T>(in, path, c.vocab_size, dim);
  w.layers.resize(L);
  for (auto& l : w.layers) l.attention_norm = detail::read_vector<T>(in, path, dim);
  for (auto& l : w.layers) l.attention.wq = detail::read_matrix<T>(in, path, dim, dim);
  for (auto& l : w.layers) l.attention.wk = detail::read_matrix<T>(in, path, kv_dim, dim);
  for (auto& l : w.layers) l.attention.wv = detail::read_matrix<T>(in, path, kv_dim, dim);
  for (auto& l : w.layers) l.attention.wo = detail::read_matrix<T>(in, path, dim, dim);
  for (auto& l : w.layers) l.ffn_norm = detail::read_vector<T>(in, path, dim);
  for (auto& l : w.layers) l.w1 = detail::read_matrix<T>(in, path, hidden, dim);
  for (auto& l : w.layers) l.w2 = detail::read_matrix<T>(in, path, dim, hidden);
  for (auto& l : w.layers) l.w3 = detail::read_matrix<T>(in, path, hidden, dim);
  w.final_norm = detail::read_vector<T>(in, path, dim);
  in.seekg(std::streamoff(uint64_t(c.seq_len) * uint64_t(c.head_dim()) * sizeof(float)),
           std::ios::cur);  // legacy RoPE tables: RoPE is computed
  if (!shared) w.classifier = detail::read_matrix<T>(in, path, c.vocab_size, dim);
  return w;
}

inline Tokenizer read_llama2c_tokenizer(std::istream& in, uint64_t size, const std::string& path,
                                        int vocab_size);

/// Reads a llama2.c tokenizer file with vocab_size tokens.
inline Tokenizer read_llama2c_tokenizer(const std::string& path, int vocab_size) {
  std::ifstream in;
  const uint64_t size = detail::open_binary(path, in);
  return read_llama2c_tokenizer(in, size, path, vocab_size);
}

/// The same from a stream holding `size` bytes; `path` names it in errors.
inline Tokenizer read_llama2c_tokenizer(std::istream& in, uint64_t size, const std::string& path,
                                        int vocab_size) {
  if (vocab_size <= 0)
    detail::file_error(path, detail::concat("vocab_size = ", vocab_size, ", expected > 0"));
  if (size < 4)
    detail::file_error(path, detail::concat("file is ", size, " bytes, too short for a tokenizer"));
  int32_t max_len = 0;
  detail::read_bytes(in, path, &max_len, 4);
  if (max_len <= 0 || max_len > (1 << 16)) {
    detail::file_error(
        path, detail::concat("max_token_length = ", max_len,
                             " is not in [1, 65536]: not a llama2.c tokenizer, or corrupt"));
  }
  // Each token takes at least 8 bytes: reject a vocabulary the file cannot hold before allocating.
  uint64_t remaining = size - 4;
  if (uint64_t(vocab_size) * 8 > remaining) {
    detail::file_error(path, detail::concat("file is ", size, " bytes, too short for ", vocab_size,
                                            " tokens (the model's vocab_size)"));
  }
  std::vector<std::string> pieces(static_cast<size_t>(vocab_size));
  std::vector<float> scores(static_cast<size_t>(vocab_size));
  for (int id = 0; id < vocab_size; ++id) {
    if (remaining < 8) detail::file_error(path, detail::concat("truncated at token ", id));
    int32_t len = 0;
    detail::read_bytes(in, path, &scores[size_t(id)], 4);
    detail::read_bytes(in, path, &len, 4);
    remaining -= 8;
    if (len < 0 || len > max_len || uint64_t(len) > remaining) {
      detail::file_error(path, detail::concat("token ", id, " has length ", len, ", expected 0..",
                                              max_len, " within the file"));
    }
    if (!std::isfinite(scores[size_t(id)])) {
      detail::file_error(path, detail::concat("token ", id, " has a non-finite score"));
    }
    pieces[size_t(id)].resize(size_t(len));
    detail::read_bytes(in, path, pieces[size_t(id)].data(), uint64_t(len));
    remaining -= uint64_t(len);
  }
  if (remaining != 0) {
    detail::file_error(path, detail::concat("has ", remaining, " bytes after its ", vocab_size,
                                            " tokens: vocab_size does not match this tokenizer"));
  }
  try {
    return Tokenizer(std::move(pieces), std::move(scores));
  } catch (const std::invalid_argument& e) {
    detail::file_error(path, e.what());
  }
}

}  // namespace kvattn
