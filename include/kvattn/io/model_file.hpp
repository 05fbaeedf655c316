// A Llama model from either file format kvattn reads, told apart by the
// first four bytes: GGUF files (magic "GGUF") bring their own tokenizer and
// EOS id; anything else is read as a llama2.c checkpoint.
#pragma once

#include <kvattn/io/gguf_llama.hpp>
#include <kvattn/io/llama2c.hpp>

#include <cstring>
#include <fstream>
#include <optional>
#include <string>

namespace kvattn {

/// What a model file holds: the weights, and for GGUF files the tokenizer
/// and the id that ends generation besides BOS.
template <class T = float>
struct ModelFile {
  LlamaWeights<T> weights;
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

}  // namespace kvattn
