#include <kvattn/layers/projection.hpp>

#include <cmath>
#include <utility>

#include "reference.hpp"
#include "test_util.hpp"

using kvattn::AttentionConfig;
using kvattn::Linear;
using kvattn::QKVProjection;

template <class T>
class Projection : public ::testing::Test {};
TYPED_TEST_SUITE(Projection, test::ScalarTypes);

// W = [[1, 2], [3, 4], [5, 6]], b = (1, 0, -1), x = (1, -1):
//   W x = (1-2, 3-4, 5-6) = (-1, -1, -1);  + b = (0, -1, -2).
// A second token x' = (2, 1): W x' = (4, 10, 16); + b = (5, 10, 15).
TYPED_TEST(Projection, LinearHandComputed) {
  using T = TypeParam;
  kvattn::RowMatrix<T> w(3, 2);
  w << 1, 2, 3, 4, 5, 6;
  kvattn::Vector<T> b(3);
  b << 1, 0, -1;
  const Linear<T> lin(w, b);
  EXPECT_EQ(lin.in_features(), 2);
  EXPECT_EQ(lin.out_features(), 3);
  kvattn::Vector<T> x(2);
  x << 1, -1;
  kvattn::Vector<T> expected(3);
  expected << 0, -1, -2;
  EXPECT_EQ(lin.forward(x), expected);

  kvattn::RowMatrix<T> batch(2, 2);
  batch << 1, -1, 2, 1;
  kvattn::RowMatrix<T> expected_batch(2, 3);
  expected_batch << 0, -1, -2, 5, 10, 15;
  EXPECT_EQ(lin.forward_batch(batch), expected_batch);

  kvattn::RowMatrix<T> out(2, 3);
  lin.forward_batch(batch, out);
  EXPECT_EQ(out, expected_batch);
  const Linear<T> no_bias(w);
  EXPECT_FALSE(no_bias.has_bias());
  EXPECT_EQ(no_bias.forward(x), (expected - b).eval());
}

TEST(LinearErrors, ShapesAreChecked) {
  kvattn::RowMatrix<float> w = kvattn::RowMatrix<float>::Ones(3, 4);
  test::expect_throw_with<std::invalid_argument>(
      [&] { Linear<float>(w, kvattn::Vector<float>::Zero(2)); },
      {"Linear: bias has 2 elements, expected out_features = 3"});
  test::expect_throw_with<std::invalid_argument>([] { Linear<float>(kvattn::RowMatrix<float>()); },
                                                 {"Linear: weight has shape 0x0"});
  const Linear<float> lin(w);
  test::expect_throw_with<std::invalid_argument>(
      [&] { (void)lin.forward(kvattn::Vector<float>::Zero(5)); },
      {"Linear::forward: x has 5 elements, expected in_features = 4"});
  test::expect_throw_with<std::invalid_argument>(
      [&] { (void)lin.forward_batch(kvattn::RowMatrix<float>::Zero(2, 3)); },
      {"Linear::forward_batch: x has 3 columns, expected in_features = 4"});
  kvattn::RowMatrix<float> y(2, 2);
  test::expect_throw_with<std::invalid_argument>(
      [&] { lin.forward_batch(kvattn::RowMatrix<float>::Zero(2, 4), y); },
      {"y has shape 2x2", "= 2x3"});
}

// The three projections are distinct matrices: q = Wq x, k = Wk x, v = Wv x.
// d_model 2, one head of head_dim 2:
//   Wq = [[1, 2], [0, 1]], Wk = [[0, 1], [1, 0]], Wv = [[1, 1], [2, 0]]
//   x = (3, 5): q = (3+10, 5) = (13, 5); k = (5, 3); v = (8, 6).
TYPED_TEST(Projection, QKVHandComputed) {
  using T = TypeParam;
  kvattn::RowMatrix<T> wq(2, 2), wk(2, 2), wv(2, 2);
  wq << 1, 2, 0, 1;
  wk << 0, 1, 1, 0;
  wv << 1, 1, 2, 0;
  const QKVProjection<T> proj(AttentionConfig{2, 1, 1, 2}, wq, wk, wv);
  kvattn::Vector<T> x(2);
  x << 3, 5;
  const kvattn::QKV<T> out = proj.forward(x);
  kvattn::RowMatrix<T> q(1, 2), k(1, 2), v(1, 2);
  q << 13, 5;
  k << 5, 3;
  v << 8, 6;
  EXPECT_EQ(out.q, q);
  EXPECT_EQ(out.k, k);
  EXPECT_EQ(out.v, v);
  EXPECT_EQ(proj.wq(), wq);
  EXPECT_EQ(proj.wk(), wk);
  EXPECT_EQ(proj.wv(), wv);
}

