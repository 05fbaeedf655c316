#pragma once
/// \file
/// Llama models from GGUF files (general.architecture "llama"): the config
/// from the llama.* keys, every weight dequantized to T, and the tokenizer
/// from the tokenizer.ggml.* keys.
///
/// Tensors. GGUF dims list ne0 first, and ne0 is the row length: a weight
/// [out x in] as nn.Linear and LlamaWeights hold it is stored row-major with
/// dims {in, out}, so it is read as it lies, without a transpose.
///
///   tensor                     dims (ne0, ne1)   LlamaWeights
///   token_embd.weight          dim, vocab_size   token_embedding [vocab_size x dim]
///   blk.N.attn_norm.weight     dim               layers[N].attention_norm [dim]
///   blk.N.attn_q.weight        dim, dim          attention.wq [dim x dim]
///   blk.N.attn_k.weight        dim, kv_dim       attention.wk [kv_dim x dim]
///   blk.N.attn_v.weight        dim, kv_dim       attention.wv [kv_dim x dim]
///   blk.N.attn_output.weight   dim, dim          attention.wo [dim x dim]
///   blk.N.ffn_norm.weight      dim               ffn_norm [dim]
///   blk.N.ffn_gate.weight      dim, hidden_dim   w1 [hidden_dim x dim]
///   blk.N.ffn_down.weight      hidden_dim, dim   w2 [dim x hidden_dim]
///   blk.N.ffn_up.weight        dim, hidden_dim   w3 [hidden_dim x dim]
///   output_norm.weight         dim               final_norm [dim]
///   output.weight              dim, vocab_size   classifier [vocab_size x dim] (optional)
///
/// with kv_dim = head_count_kv * head_dim. A missing output.weight means the
/// classifier is the embedding; so does one with the same type and bytes as
/// token_embd.weight (llama.cpp's llama2.c converter writes a shared
/// classifier out as such a copy). Either way `classifier` stays empty and
/// the weight is held once.
///
/// RoPE. llama.cpp runs the "llama" architecture with its normal RoPE mode,
/// which rotates adjacent pairs (x[2i], x[2i+1]) of each head: kvattn's
/// RopeStyle::Interleaved, Meta's original Llama convention and llama2.c's.
/// Hugging Face checkpoints rotate the halves (x[i], x[i + head_dim/2])
/// instead; convert_hf_to_gguf.py therefore reorders the rows of wq and wk
/// within each head (GGUF row 2i + e comes from HF row i + e * head_dim/2,
/// e = 0, 1), which makes the pair rotation compute the same attention
/// scores. llama2.c conversions copy wq and wk unchanged, as they are
/// already in pair order. So a GGUF "llama" file always means Interleaved,
/// and the config says so.
///
/// Tokenizer. GGUF "llama" vocabularies spell a space as U+2581 ("▁",
/// SentencePiece's convention); kvattn's Tokenizer, like llama2.c's
/// tokenizer files, uses a plain space, so gguf_tokenizer turns every U+2581
/// into ' '. The shared test files copied tok512.bin's vocabulary this way,
/// and read back give its pieces again, except ids 1 and 2, which the
/// converter renamed from "\n<s>\n" and "\n</s>\n" to "<s>" and "</s>".
/// The Tokenizer wants BOS at id 1 and the byte pieces <0x00>..<0xFF> at ids
/// 3..258, as SentencePiece Llama vocabularies have them; gguf_tokenizer
/// checks both.
///
/// Errors are std::runtime_error "<file>: <what>", naming the key or tensor.

#include <kvattn/config.hpp>
#include <kvattn/error.hpp>
#include <kvattn/io/gguf.hpp>
#include <kvattn/models/llama.hpp>
#include <kvattn/models/tokenizer.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace kvattn {

namespace detail {

// The value of key as a size in [1, limit].
inline Eigen::Index gguf_count(const GgufFile& f, const std::string& key, uint64_t limit) {
  const uint64_t v = f.get_uint(key);
  if (v == 0 || v > limit) {
    gguf_error(f.name(), concat(key, " = ", v, " is not in [1, ", limit, "]"));
  }
  return Eigen::Index(v);
}

// The shortest decimal that rounds to x: what a float32 hyperparameter was
// most likely written from (1e-05 rather than 9.99999975e-06).
inline double shortest_decimal(float x) {
  if (!std::isfinite(x)) return double(x);
  char text[32];
  for (int digits = 1; digits <= 9; ++digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, double(x));
    if (std::strtof(text, nullptr) == x) return std::strtod(text, nullptr);
  }
  return double(x);
}

