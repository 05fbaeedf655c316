#include <kvattn/cache/kv_cache.hpp>
#include <kvattn/layers/multi_head_attention.hpp>
#include <kvattn/layers/projection.hpp>
#include <kvattn/ops/attention.hpp>

#include "test_util.hpp"

#include <cstdint>
#include <cstring>
#if defined(_OPENMP)
#include <omp.h>
#endif

using kvattn::AttentionConfig;

template <class T>
class AttentionKernels : public ::testing::Test {};
TYPED_TEST_SUITE(AttentionKernels, test::ScalarTypes);

// Plain double loops: out_r = sum_j softmax_j(scale * q_r . k_j) v_j.
static kvattn::RowMatrix<double> plain_attention(const kvattn::RowMatrix<double>& q,
                                                 const kvattn::RowMatrix<double>& k,
                                                 const kvattn::RowMatrix<double>& v, double scale) {
  kvattn::RowMatrix<double> out = kvattn::RowMatrix<double>::Zero(q.rows(), v.cols());
  for (Eigen::Index r = 0; r < q.rows(); ++r) {
    std::vector<double> s(static_cast<size_t>(k.rows()));
    double m = -INFINITY, sum = 0;
    for (Eigen::Index j = 0; j < k.rows(); ++j) {
      double dot = 0;
      for (Eigen::Index d = 0; d < q.cols(); ++d) dot += q(r, d) * k(j, d);
      m = std::max(m, s[size_t(j)] = scale * dot);
    }
    for (double& e : s) sum += (e = std::exp(e - m));
    for (Eigen::Index j = 0; j < k.rows(); ++j) out.row(r) += s[size_t(j)] / sum * v.row(j);
  }
  return out;
}

// The decode step (split into chunks of kDecodeChunk positions, merged with
// the log-sum-exp rule) against plain loops; n_ctx crosses chunk boundaries.
TYPED_TEST(AttentionKernels, DecodeMatchesPlainLoops) {
  using T = TypeParam;
  std::mt19937 rng(5);
  for (Eigen::Index group : {1, 2, 3, 4, 6, 8}) {
    for (Eigen::Index head_dim : {1, 5, 12, 64, 128}) {
      for (Eigen::Index n_ctx : {1, 2, 7, 256, 257, 1100}) {
        const auto q = test::random_matrix<double>(group, head_dim, rng, 2.0);
        const auto k = test::random_matrix<double>(n_ctx, head_dim, rng, 2.0);
        const auto v = test::random_matrix<double>(n_ctx, head_dim, rng);
        // NOLINTNEXTLINE(performance-unnecessary-copy-initialization): a copy only for T = double
        const kvattn::RowMatrix<T> qt = q.cast<T>(), kt = k.cast<T>(), vt = v.cast<T>();
        // One KV head holding k and v; the group's query heads read it.
        kvattn::KVCache<T> cache(1, head_dim, n_ctx);
        cache.append(kt, vt);
        kvattn::ops::AttentionScratch<T> scratch;
        scratch.reserve_decode(n_ctx, 1, group, head_dim);
        kvattn::RowMatrix<T> out(group, head_dim);
        const double scale = 1.0 / std::sqrt(double(head_dim));
        kvattn::ops::attend_decode<T>(qt.data(), cache, n_ctx, group, T(scale), out.data(),
                                      scratch);
        EXPECT_TRUE(test::close(out, plain_attention(q, k, v, scale), test::tolerance<T>()))
            << "group " << group << " head_dim " << head_dim << " n_ctx " << n_ctx;
      }
    }
  }
}

// attend_causal over a batch (matrix products in tiles, with a causal mask)
// must equal the one-token decode kernel run at each position in turn.
TYPED_TEST(AttentionKernels, CausalBatchEqualsDecodeAtEachPosition) {
  using T = TypeParam;
  std::mt19937 rng(6);
  const Eigen::Index n_heads = 6, n_kv = 2, hd = 8, first = 9, n_new = 75;  // 3 tiles
  kvattn::KVCache<T> cache(n_kv, hd, first + n_new);
  cache.append(test::random_matrix<T>(first + n_new, n_kv * hd, rng),
               test::random_matrix<T>(first + n_new, n_kv * hd, rng));
  const kvattn::RowMatrix<T> q = test::random_matrix<T>(n_new, n_heads * hd, rng, 3.0);
  const T scale = T(0.3);
  kvattn::ops::AttentionScratch<T> scratch;
  scratch.reserve_prefill(n_new, first + n_new, n_heads / n_kv, hd, false);
  scratch.reserve_decode(first + n_new, n_kv, n_heads / n_kv, hd);
  kvattn::RowMatrix<T> batch(n_new, n_heads * hd);
  kvattn::ops::attend_causal<T>(q, cache, first, n_heads, scale, batch, scratch);
  for (Eigen::Index i = 0; i < n_new; ++i) {
    kvattn::RowMatrix<T> one(1, n_heads * hd);
    kvattn::ops::attend_causal<T>(q.row(i), cache, first + i, n_heads, scale, one, scratch);
    EXPECT_TRUE(test::close(batch.row(i), one, 10 * test::tolerance<T>())) << "token " << i;
  }
}

