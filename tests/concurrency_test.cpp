// One layer (and one model) shared read-only by several threads, each with
// its own cache and workspace, gives the same results as serial use. Built
// and run under ThreadSanitizer by .ci/run.
#include <kvattn/kvattn.hpp>

#include "test_util.hpp"

#include <thread>

TEST(Concurrency, SharedLayerOwnCachesMatchSerialRuns) {
  std::mt19937 rng(1);
  const kvattn::AttentionConfig c{64, 8, 2, 8, kvattn::RopeStyle::Interleaved};
  const kvattn::MultiHeadAttention<float> layer(c, test::random_weights<float>(c, rng, true));
  constexpr int kThreads = 4;
  std::vector<kvattn::RowMatrix<float>> inputs, serial(kThreads), parallel(kThreads);
  for (int t = 0; t < kThreads; ++t) inputs.push_back(test::random_matrix<float>(40, 64, rng));

  // Prefill 24 tokens, then 16 steps; the one sequence of calls per input.
  auto run = [&](int t, kvattn::RowMatrix<float>& out) {
    kvattn::KVCache<float, Eigen::bfloat16> cache = layer.make_cache<Eigen::bfloat16>(40);
    kvattn::AttentionWorkspace<float> ws;
    out.resize(40, 64);
    layer.forward(inputs[size_t(t)].topRows(24), cache, out.topRows(24), ws);
    kvattn::Vector<float> y(64);
    for (Eigen::Index i = 24; i < 40; ++i) {
      layer.step(inputs[size_t(t)].row(i).transpose(), cache, y, ws);
      out.row(i) = y.transpose();
    }
  };
  for (int t = 0; t < kThreads; ++t) run(t, serial[size_t(t)]);
  std::vector<std::thread> pool;
  for (int t = 0; t < kThreads; ++t) pool.emplace_back([&, t] { run(t, parallel[size_t(t)]); });
  for (std::thread& th : pool) th.join();
  for (int t = 0; t < kThreads; ++t)
    EXPECT_EQ(parallel[size_t(t)], serial[size_t(t)]) << "thread " << t;
}