// A real hyperparameter (fallback when absent); a float32 one is read as its
// shortest decimal, so 1e-5 written as float32 reads as the double 1e-5.
inline double gguf_real(const GgufFile& f, const std::string& key, double fallback) {
  const GgufValue* v = f.find(key);
  if (v == nullptr) return fallback;
  if (v->type == GgufType::Float32) return shortest_decimal(float(v->float_value));
  return f.get_float(key);
}

// Head counts, head size and RoPE width fit together.
inline void check_gguf_heads(const GgufFile& f, const LlamaConfig& c) {
  if (c.n_heads % c.n_kv_heads != 0) {
    gguf_error(f.name(),
               concat("llama.attention.head_count = ", c.n_heads,
                      " is not a multiple of llama.attention.head_count_kv = ", c.n_kv_heads));
  }
  if (c.dim % c.n_heads != 0 || c.head_dim() % 2 != 0) {
    gguf_error(f.name(), concat("llama.embedding_length = ", c.dim,
                                " is not llama.attention.head_count = ", c.n_heads,
                                " times an even head size"));
  }
  const char* key = "llama.rope.dimension_count";
  const uint64_t rope_dims = f.has(key) ? f.get_uint(key) : uint64_t(c.head_dim());
  if (rope_dims != uint64_t(c.head_dim())) {
    gguf_error(f.name(), concat(key, " = ", rope_dims, ", but the head size is ", c.head_dim(),
                                ": kvattn rotates whole heads (no partial RoPE)"));
  }
  if (!(c.norm_eps > 0) || !std::isfinite(c.norm_eps)) {
    gguf_error(f.name(), concat("llama.attention.layer_norm_rms_epsilon = ", c.norm_eps,
                                ", expected a finite value > 0"));
  }
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta)) {
    gguf_error(f.name(),
               concat("llama.rope.freq_base = ", c.rope_theta, ", expected a finite value > 0"));
  }
}

// True when t has dims {ne0, ne1} (a vector: ne1 = 1).
inline bool gguf_has_dims(const GgufTensor& t, Eigen::Index ne0, Eigen::Index ne1) {
  return t.dims[0] == uint64_t(ne0) && t.dims[1] == uint64_t(ne1) && t.dims[2] == 1 &&
         t.dims[3] == 1;
}

// The tensor called name, checked to have dims {ne0, ne1}; `what` names the
// weight it becomes, with its shape, for the error.
inline const GgufTensor& gguf_shaped(const GgufFile& f, const std::string& name, Eigen::Index ne0,
                                     Eigen::Index ne1, const char* what) {
  const GgufTensor& t = f.tensor(name);
  if (!gguf_has_dims(t, ne0, ne1)) {
    const std::string expected = ne1 == 1 ? concat(ne0) : concat(ne0, " x ", ne1);
    gguf_error(f.name(), concat("tensor ", name, " has dims ", gguf_dims_str(t), ", expected ",
                                expected, " (ne0 first, for ", what, ")"));
  }
  return t;
}

// The vocabulary size: ne1 of token_embd.weight, whose ne0 must be dim.
inline Eigen::Index gguf_vocab_size(const GgufFile& f, Eigen::Index dim) {
  const GgufTensor& t = f.tensor("token_embd.weight");
  if (t.dims[0] != uint64_t(dim) || t.n_dims != 2 || t.dims[1] > (uint64_t(1) << 22)) {
    gguf_error(f.name(), concat("tensor token_embd.weight has dims ", gguf_dims_str(t),
                                ", expected ", dim, " x vocab_size (vocab_size <= 4194304)"));
  }
  return Eigen::Index(t.dims[1]);
}