// Shapes for MHA, GQA and MQA, one token and a batch, and values against the
// plain reference (separate matrices, double loops), with biases.
TYPED_TEST(Projection, ShapesAndValuesForMhaGqaMqa) {
  using T = TypeParam;
  std::mt19937 rng(11);
  for (const AttentionConfig& c :
       {AttentionConfig{24, 4, 4, 6}, AttentionConfig{24, 4, 2, 6}, AttentionConfig{24, 4, 1, 6}}) {
    const kvattn::AttentionWeights<double> w = test::random_weights<double>(c, rng, true);
    const QKVProjection<T> proj(c, w.wq.cast<T>(), w.wk.cast<T>(), w.wv.cast<T>(), w.bq.cast<T>(),
                                w.bk.cast<T>(), w.bv.cast<T>());
    EXPECT_EQ(proj.q_dim(), c.n_heads * c.head_dim);
    EXPECT_EQ(proj.kv_dim(), c.n_kv_heads * c.head_dim);
    const kvattn::RowMatrix<double> x = test::random_matrix<double>(5, c.d_model, rng);

    const kvattn::QKV<T> batch = proj.forward_batch(x.cast<T>());
    EXPECT_EQ(batch.q.rows(), 5);
    EXPECT_EQ(batch.q.cols(), c.n_heads * c.head_dim);
    EXPECT_EQ(batch.k.rows(), 5);
    EXPECT_EQ(batch.k.cols(), c.n_kv_heads * c.head_dim);
    EXPECT_EQ(batch.v.rows(), 5);
    EXPECT_EQ(batch.v.cols(), c.n_kv_heads * c.head_dim);

    for (Eigen::Index t = 0; t < x.rows(); ++t) {
      const reference::Vec xt = x.row(t).transpose();
      const kvattn::QKV<T> one = proj.forward(xt.cast<T>());
      EXPECT_EQ(one.q.rows(), 1);
      EXPECT_EQ(one.q.cols(), c.q_dim());
      EXPECT_EQ(one.k.cols(), c.kv_dim());
      EXPECT_EQ(one.v.cols(), c.kv_dim());
      const double tol = test::tolerance<T>();
      EXPECT_TRUE(test::close(one.q.transpose(), reference::linear(w.wq, w.bq, xt), tol));
      EXPECT_TRUE(test::close(one.k.transpose(), reference::linear(w.wk, w.bk, xt), tol));
      EXPECT_TRUE(test::close(one.v.transpose(), reference::linear(w.wv, w.bv, xt), tol));
      EXPECT_TRUE(test::close(batch.q.row(t), one.q, tol));
      EXPECT_TRUE(test::close(batch.k.row(t), one.k, tol));
      EXPECT_TRUE(test::close(batch.v.row(t), one.v, tol));
    }
  }
}

