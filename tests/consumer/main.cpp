// Built against an installed or add_subdirectory'd kvattn by the consumer
// tests: one decode step through the public API must give the reference
// numbers of a 1-head layer with identity weights (out = v = x).
#include <kvattn/kvattn.hpp>

#include <cmath>
#include <cstdio>

int main() {
  kvattn::AttentionConfig config{2, 1, 1, 2};
  const kvattn::RowMatrix<float> eye = kvattn::RowMatrix<float>::Identity(2, 2);
  kvattn::MultiHeadAttention<float> layer(config, {eye, eye, eye, eye, {}, {}, {}, {}});
  kvattn::KVCache<float> cache = layer.make_cache(4);
  kvattn::Vector<float> x(2);
  x << 3.0f, 4.0f;
  const kvattn::Vector<float> y = layer.step(x, cache);  // one token attends only itself: y = x
  const bool ok =
      cache.size() == 1 && std::abs(y(0) - 3.0f) < 1e-6f && std::abs(y(1) - 4.0f) < 1e-6f;
  std::printf("kvattn %s consumer (kernel target %s): %s\n", kvattn::version,
              kvattn::kernel_target(), ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