// Tensor `name` [rows x cols] (dims {cols, rows}), dequantized to T.
template <class T>
RowMatrix<T> gguf_matrix(const GgufFile& f, const std::string& name, Eigen::Index rows,
                         Eigen::Index cols, const char* what) {
  const GgufTensor& t = gguf_shaped(f, name, cols, rows, what);
  RowMatrix<T> m(rows, cols);
  gguf_dequantize<T>(t, m.data());
  return m;
}

// Tensor `name` [n], dequantized to T.
template <class T>
Vector<T> gguf_vector(const GgufFile& f, const std::string& name, Eigen::Index n,
                      const char* what) {
  const GgufTensor& t = gguf_shaped(f, name, n, 1, what);
  Vector<T> v(n);
  gguf_dequantize<T>(t, v.data());
  return v;
}

// True when a and b hold the same values in the same encoding.
inline bool gguf_same_data(const GgufTensor& a, const GgufTensor& b) {
  return a.type == b.type && a.dims == b.dims && a.bytes == b.bytes &&
         std::memcmp(a.data, b.data, size_t(a.bytes)) == 0;
}

}  // namespace detail

/// The model shape from the llama.* keys: block_count, embedding_length,
/// feed_forward_length, attention.head_count, attention.head_count_kv
/// (default head_count), attention.layer_norm_rms_epsilon, context_length
/// (seq_len), rope.freq_base (default 10000), rope.dimension_count (must be
/// the head size when present); vocab_size from token_embd.weight; RoPE
/// Interleaved (see the file comment). Throws std::runtime_error naming a
/// missing or impossible key, or another architecture.
inline LlamaConfig gguf_llama_config(const GgufFile& f) {
  const std::string& arch = f.get_string("general.architecture");
  if (arch != "llama") {
    detail::gguf_error(f.name(),
                       detail::concat("general.architecture is '", arch, "', expected 'llama'"));
  }
  LlamaConfig c;
  c.n_layers = detail::gguf_count(f, "llama.block_count", 1 << 10);
  c.dim = detail::gguf_count(f, "llama.embedding_length", 1 << 16);
  c.hidden_dim = detail::gguf_count(f, "llama.feed_forward_length", 1 << 18);
  c.n_heads = detail::gguf_count(f, "llama.attention.head_count", 1 << 10);
  c.n_kv_heads = f.has("llama.attention.head_count_kv")
                     ? detail::gguf_count(f, "llama.attention.head_count_kv", 1 << 10)
                     : c.n_heads;
  c.seq_len = detail::gguf_count(f, "llama.context_length", 1 << 24);
  const char* eps = "llama.attention.layer_norm_rms_epsilon";
  f.value(eps);  // required: throws naming it when missing
  c.norm_eps = detail::gguf_real(f, eps, 0.0);
  c.rope_theta = detail::gguf_real(f, "llama.rope.freq_base", 10000.0);
  c.rope = RopeStyle::Interleaved;
  detail::check_gguf_heads(f, c);
  c.vocab_size = detail::gguf_vocab_size(f, c.dim);
  try {
    c.validate();
  } catch (const std::invalid_argument& e) {
    detail::gguf_error(f.name(), e.what());
  }
  return c;
}