TEST(QKVProjectionErrors, WeightShapesMustMatchTheConfig) {
  const AttentionConfig c{8, 4, 2, 2};  // q_dim 8, kv_dim 4
  const kvattn::RowMatrix<float> wq = kvattn::RowMatrix<float>::Ones(8, 8);
  const kvattn::RowMatrix<float> wkv = kvattn::RowMatrix<float>::Ones(4, 8);
  test::expect_throw_with<std::invalid_argument>(
      [&] { QKVProjection<float>(c, kvattn::RowMatrix<float>::Ones(8, 7), wkv, wkv); },
      {"QKVProjection: wq has shape 8x7, expected [n_heads*head_dim x d_model] = 8x8"});
  test::expect_throw_with<std::invalid_argument>(
      [&] { QKVProjection<float>(c, wq, wq, wkv); },
      {"wk has shape 8x8, expected [n_kv_heads*head_dim x d_model] = 4x8"});
  test::expect_throw_with<std::invalid_argument>(
      [&] { QKVProjection<float>(c, wq, wkv, kvattn::RowMatrix<float>::Ones(4, 9)); },
      {"wv has shape 4x9"});
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        QKVProjection<float>(c, wq, wkv, wkv, kvattn::Vector<float>(),
                             kvattn::Vector<float>::Ones(3));
      },
      {"bk has 3 elements, expected n_kv_heads*head_dim = 4"});
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        QKVProjection<float>(AttentionConfig{8, 3, 2, 2}, wq, wkv, wkv);
      },
      {"n_heads = 3 is not a multiple of n_kv_heads = 2"});
  const QKVProjection<float> proj(c, wq, wkv, wkv);
  test::expect_throw_with<std::invalid_argument>(
      [&] { (void)proj.forward(kvattn::Vector<float>::Ones(7)); },
      {"QKVProjection::forward: x has 7 elements, expected d_model = 8"});
  test::expect_throw_with<std::invalid_argument>(
      [&] { (void)proj.forward_batch(kvattn::RowMatrix<float>::Ones(2, 9)); },
      {"QKVProjection::forward_batch: x has 9 columns, expected d_model = 8"});
}

// ---------------------------------------------------------------------------
// Reduced weights: Linear<float, bfloat16 | half> and QKVProjection likewise.
// ---------------------------------------------------------------------------

template <class W>
class ReducedWeights : public ::testing::Test {};
using WeightTypes = ::testing::Types<Eigen::bfloat16, Eigen::half>;
TYPED_TEST_SUITE(ReducedWeights, WeightTypes);

// Rounding at construction, by hand: bfloat16 keeps 8 significant bits
// (spacing 2^-7 in [1, 2)), half 11 (spacing 2^-10), both round to nearest
// even; half saturates at its largest finite value, 65504.
//   1 + 2^-9 -> 1 (bf16)        1 + 2^-12 -> 1 (half)
//   1 + 3*2^-9 -> 1 + 2^-7      1 + 3*2^-12 -> 1 + 2^-10   (above the midpoint)
//   1 + 2^-8 -> 1 (tie, even)   1 + 2^-11 -> 1 (tie, even)
//   -70000 -> -70144 (bf16: spacing 512 in [2^16, 2^17))    -70000 -> -65504 (half)
TEST(ReducedWeights, RoundedOnceAtConstruction) {
  const double h9 = std::ldexp(1.0, -9), h12 = std::ldexp(1.0, -12);
  kvattn::RowMatrix<float> w(1, 4);
  w << float(1 + h9), float(1 + 3 * h9), float(1 + 2 * h9), -70000.0f;
  const Linear<float, Eigen::bfloat16> bf(w);
  EXPECT_EQ(float(bf.weight()(0, 0)), 1.0f);
  EXPECT_EQ(float(bf.weight()(0, 1)), float(1 + std::ldexp(1.0, -7)));
  EXPECT_EQ(float(bf.weight()(0, 2)), 1.0f);
  EXPECT_EQ(float(bf.weight()(0, 3)), -70144.0f);

  w << float(1 + h12), float(1 + 3 * h12), float(1 + 2 * h12), -70000.0f;
  const Linear<float, Eigen::half> hf(w);
  EXPECT_EQ(float(hf.weight()(0, 0)), 1.0f);
  EXPECT_EQ(float(hf.weight()(0, 1)), float(1 + std::ldexp(1.0, -10)));
  EXPECT_EQ(float(hf.weight()(0, 2)), 1.0f);
  EXPECT_EQ(float(hf.weight()(0, 3)), -65504.0f);
  // x = (1, 1, 1, 0): y = 1 + (1 + 2^-10) + 1 = 3 + 2^-10, exact in float.
  kvattn::Vector<float> x(4);
  x << 1, 1, 1, 0;
  EXPECT_EQ(hf.forward(x)(0), float(3 + std::ldexp(1.0, -10)));
}

