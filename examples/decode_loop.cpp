// decode_loop: what the KV cache is worth.
//
// One attention layer generates a few hundred tokens. With the cache, each
// step projects only the new token and attends over the cached keys and
// values: O(t) work at step t. Without it, each step recomputes the whole
// prefix from scratch: O(t^2). Both must give the same outputs.
#include <kvattn/kvattn.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>

using kvattn::RowMatrix;
using kvattn::Vector;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  const Eigen::Index n_tokens = argc > 1 ? std::max(1L, std::atol(argv[1])) : 384;
  const kvattn::AttentionConfig config{/*d_model=*/512, /*n_heads=*/8, /*n_kv_heads=*/2,
                                       /*head_dim=*/64, kvattn::RopeStyle::Interleaved};
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random = [&](Eigen::Index rows, Eigen::Index cols, float scale) {
    RowMatrix<float> m(rows, cols);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = scale * normal(rng);
    return m;
  };
  const float s = 1.0f / std::sqrt(float(config.d_model));
  kvattn::AttentionWeights<float> w{random(config.q_dim(), config.d_model, s),
                                    random(config.kv_dim(), config.d_model, s),
                                    random(config.kv_dim(), config.d_model, s),
                                    random(config.d_model, config.q_dim(), s),
                                    {},
                                    {},
                                    {},
                                    {}};
  kvattn::MultiHeadAttention<float> layer(config, std::move(w));
  const RowMatrix<float> x = random(n_tokens, config.d_model, 1.0f);  // [n_tokens x d_model]

  std::printf("layer: d_model %ld, %ld query heads, %ld KV heads, head_dim %ld; %ld tokens\n",
              long(config.d_model), long(config.n_heads), long(config.n_kv_heads),
              long(config.head_dim), long(n_tokens));

  // With the cache: one step per token.
  RowMatrix<float> cached(n_tokens, config.d_model);
  kvattn::KVCache<float> cache = layer.make_cache(n_tokens);
  const auto t0 = Clock::now();
  for (Eigen::Index t = 0; t < n_tokens; ++t) {
    cached.row(t) = layer.step(x.row(t).transpose(), cache).transpose();
  }
  const double with_cache = std::chrono::duration<double>(Clock::now() - t0).count();

  // Without: at step t, run tokens 0..t from an empty cache and keep the last row.
  RowMatrix<float> recomputed(n_tokens, config.d_model);
  const auto t1 = Clock::now();
  for (Eigen::Index t = 0; t < n_tokens; ++t) {
    kvattn::KVCache<float> scratch = layer.make_cache(t + 1);
    recomputed.row(t) = layer.forward(x.topRows(t + 1), scratch).row(t);
  }
  const double without_cache = std::chrono::duration<double>(Clock::now() - t1).count();

  const float max_diff = (cached - recomputed).cwiseAbs().maxCoeff();
  const float max_abs = recomputed.cwiseAbs().maxCoeff();
  std::printf("with KV cache:    %8.3f s  (%8.1f tokens/s)\n", with_cache, n_tokens / with_cache);
  std::printf("without cache:    %8.3f s  (%8.1f tokens/s)\n", without_cache,
              n_tokens / without_cache);
  std::printf("speedup:          %8.1fx\n", without_cache / with_cache);
  std::printf("largest difference between the two outputs: %.3g (largest output %.3g)\n",
              double(max_diff), double(max_abs));
  return max_diff <= 1e-4f * std::max(1.0f, max_abs) ? 0 : 1;
}