namespace detail {

// The weights of a "llama" file, each matrix made by matrix(name, rows, cols,
// what), the vectors dequantized to T.
template <class T, class M, class MakeMatrix>
LlamaWeights<T, M> gguf_llama_weights_with(const GgufFile& f, MakeMatrix matrix) {
  LlamaWeights<T, M> w;
  w.config = gguf_llama_config(f);
  const LlamaConfig& c = w.config;
  const Eigen::Index dim = c.dim, hidden = c.hidden_dim, kv_dim = c.n_kv_heads * c.head_dim();
  w.token_embedding =
      matrix("token_embd.weight", c.vocab_size, dim, "token_embedding [vocab_size x dim]");
  w.layers.resize(size_t(c.n_layers));
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const std::string b = concat("blk.", l, ".");
    LlamaLayerWeights<T, M>& lw = w.layers[l];
    lw.attention_norm = gguf_vector<T>(f, b + "attn_norm.weight", dim, "attention_norm");
    lw.attention.wq = matrix(b + "attn_q.weight", dim, dim, "wq [dim x dim]");
    lw.attention.wk = matrix(b + "attn_k.weight", kv_dim, dim, "wk [kv_dim x dim]");
    lw.attention.wv = matrix(b + "attn_v.weight", kv_dim, dim, "wv [kv_dim x dim]");
    lw.attention.wo = matrix(b + "attn_output.weight", dim, dim, "wo [dim x dim]");
    lw.ffn_norm = gguf_vector<T>(f, b + "ffn_norm.weight", dim, "ffn_norm");
    lw.w1 = matrix(b + "ffn_gate.weight", hidden, dim, "w1 [hidden_dim x dim]");
    lw.w2 = matrix(b + "ffn_down.weight", dim, hidden, "w2 [dim x hidden_dim]");
    lw.w3 = matrix(b + "ffn_up.weight", hidden, dim, "w3 [hidden_dim x dim]");
  }
  w.final_norm = gguf_vector<T>(f, "output_norm.weight", dim, "final_norm");
  const GgufTensor* output = f.find_tensor("output.weight");
  if (output != nullptr && !gguf_same_data(*output, f.tensor("token_embd.weight"))) {
    w.classifier = matrix("output.weight", c.vocab_size, dim, "classifier [vocab_size x dim]");
  }
  return w;
}

}  // namespace detail

/// Every weight of a "llama" GGUF file, dequantized to T (float or double),
/// each checked against the config (std::runtime_error naming the tensor and
/// both shapes). See the file comment for the tensors and the classifier.
template <class T = float>
LlamaWeights<T> gguf_llama_weights(const GgufFile& f) {
  return detail::gguf_llama_weights_with<T, RowMatrix<T>>(
      f, [&f](const std::string& name, Eigen::Index rows, Eigen::Index cols, const char* what) {
        return detail::gguf_matrix<T>(f, name, rows, cols, what);
      });
}

/// Every weight of a "llama" GGUF file as stored, for Llama<float, Stored>:
/// each matrix a StoredMatrix viewing the file's bytes (F32, F16, BF16, Q8_0,
/// Q4_0; the other types dequantized to F32 copies), keeping `f` alive; the
/// norms as float. Same checks as gguf_llama_weights.
inline LlamaWeights<float, StoredMatrix> gguf_llama_stored_weights(
    std::shared_ptr<const GgufFile> f) {
  return detail::gguf_llama_weights_with<float, StoredMatrix>(
      *f, [&f](const std::string& name, Eigen::Index rows, Eigen::Index cols, const char* what) {
        const GgufTensor& t = detail::gguf_shaped(*f, name, cols, rows, what);
        try {
          return StoredMatrix::view(t.type, rows, cols, t.data, f);
        } catch (const std::invalid_argument& e) {
          detail::gguf_error(f->name(), detail::concat("tensor ", name, ": ", e.what()));
        }
      });
}

