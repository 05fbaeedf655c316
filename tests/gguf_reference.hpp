#pragma once
// The double-precision reference (llama_reference.hpp) of Llama weights as
// kvattn loaded them: every matrix copied out in [out][in] order.
#include "llama_reference.hpp"

#include <kvattn/models/llama.hpp>

#include <algorithm>
#include <vector>

namespace test {

/// kvattn's greedy continuation of `prompt` to `length` tokens: the prompt
/// prefilled, then one step per token.
template <class Model>
std::vector<int> greedy_tokens(Model& llama, std::vector<int> tokens, size_t length) {
  auto state = llama.make_state(Eigen::Index(length));
  kvattn::Vector<float> logits = llama.prefill(tokens, state);
  while (tokens.size() < length) {
    tokens.push_back(
        int(std::max_element(logits.data(), logits.data() + logits.size()) - logits.data()));
    logits = llama.step(tokens.back(), state);
  }
  return tokens;
}

inline reference::LlamaFile reference_of(const kvattn::LlamaWeights<float>& w) {
  const kvattn::LlamaConfig& c = w.config;
  reference::LlamaFile f{int(c.dim),
                         int(c.hidden_dim),
                         int(c.n_layers),
                         int(c.n_heads),
                         int(c.n_kv_heads),
                         int(c.vocab_size),
                         int(c.seq_len),
                         w.classifier.size() == 0,
                         {},
                         0,
                         0,
                         0,
                         0,
                         0,
                         0,
                         0,
                         0,
                         0,
                         0,
                         0,
                         0};
  auto put = [&](const float* p, Eigen::Index n) {
    const size_t at = f.w.size();
    f.w.insert(f.w.end(), p, p + n);
    return at;
  };
  auto per_layer = [&](auto member) {
    size_t at = f.w.size();
    for (const auto& l : w.layers) {
      const auto& m = member(l);
      put(m.data(), m.size());
    }
    return at;
  };
  f.emb = put(w.token_embedding.data(), w.token_embedding.size());
  f.rms_att = per_layer([](const auto& l) -> const auto& { return l.attention_norm; });
  f.wq = per_layer([](const auto& l) -> const auto& { return l.attention.wq; });
  f.wk = per_layer([](const auto& l) -> const auto& { return l.attention.wk; });
  f.wv = per_layer([](const auto& l) -> const auto& { return l.attention.wv; });
  f.wo = per_layer([](const auto& l) -> const auto& { return l.attention.wo; });
  f.rms_ffn = per_layer([](const auto& l) -> const auto& { return l.ffn_norm; });
  f.w1 = per_layer([](const auto& l) -> const auto& { return l.w1; });
  f.w2 = per_layer([](const auto& l) -> const auto& { return l.w2; });
  f.w3 = per_layer([](const auto& l) -> const auto& { return l.w3; });
  f.rms_final = put(w.final_norm.data(), w.final_norm.size());
  f.cls = f.shared ? f.emb : put(w.classifier.data(), w.classifier.size());
  return f;
}

}  // namespace test
