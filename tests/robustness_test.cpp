// Numerical edge cases, each against the plain double reference or hand
// arithmetic. Documented NaN policy: NaNs propagate, they are not rejected:
// a NaN in token t's input makes token t's output NaN and, since later
// tokens attend to its key and value, every later output too; earlier
// outputs are unaffected.
#include <kvattn/kvattn.hpp>

#include "reference.hpp"
#include "test_util.hpp"

using kvattn::AttentionConfig;

namespace {
kvattn::RowMatrix<double> run_layer(const AttentionConfig& c,
                                    const kvattn::AttentionWeights<double>& w,
                                    const kvattn::RowMatrix<double>& x, bool stepwise) {
  kvattn::MultiHeadAttention<double> layer(c, w);
  kvattn::KVCache<double> cache = layer.make_cache(x.rows());
  if (!stepwise) return layer.forward(x, cache);
  kvattn::RowMatrix<double> y(x.rows(), c.d_model);
  for (Eigen::Index t = 0; t < x.rows(); ++t)
    y.row(t) = layer.step(x.row(t).transpose(), cache).transpose();
  return y;
}
}  // namespace

// Scores of magnitude 1e4 (either sign) stay finite and match the reference.
TEST(Robustness, HugeScores) {
  std::mt19937 rng(1);
  AttentionConfig c{8, 2, 1, 4};
  for (double scale : {1e4, -1e4}) {
    c.score_scale = scale;
    const kvattn::AttentionWeights<double> w = test::random_weights<double>(c, rng);
    const kvattn::RowMatrix<double> x = test::random_matrix<double>(12, 8, rng, 3.0);
    const kvattn::RowMatrix<double> expected = reference::attention(c, w, x);
    for (bool stepwise : {false, true}) {
      const kvattn::RowMatrix<double> y = run_layer(c, w, x, stepwise);
      EXPECT_TRUE(y.allFinite());
      EXPECT_TRUE(test::close(y, expected, 1e-9)) << "scale " << scale;
    }
  }
}

// With equal scores (Wk = 0) each token's head is the plain mean of the
// values so far: token t (from 0) gets (v_0 + ... + v_t) / (t + 1).
TEST(Robustness, AllEqualScoresAverageTheValues) {
  const AttentionConfig c{2, 1, 1, 2};
  kvattn::AttentionWeights<double> w;
  w.wq = kvattn::RowMatrix<double>::Identity(2, 2);
  w.wk = kvattn::RowMatrix<double>::Zero(2, 2);
  w.wv = kvattn::RowMatrix<double>::Identity(2, 2);
  w.wo = kvattn::RowMatrix<double>::Identity(2, 2);
  kvattn::RowMatrix<double> x(3, 2), expected(3, 2);
  x << 3, 0, 0, 6, 3, 3;
  expected << 3, 0, 1.5, 3, 2, 3;  // (3+0)/2, (0+6)/2; (3+0+3)/3, (0+6+3)/3
  EXPECT_TRUE(test::close(run_layer(c, w, x, false), expected, 1e-15));
  EXPECT_TRUE(test::close(run_layer(c, w, x, true), expected, 1e-15));
}

// head_dim 1, capacity 1 and a single cached position.
TEST(Robustness, SmallestShapes) {
  std::mt19937 rng(2);
  const AttentionConfig c{3, 3, 1, 1};
  const kvattn::AttentionWeights<double> w = test::random_weights<double>(c, rng, true);
  const kvattn::RowMatrix<double> x = test::random_matrix<double>(5, 3, rng);
  EXPECT_TRUE(test::close(run_layer(c, w, x, true), reference::attention(c, w, x), 1e-12));
  kvattn::MultiHeadAttention<double> layer(c, w);
  kvattn::KVCache<double> one = layer.make_cache(1);
  const kvattn::Vector<double> y = layer.step(x.row(0).transpose(), one);
  EXPECT_TRUE(test::close(y.transpose(), reference::attention(c, w, x.topRows(1)), 1e-12));
  EXPECT_THROW(layer.step(x.row(1).transpose(), one), std::length_error);
  EXPECT_EQ(one.size(), 1);
}

TEST(Robustness, NanPropagatesToExactlyTheAffectedOutputs) {
  std::mt19937 rng(3);
  const AttentionConfig c{8, 2, 1, 4, kvattn::RopeStyle::HalfSplit};
  const kvattn::AttentionWeights<double> w = test::random_weights<double>(c, rng);
  kvattn::RowMatrix<double> x = test::random_matrix<double>(10, 8, rng);
  x(6, 3) = std::nan("");
  for (bool stepwise : {false, true}) {
    const kvattn::RowMatrix<double> y = run_layer(c, w, x, stepwise);
    EXPECT_TRUE(y.topRows(6).allFinite());
    EXPECT_TRUE(test::close(y.topRows(6), reference::attention(c, w, x.topRows(6)), 1e-12));
    for (Eigen::Index t = 6; t < 10; ++t)
      EXPECT_TRUE(y.row(t).array().isNaN().all()) << "token " << t;
  }
}