namespace detail {

// A token id key (fallback when absent), checked to fit in an int.
inline int gguf_token_id(const GgufFile& f, const std::string& key, int fallback) {
  if (!f.has(key)) return fallback;
  const uint64_t id = f.get_uint(key);
  if (id > uint64_t(std::numeric_limits<int32_t>::max())) {
    gguf_error(f.name(), concat(key, " = ", id, " is not a token id"));
  }
  return int(id);
}

// piece with every U+2581 (UTF-8 E2 96 81) replaced by a space.
inline std::string sentencepiece_spaces(const std::string& piece) {
  std::string out;
  out.reserve(piece.size());
  for (size_t i = 0; i < piece.size(); ++i) {
    if (piece.compare(i, 3, "\xE2\x96\x81") == 0) {
      out += ' ';
      i += 2;
    } else {
      out += piece[i];
    }
  }
  return out;
}

// The pieces of tokenizer.ggml.tokens, spaces restored.
inline std::vector<std::string> gguf_pieces(const GgufFile& f) {
  const GgufArray& tokens = f.get_array("tokenizer.ggml.tokens");
  if (tokens.type != GgufType::String) {
    gguf_error(f.name(), concat("tokenizer.ggml.tokens is an array of ",
                                gguf_type_name(tokens.type), ", expected strings"));
  }
  std::vector<std::string> pieces;
  pieces.reserve(tokens.strings.size());
  for (const std::string& t : tokens.strings) pieces.push_back(sentencepiece_spaces(t));
  return pieces;
}

// tokenizer.ggml.scores: n finite numbers.
inline std::vector<float> gguf_scores(const GgufFile& f, size_t n) {
  const GgufArray& a = f.get_array("tokenizer.ggml.scores");
  if (a.type != GgufType::Float32 && a.type != GgufType::Float64) {
    gguf_error(f.name(), concat("tokenizer.ggml.scores is an array of ", gguf_type_name(a.type),
                                ", expected float32"));
  }
  if (a.size != uint64_t(n)) {
    gguf_error(f.name(), concat("tokenizer.ggml.scores has ", a.size,
                                " entries, but tokenizer.ggml.tokens has ", n));
  }
  std::vector<float> scores(n);
  for (size_t i = 0; i < n; ++i) {
    scores[i] = float(a.number(i));
    if (!std::isfinite(scores[i])) {
      gguf_error(f.name(), concat("tokenizer.ggml.scores: token ", i, " has a non-finite score"));
    }
  }
  return scores;
}

// NN for a piece spelled exactly <0xNN> (hex digits), else -1.
inline int gguf_byte_piece(const std::string& p) {
  if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>') return -1;
  int value = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char ch = p[i];
    const int digit = ch >= '0' && ch <= '9'   ? ch - '0'
                      : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                      : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                                               : -1;
    if (digit < 0) return -1;
    value = value * 16 + digit;
  }
  return value;
}

// BOS at id 1 and the byte pieces at ids 3..258, where the Tokenizer has them.
inline void check_gguf_vocab(const GgufFile& f, const std::vector<std::string>& pieces) {
  const int bos = gguf_token_id(f, "tokenizer.ggml.bos_token_id", Tokenizer::kBos);
  if (bos != Tokenizer::kBos) {
    gguf_error(f.name(), concat("tokenizer.ggml.bos_token_id = ", bos,
                                ", but kvattn's Tokenizer puts BOS at id ", Tokenizer::kBos));
  }
  if (pieces.size() < size_t(Tokenizer::kFirstByte + 256)) return;  // the Tokenizer says why
  for (int b = 0; b < 256; ++b) {
    const int id = Tokenizer::kFirstByte + b;
    if (gguf_byte_piece(pieces[size_t(id)]) != b) {
      char expected[16];
      std::snprintf(expected, sizeof expected, "<0x%02X>", unsigned(b));
      gguf_error(f.name(), concat("token ", id, " is '", pieces[size_t(id)], "', expected '",
                                  expected, "': kvattn's Tokenizer needs the byte pieces ",
                                  "<0x00>..<0xFF> at ids 3..258"));
    }
  }
}

}  // namespace detail

/// The BOS token id: tokenizer.ggml.bos_token_id, default 1.
inline int gguf_bos(const GgufFile& f) {
  return detail::gguf_token_id(f, "tokenizer.ggml.bos_token_id", 1);
}

/// The EOS token id: tokenizer.ggml.eos_token_id, default 2.
inline int gguf_eos(const GgufFile& f) {
  return detail::gguf_token_id(f, "tokenizer.ggml.eos_token_id", 2);
}

/// The tokenizer of a file whose tokenizer.ggml.model is "llama", from
/// tokenizer.ggml.tokens (U+2581 read as a space) and tokenizer.ggml.scores.
/// Throws std::runtime_error naming the key that is missing or does not fit.
inline Tokenizer gguf_tokenizer(const GgufFile& f) {
  const std::string& model = f.get_string("tokenizer.ggml.model");
  if (model != "llama") {
    detail::gguf_error(f.name(), detail::concat("tokenizer.ggml.model is '", model,
                                                "', expected 'llama' (SentencePiece BPE)"));
  }
  std::vector<std::string> pieces = detail::gguf_pieces(f);
  std::vector<float> scores = detail::gguf_scores(f, pieces.size());
  detail::check_gguf_vocab(f, pieces);
  try {
    return Tokenizer(std::move(pieces), std::move(scores));
  } catch (const std::invalid_argument& e) {
    detail::gguf_error(f.name(), e.what());
  }
}

}  // namespace kvattn
