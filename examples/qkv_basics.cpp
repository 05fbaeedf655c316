// qkv_basics: self-attention on two tokens, step by step, with the numbers.
//
// Each input x is multiplied by three distinct learned matrices: the query
// q = Wq x ("what I look for"), the key k = Wk x ("what I offer to be found
// by") and the value v = Wv x ("what I pass on"). A token's output is a
// softmax-weighted mix of the values of every token up to itself, weighted by
// how well its query matches each key. Keys and values of past tokens never
// change, so a KV cache keeps them and a new token costs one projection and
// one pass over the cache.
#include <kvattn/kvattn.hpp>

#include <cmath>
#include <iostream>

using kvattn::RowMatrix;
using kvattn::Vector;

static void show(const char* name, const RowMatrix<double>& m) {
  std::cout << name << "  [" << m.rows() << " x " << m.cols() << "]\n" << m << "\n\n";
}

int main() {
  // One head, d_model 2, head_dim 2: small enough to check on paper.
  const kvattn::AttentionConfig config{/*d_model=*/2, /*n_heads=*/1, /*n_kv_heads=*/1,
                                       /*head_dim=*/2};
  kvattn::AttentionWeights<double> w;
  w.wq.resize(2, 2);
  w.wk.resize(2, 2);
  w.wv.resize(2, 2);
  w.wo.resize(2, 2);
  w.wq << 1, 2, 0, 1;  // [out x in], as nn.Linear stores it
  w.wk << 0, 1, 1, 0;
  w.wv << 1, 1, 2, 0;
  w.wo << 1, 0, 0, 1;  // identity, so the layer's output is the attention output
  std::cout << "== The three projection matrices (distinct) ==\n\n";
  show("Wq", w.wq);
  show("Wk", w.wk);
  show("Wv", w.wv);

  RowMatrix<double> x(2, 2);  // a row is a token
  x << 1, 0,                  // x1
      0, 1;                   // x2
  std::cout << "== Input: two tokens, one per row ==\n\n";
  show("X", x);

  const kvattn::QKVProjection<double> proj(config, w.wq, w.wk, w.wv);
  const kvattn::QKV<double> qkv = proj.forward_batch(x);
  std::cout << "== Projections: Q = X Wq^T, K = X Wk^T, V = X Wv^T ==\n\n";
  show("Q", qkv.q);
  show("K", qkv.k);
  show("V", qkv.v);

  RowMatrix<double> scores(2, 2);
  kvattn::ops::attention_scores<double>(qkv.q, qkv.k, config.scale(), scores);
  std::cout << "== Scores S = Q K^T / sqrt(head_dim) ==\n"
            << "Row i holds token i's match with every key. Causal: token 1 may not\n"
            << "look at token 2, so only S(1,1) counts in row 1.\n\n";
  show("S", scores);
  Vector<double> row2 = scores.row(1).transpose();
  kvattn::softmax_inplace<double>(row2);
  std::cout << "Token 2's attention weights softmax(S row 2) = " << row2.transpose()
            << "\nToken 2's output = " << row2(0) << " * v1 + " << row2(1)
            << " * v2 = " << (row2(0) * qkv.v.row(0) + row2(1) * qkv.v.row(1)) << "\n\n";

  std::cout << "== The same through the layer and its KV cache ==\n\n";
  kvattn::MultiHeadAttention<double> layer(config, w);
  kvattn::KVCache<double> cache = layer.make_cache(/*capacity=*/8);
  const RowMatrix<double> y = layer.forward(x, cache);  // prefill: both tokens at once
  show("layer.forward(X)", y);
  std::cout << "The cache now holds " << cache.size() << " tokens:\n";
  show("cache.keys(0)", cache.keys(0));
  show("cache.values(0)", cache.values(0));

  Vector<double> x3(2);
  x3 << 1, 1;
  std::cout << "== One decode step: x3 = " << x3.transpose() << " ==\n"
            << "Only x3 is projected; its q attends over the 2 cached keys plus its own.\n\n";
  const Vector<double> y3 = layer.step(x3, cache);
  std::cout << "layer.step(x3) = " << y3.transpose() << "\n";
  std::cout << "cache.size() = " << cache.size() << ", cache.keys(0) =\n" << cache.keys(0) << "\n";
  return 0;
}