// Whatever the summation order, a float sum of n products is within
// gamma_n = n u / (1 - n u) (u = 2^-24) of the exact sum, relative to sum |w_i x_i|.
// The kernels must meet that bound against a double product of the rounded
// weights, for shapes that take every path: 8-row blocks and leftover rows,
// in % 8 != 0 (the last columns one at a time), and matrices of more
// than 1 MiB (row blocks on threads).
TYPED_TEST(ReducedWeights, ProductsWithinTheFloatBoundOfTheRoundedWeights) {
  using W = TypeParam;
  std::mt19937 rng(5);
  const std::pair<Eigen::Index, Eigen::Index> shapes[] = {
      {1, 8}, {3, 16}, {5, 24}, {7, 40}, {67, 128}, {9, 12}, {17, 172}, {6, 4104}, {300, 2048}};
  for (const auto& [out, in] : shapes) {
    SCOPED_TRACE(testing::Message() << out << "x" << in);
    const kvattn::RowMatrix<float> w = test::random_matrix<float>(out, in, rng);
    const kvattn::Vector<float> b = test::random_vector<float>(out, rng);
    const kvattn::RowMatrix<float> x = test::random_matrix<float>(3, in, rng, 2.0);
    const Linear<float, W> lin(w, b);
    // Independent rounding: Eigen's scalar conversion.
    const kvattn::RowMatrix<double> wr = w.cast<W>().template cast<double>();
    ASSERT_TRUE(lin.weight().template cast<double>() == wr);
    const double u = std::ldexp(1.0, -24), gamma = (in + 1) * u / (1 - (in + 1) * u);
    const kvattn::RowMatrix<float> batch = lin.forward_batch(x);
    for (Eigen::Index t = 0; t < x.rows(); ++t) {
      const kvattn::Vector<double> xt = x.row(t).transpose().cast<double>();
      const kvattn::Vector<double> exact = reference::linear(wr, b.cast<double>(), xt);
      const kvattn::Vector<double> magnitude =
          wr.cwiseAbs() * xt.cwiseAbs() + b.cast<double>().cwiseAbs();
      const kvattn::Vector<float> one = lin.forward(x.row(t).transpose());
      for (Eigen::Index o = 0; o < out; ++o) {
        EXPECT_LE(std::abs(one(o) - exact(o)), gamma * magnitude(o))
            << "token " << t << " row " << o;
        EXPECT_LE(std::abs(batch(t, o) - exact(o)), gamma * magnitude(o))
            << "batch token " << t << " row " << o;
      }
    }
  }
}

// The stacked projection rounds each of Wq, Wk, Wv like Linear and gives the
// products of the rounded weights (float against the double reference).
TYPED_TEST(ReducedWeights, QKVProjectionUsesTheRoundedWeights) {
  using W = TypeParam;
  std::mt19937 rng(12);
  const AttentionConfig c{32, 4, 2, 8};
  const kvattn::AttentionWeights<float> w = test::random_weights<float>(c, rng, true);
  const QKVProjection<float, W> proj(c, w.wq, w.wk, w.wv, w.bq, w.bk, w.bv);
  const kvattn::RowMatrix<double> wq = w.wq.cast<W>().template cast<double>();
  const kvattn::RowMatrix<double> wk = w.wk.cast<W>().template cast<double>();
  const kvattn::RowMatrix<double> wv = w.wv.cast<W>().template cast<double>();
  EXPECT_TRUE(proj.wq().template cast<double>() == wq);
  EXPECT_TRUE(proj.wk().template cast<double>() == wk);
  EXPECT_TRUE(proj.wv().template cast<double>() == wv);
  const kvattn::Vector<float> x = test::random_vector<float>(c.d_model, rng);
  const kvattn::Vector<double> xd = x.cast<double>();
  const kvattn::QKV<float> out = proj.forward(x);
  EXPECT_TRUE(test::close(out.q.transpose(), reference::linear(wq, w.bq.cast<double>(), xd), 1e-5));
  EXPECT_TRUE(test::close(out.k.transpose(), reference::linear(wk, w.bk.cast<double>(), xd), 1e-5));
  EXPECT_TRUE(test::close(out.v.transpose(), reference::linear(wv, w.bv.cast<double>(), xd), 1e-5));
}