// Scores with Wq == Wk: q_i = k_i, so S = Q Q^T is symmetric and S_ii = |q_i|^2.
// d_model 2, head_dim 2, scale 1, W = [[1, 1], [0, 1]];
// x1 = (1, 0), x2 = (0, 1), x3 = (1, 1)  ->  q1 = (1, 0), q2 = (1, 1), q3 = (2, 1)
//   S = [[1, 1, 2],
//        [1, 2, 3],
//        [2, 3, 5]]       (diagonal 1, 2, 5 = squared norms)
// With a distinct Wk = [[0, 1], [2, 0]]: k1 = (0, 2), k2 = (1, 0), k3 = (1, 2)
//   S = [[0, 1, 1],
//        [2, 1, 3],
//        [2, 2, 4]]       (not symmetric; token 1's self-score is 0, not |q1|^2)
TYPED_TEST(AttentionKernels, SharedQueryKeyMatrixMakesScoresSymmetric) {
  using T = TypeParam;
  kvattn::RowMatrix<T> w(2, 2), wk(2, 2), x(3, 2);
  w << 1, 1, 0, 1;
  wk << 0, 1, 2, 0;
  x << 1, 0, 0, 1, 1, 1;
  const AttentionConfig c{2, 1, 1, 2};
  kvattn::RowMatrix<T> s(3, 3), expected(3, 3);

  const kvattn::QKV<T> same = kvattn::QKVProjection<T>(c, w, w, w).forward_batch(x);
  kvattn::ops::attention_scores<T>(same.q, same.k, T(1), s);
  expected << 1, 1, 2, 1, 2, 3, 2, 3, 5;
  EXPECT_EQ(s, expected);
  EXPECT_EQ(s, s.transpose());

  const kvattn::QKV<T> distinct = kvattn::QKVProjection<T>(c, w, wk, w).forward_batch(x);
  kvattn::ops::attention_scores<T>(distinct.q, distinct.k, T(1), s);
  expected << 0, 1, 1, 2, 1, 3, 2, 2, 4;
  EXPECT_EQ(s, expected);
  EXPECT_NE(s, s.transpose());
}

#if defined(_OPENMP)
// Chunk boundaries and the merge order do not depend on the thread count, so
// one and two threads give bitwise the same decode step (and layer step).
TEST(AttentionThreads, DecodeIsBitwiseIdenticalWithOneAndTwoThreads) {
  std::mt19937 rng(21);
  const Eigen::Index n_heads = 16, n_kv = 4, hd = 64, n_ctx = 3000;  // 6 MB: runs threaded
  kvattn::KVCache<float> cache(n_kv, hd, n_ctx);
  cache.append(test::random_matrix<float>(n_ctx, n_kv * hd, rng),
               test::random_matrix<float>(n_ctx, n_kv * hd, rng));
  const kvattn::RowMatrix<float> q = test::random_matrix<float>(1, n_heads * hd, rng, 3.0);
  kvattn::ops::AttentionScratch<float> scratch;
  const int before = omp_get_max_threads();
  kvattn::RowMatrix<float> out1(1, n_heads * hd), out2(1, n_heads * hd);
  omp_set_num_threads(2);
  scratch.reserve_decode(n_ctx, n_kv, n_heads / n_kv, hd);
  kvattn::ops::attend_decode<float>(q.data(), cache, n_ctx, n_heads, 0.125f, out2.data(), scratch);
  omp_set_num_threads(1);
  kvattn::ops::attend_decode<float>(q.data(), cache, n_ctx, n_heads, 0.125f, out1.data(), scratch);

  const kvattn::AttentionConfig c{512, 16, 4, 64, kvattn::RopeStyle::Interleaved};
  const kvattn::MultiHeadAttention<float> layer(c, test::random_weights<float>(c, rng));
  const kvattn::Vector<float> x = test::random_vector<float>(512, rng);
  kvattn::Vector<float> y1(512), y2(512);
  kvattn::AttentionWorkspace<float> ws;
  kvattn::KVCache<float> c1 = layer.make_cache(n_ctx + 1), c2 = layer.make_cache(n_ctx + 1);
  const kvattn::RowMatrix<float> k = test::random_matrix<float>(n_ctx, 4 * 64, rng);
  const kvattn::RowMatrix<float> v = test::random_matrix<float>(n_ctx, 4 * 64, rng);
  c1.append(k, v);
  c2.append(k, v);
  omp_set_num_threads(1);
  layer.step(x, c1, y1, ws);
  omp_set_num_threads(2);
  layer.step(x, c2, y2, ws);
  omp_set_num_threads(before);

  EXPECT_EQ(std::memcmp(out1.data(), out2.data(), sizeof(float) * size_t(out1.size())), 0);
  EXPECT_EQ(std::memcmp(y1.data(), y2.data(), sizeof(float) * size_t(y1.size())), 0);
  EXPECT_TRUE(out1.allFinite());

  // The same for an int8 cache (integer kernels, per-thread int16 scratch).
  kvattn::KVCache<float, std::int8_t> c8(n_kv, hd, n_ctx);
  c8.append(test::random_matrix<float>(n_ctx, n_kv * hd, rng),
            test::random_matrix<float>(n_ctx, n_kv * hd, rng));
  omp_set_num_threads(2);
  kvattn::ops::attend_decode<float>(q.data(), c8, n_ctx, n_heads, 0.125f, out2.data(), scratch);
  omp_set_num_threads(1);
  kvattn::ops::attend_decode<float>(q.data(), c8, n_ctx, n_heads, 0.125f, out1.data(), scratch);
  omp_set_num_threads(before);
  EXPECT_EQ(std::memcmp(out1.data(), out2.data(), sizeof(float) * size_t(out1.size())), 0);
  EXPECT_TRUE(out1.allFinite());
}
#endif
