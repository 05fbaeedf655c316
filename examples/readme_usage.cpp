// The usage snippet shown in README.md, compiled so it cannot go stale.
#include <kvattn/kvattn.hpp>

#include <iostream>

int main() {
  using namespace kvattn;
  // Llama-style layer: 8 query heads share 2 KV heads (GQA), interleaved RoPE.
  AttentionConfig config{/*d_model=*/256, /*n_heads=*/8, /*n_kv_heads=*/2,
                         /*head_dim=*/32, RopeStyle::Interleaved};
  AttentionWeights<float> w;                          // [out x in], as PyTorch stores them
  w.wq = RowMatrix<float>::Random(256, 256) * 0.05f;  // n_heads*head_dim x d_model
  w.wk = RowMatrix<float>::Random(64, 256) * 0.05f;   // n_kv_heads*head_dim x d_model
  w.wv = RowMatrix<float>::Random(64, 256) * 0.05f;
  w.wo = RowMatrix<float>::Random(256, 256) * 0.05f;  // d_model x n_heads*head_dim
  MultiHeadAttention<float> layer(config, std::move(w));
  KVCache<float> cache = layer.make_cache(/*capacity=*/1024);

  RowMatrix<float> prompt = RowMatrix<float>::Random(5, 256);  // 5 tokens, one per row
  RowMatrix<float> out = layer.forward(prompt, cache);         // prefill: [5 x 256]
  Vector<float> x = out.row(4).transpose();                    // feed something back
  for (int t = 0; t < 3; ++t) x = layer.step(x, cache);        // decode: one token each
  std::cout << "cached tokens: " << cache.size()               // 8
            << ", keys(0) is " << cache.keys(0).rows() << " x " << cache.keys(0).cols() << "\n";
}
