// The paged-cache snippet shown in README.md, compiled so it cannot go stale.
#include <kvattn/kvattn.hpp>

#include <iostream>

int main() {
  using namespace kvattn;
  MultiHeadAttention<float> layer(AttentionConfig{64, 8, 2, 8, RopeStyle::Interleaved}, [] {
    AttentionWeights<float> w;  // random weights, [out x in]
    w.wq = RowMatrix<float>::Random(64, 64) * 0.1f;
    w.wk = RowMatrix<float>::Random(16, 64) * 0.1f;
    w.wv = RowMatrix<float>::Random(16, 64) * 0.1f;
    w.wo = RowMatrix<float>::Random(64, 64) * 0.1f;
    return w;
  }());
  // One pool for every sequence: 64 blocks of 16 positions (one layer here).
  PagedKVCache<float> pool(PagedCacheConfig{/*n_layers=*/1, /*n_kv_heads=*/2, /*head_dim=*/8,
                                            /*block_tokens=*/16, /*n_blocks=*/64});
  const SeqId a = pool.add_sequence(), b = pool.add_sequence();
  layer.forward(RowMatrix<float>::Random(20, 64), pool.layer(0), a);  // prefill a: 2 blocks
  layer.forward(RowMatrix<float>::Random(5, 64), pool.layer(0), b);   // prefill b: 1 block
  const SeqId c = pool.fork(a);  // shares a's blocks; a write copies only the block it touches

  RowMatrix<float> x = RowMatrix<float>::Random(3, 64), y(3, 64);  // one new token per sequence
  layer.step_batch(x, pool.layer(0), {a, b, c}, y);  // one pass over the weights for all three
  std::cout << "lengths " << pool.length(a) << " " << pool.length(b) << " " << pool.length(c)
            << ", free blocks " << pool.free_blocks() << " of " << pool.n_blocks() << "\n";
  pool.release(c);  // prints "lengths 21 6 21, free blocks 60 of 64": a and c each wrote
                    // position 20 of their shared block 1, so one of them copied it
}
