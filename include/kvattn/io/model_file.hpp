// A Llama model from either file format kvattn reads, told apart by the
// first four bytes: GGUF files (magic "GGUF") bring their own tokenizer and
// EOS id; anything else is read as a llama2.c checkpoint.
#pragma once

#include <kvattn/io/gguf_llama.hpp>
#include <kvattn/io/llama2c.hpp>

#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>

namespace kvattn {

/// What a model file holds: the weights, and for GGUF files the tokenizer
/// and the id that ends generation besides BOS.
template <class T = float, class M = RowMatrix<T>>
struct ModelFile {
  LlamaWeights<T, M> weights;
  std::optional<Tokenizer>
      tokenizer;              // none in a llama2.c checkpoint (its tokenizer is a separate file)
  int eos = Tokenizer::kBos;  // llama2.c models end a text with BOS
  bool gguf = false;
};

/// Whether the file at `path` starts with GGUF's magic.
inline bool is_gguf_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
}

/// Reads a GGUF file (quantized weights decoded to T) or a llama2.c
/// checkpoint. Throws std::runtime_error naming the file and the problem.
template <class T = float>
ModelFile<T> read_model_file(const std::string& path) {
  ModelFile<T> m;
  if (!is_gguf_file(path)) {
    m.weights = read_llama2c_checkpoint<T>(path);
    return m;
  }
  const GgufFile file = GgufFile::open(path);
  m.weights = gguf_llama_weights<T>(file);
  m.tokenizer.emplace(gguf_tokenizer(file));
  m.eos = gguf_eos(file);
  m.gguf = true;
  return m;
}

/// The same for Llama<float, Stored>: a GGUF file's matrices as stored
/// (viewed in the file's mapping, gguf_llama_stored_weights); a llama2.c
/// checkpoint's encoded as `llama2c_type` (to_stored: F32, F16, BF16, Q8_0
/// or Q4_0).
inline ModelFile<float, StoredMatrix> read_model_file_stored(const std::string& path,
                                                             uint32_t llama2c_type = ggml::F32) {
  ModelFile<float, StoredMatrix> m;
  if (!is_gguf_file(path)) {
    m.weights = to_stored(read_llama2c_checkpoint<float>(path), llama2c_type);
    return m;
  }
  const auto file = std::make_shared<const GgufFile>(GgufFile::open(path));
  m.weights = gguf_llama_stored_weights(file);
  m.tokenizer.emplace(gguf_tokenizer(*file));
  m.eos = gguf_eos(*file);
  m.gguf = true;
  return m;
}

}  // namespace kvattn
