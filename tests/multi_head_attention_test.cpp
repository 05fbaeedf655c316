#include <kvattn/layers/multi_head_attention.hpp>

#include "reference.hpp"
#include "test_util.hpp"

using kvattn::AttentionConfig;
using kvattn::AttentionWeights;
using kvattn::KVCache;
using kvattn::MultiHeadAttention;
using kvattn::RopeStyle;

template <class T>
class MHA : public ::testing::Test {};
TYPED_TEST_SUITE(MHA, test::ScalarTypes);

// Two tokens through one head, d_model 2, head_dim 2, scale 1/sqrt(2):
//   Wq = [[1, 2], [0, 1]], Wk = [[0, 1], [1, 0]], Wv = [[1, 1], [2, 0]], Wo = [[0, 1], [1, 1]]
//   x1 = (1, 0): q1 = (1, 0), k1 = (0, 1), v1 = (1, 2)
//   x2 = (0, 1): q2 = (2, 1), k2 = (1, 0), v2 = (1, 0)
// Token 1 sees only itself: head = v1 = (1, 2); y1 = Wo (1, 2) = (2, 3).
// Token 2: scores q2.k1 = 1 and q2.k2 = 2, scaled: (1/sqrt2, 2/sqrt2);
//   weights w1 = 1 / (1 + e^(1/sqrt2)) = 0.330239..., w2 = 1 - w1;
//   head = w1 v1 + w2 v2 = (1, 2 w1); y2 = Wo head = (2 w1, 1 + 2 w1).
TYPED_TEST(MHA, TwoTokensHandComputed) {
  using T = TypeParam;
  AttentionWeights<T> w;
  w.wq.resize(2, 2);
  w.wk.resize(2, 2);
  w.wv.resize(2, 2);
  w.wo.resize(2, 2);
  w.wq << 1, 2, 0, 1;
  w.wk << 0, 1, 1, 0;
  w.wv << 1, 1, 2, 0;
  w.wo << 0, 1, 1, 1;
  MultiHeadAttention<T> layer(AttentionConfig{2, 1, 1, 2}, w);
  const double w1 = 1.0 / (1.0 + std::exp(1.0 / std::sqrt(2.0)));
  ASSERT_NEAR(w1, 0.330239, 1e-6);

  kvattn::Vector<T> x1(2), x2(2), y1(2), y2(2);
  x1 << 1, 0;
  x2 << 0, 1;
  y1 << 2, 3;
  y2 << T(2 * w1), T(1 + 2 * w1);

  KVCache<T> cache = layer.make_cache(4);
  EXPECT_TRUE(test::close(layer.step(x1, cache), y1, test::tolerance<T>()));
  EXPECT_TRUE(test::close(layer.step(x2, cache), y2, test::tolerance<T>()));
  // The cache holds k1, k2 and v1, v2, one row per token.
  kvattn::RowMatrix<T> keys(2, 2), values(2, 2);
  keys << 0, 1, 1, 0;
  values << 1, 2, 1, 0;
  EXPECT_EQ(cache.size(), 2);
  EXPECT_EQ(cache.keys(0), keys);
  EXPECT_EQ(cache.values(0), values);

  // Both tokens in one forward: the same rows.
  KVCache<T> batch_cache = layer.make_cache(4);
  kvattn::RowMatrix<T> x(2, 2), y(2, 2);
  x << x1.transpose(), x2.transpose();
  y << y1.transpose(), y2.transpose();
  EXPECT_TRUE(test::close(layer.forward(x, batch_cache), y, test::tolerance<T>()));
  EXPECT_EQ(batch_cache.keys(0), keys);
}

struct Case {
  const char* name;
  AttentionConfig config;
  bool bias;
};

static std::vector<Case> cases() {
  AttentionConfig scaled{24, 4, 2, 6, RopeStyle::HalfSplit, 500.0};
  scaled.score_scale = 0.9;
  return {{"mha", {32, 4, 4, 8}, false},
          {"mha_rope_interleaved", {32, 4, 4, 8, RopeStyle::Interleaved}, false},
          {"gqa_rope_halfsplit_bias", {32, 8, 2, 4, RopeStyle::HalfSplit}, true},
          {"mqa_rope_interleaved_bias", {48, 6, 1, 8, RopeStyle::Interleaved}, true},
          {"gqa_scaled_theta", scaled, true},
          {"odd_head_dim", {15, 3, 1, 5}, false}};
}

// The central property: token-by-token decode through the cache, one forward
// over the whole sequence, and chunks followed by steps all give the outputs
// of the plain double reference that recomputes everything without a cache.
TYPED_TEST(MHA, DecodePrefillAndChunksMatchReference) {
  using T = TypeParam;
  const Eigen::Index n = 70;  // more than two prefill tiles
  for (const Case& tc : cases()) {
    SCOPED_TRACE(tc.name);
    std::mt19937 rng(42);
    const AttentionConfig& c = tc.config;
    const AttentionWeights<double> w = test::random_weights<double>(c, rng, tc.bias);
    const kvattn::RowMatrix<double> x = test::random_matrix<double>(n, c.d_model, rng, 2.0);
    const kvattn::RowMatrix<double> expected = reference::attention(c, w, x);
    // NOLINTNEXTLINE(performance-unnecessary-copy-initialization): a copy only for T = double
    const kvattn::RowMatrix<T> xt = x.cast<T>();
    MultiHeadAttention<T> layer(c, test::cast_weights<T>(w));
    const double tol = test::tolerance<T>();

    KVCache<T> whole = layer.make_cache(n);
    EXPECT_TRUE(test::close(layer.forward(xt, whole), expected, tol)) << "one forward";
    EXPECT_EQ(whole.size(), n);

    KVCache<T> steps = layer.make_cache(n);
    kvattn::RowMatrix<T> y(n, c.d_model);
    for (Eigen::Index t = 0; t < n; ++t) y.row(t) = layer.step(xt.row(t).transpose(), steps);
    EXPECT_TRUE(test::close(y, expected, tol)) << "token by token";

    KVCache<T> chunked = layer.make_cache(n + 5);
    y.topRows(7) = layer.forward(xt.topRows(7), chunked);
    y.middleRows(7, 40) = layer.forward(xt.middleRows(7, 40), chunked);
    for (Eigen::Index t = 47; t < n; ++t) y.row(t) = layer.step(xt.row(t).transpose(), chunked);
    EXPECT_TRUE(test::close(y, expected, tol)) << "chunks then steps";
    EXPECT_EQ(chunked.size(), n);

    for (Eigen::Index h = 0; h < c.n_kv_heads; ++h) {
      EXPECT_TRUE(test::close(steps.keys(h), whole.keys(h), tol));
      EXPECT_TRUE(test::close(chunked.values(h), whole.values(h), tol));
    }
  }
}

// Rolling the cache back and decoding again gives the same outputs as
// decoding the new continuation from scratch (what speculative decoding needs).
TYPED_TEST(MHA, TruncateThenContinueEqualsFreshSequence) {
  using T = TypeParam;
  std::mt19937 rng(8);
  const AttentionConfig c{16, 4, 2, 4, RopeStyle::Interleaved};
  MultiHeadAttention<T> layer(c, test::random_weights<T>(c, rng));
  const kvattn::RowMatrix<T> a = test::random_matrix<T>(12, 16, rng);
  const kvattn::RowMatrix<T> b = test::random_matrix<T>(5, 16, rng);
  KVCache<T> cache = layer.make_cache(20);
  layer.forward(a, cache);
  cache.truncate(8);
  const kvattn::RowMatrix<T> continued = layer.forward(b, cache);
  kvattn::RowMatrix<T> fresh_input(13, 16);
  fresh_input << a.topRows(8), b;
  KVCache<T> fresh = layer.make_cache(20);
  const kvattn::RowMatrix<T> expected = layer.forward(fresh_input, fresh).bottomRows(5);
  EXPECT_TRUE(test::close(continued, expected, test::tolerance<T>()));
}

// Changing a later token leaves every earlier output unchanged (causality).
TYPED_TEST(MHA, FutureTokensDoNotChangeEarlierOutputs) {
  using T = TypeParam;
  std::mt19937 rng(9);
  const AttentionConfig c{16, 4, 1, 4, RopeStyle::HalfSplit};
  MultiHeadAttention<T> layer(c, test::random_weights<T>(c, rng));
  kvattn::RowMatrix<T> x = test::random_matrix<T>(40, 16, rng);
  KVCache<T> c1 = layer.make_cache(40), c2 = layer.make_cache(40);
  const kvattn::RowMatrix<T> y1 = layer.forward(x, c1);
  x.row(30).setConstant(T(7));
  const kvattn::RowMatrix<T> y2 = layer.forward(x, c2);
  EXPECT_TRUE(test::close(y2.topRows(30), y1.topRows(30), test::tolerance<T>()));
  EXPECT_FALSE(test::close(y2.row(30), y1.row(30), 1e-3));  // the changed token does change
}

// GQA equals MHA whose KV heads are the GQA heads repeated group_size times.
TYPED_TEST(MHA, GqaEqualsMhaWithRepeatedKvHeads) {
  using T = TypeParam;
  std::mt19937 rng(10);
  for (Eigen::Index n_kv : {1, 2, 4}) {
    const AttentionConfig gqa{32, 8, n_kv, 4, RopeStyle::Interleaved};
    AttentionConfig mha = gqa;
    mha.n_kv_heads = 8;
    const AttentionWeights<T> w = test::random_weights<T>(gqa, rng, true);
    AttentionWeights<T> wr = w;
    const Eigen::Index g = 8 / n_kv, hd = 4;
    wr.wk.resize(32, 32);
    wr.wv.resize(32, 32);
    wr.bk.resize(32);
    wr.bv.resize(32);
    for (Eigen::Index h = 0; h < 8; ++h) {  // MHA head h copies GQA KV head h / g
      wr.wk.middleRows(h * hd, hd) = w.wk.middleRows((h / g) * hd, hd);
      wr.wv.middleRows(h * hd, hd) = w.wv.middleRows((h / g) * hd, hd);
      wr.bk.segment(h * hd, hd) = w.bk.segment((h / g) * hd, hd);
      wr.bv.segment(h * hd, hd) = w.bv.segment((h / g) * hd, hd);
    }
    MultiHeadAttention<T> grouped(gqa, w), repeated(mha, wr);
    const kvattn::RowMatrix<T> x = test::random_matrix<T>(20, 32, rng);
    KVCache<T> cg = grouped.make_cache(21), cr = repeated.make_cache(21);
    EXPECT_TRUE(test::close(grouped.forward(x, cg), repeated.forward(x, cr), test::tolerance<T>()))
        << "n_kv_heads " << n_kv;
    const kvattn::Vector<T> x1 = test::random_vector<T>(32, rng);
    EXPECT_TRUE(test::close(grouped.step(x1, cg), repeated.step(x1, cr), test::tolerance<T>()));
  }
}

// Weights kept in 16 bits: the layer computes exactly what a float layer
// with the rounded weights computes (the double reference on the rounded
// weights, float tolerance), prefill and decode alike; biases stay in float.
// Against the unrounded weights the outputs move by the weights' rounding:
// measured over these cases at most 4.4e-3 (bf16) and 4.3e-4 (half) of
// max(1, max |y|); the bounds below are about twice that.
template <class W>
class MHAReducedWeights : public ::testing::Test {};
using WeightTypes = ::testing::Types<Eigen::bfloat16, Eigen::half>;
TYPED_TEST_SUITE(MHAReducedWeights, WeightTypes);

TYPED_TEST(MHAReducedWeights, EqualsFloatLayerWithRoundedWeights) {
  using W = TypeParam;
  const double bound_vs_unrounded = std::is_same<W, Eigen::bfloat16>::value ? 1e-2 : 1e-3;
  const Eigen::Index n = 40;
  for (const Case& tc : cases()) {
    SCOPED_TRACE(tc.name);
    std::mt19937 rng(7);
    const AttentionConfig& c = tc.config;
    const AttentionWeights<float> w = test::random_weights<float>(c, rng, tc.bias);
    AttentionWeights<double> rounded = test::cast_weights<double>(w);
    for (kvattn::RowMatrix<double>* m : {&rounded.wq, &rounded.wk, &rounded.wv, &rounded.wo}) {
      *m = m->cast<float>().cast<W>().template cast<double>();
    }
    const kvattn::RowMatrix<double> x = test::random_matrix<double>(n, c.d_model, rng, 2.0);
    const kvattn::RowMatrix<double> expected = reference::attention(c, rounded, x);
    const kvattn::RowMatrix<double> unrounded =
        reference::attention(c, test::cast_weights<double>(w), x);

    MultiHeadAttention<float, W> layer(c, w);
    KVCache<float> cache = layer.make_cache(n);
    kvattn::RowMatrix<float> y(n, c.d_model);
    const kvattn::RowMatrix<float> xf = x.cast<float>();
    y.topRows(25) = layer.forward(xf.topRows(25), cache);
    for (Eigen::Index t = 25; t < n; ++t) y.row(t) = layer.step(xf.row(t).transpose(), cache);
    EXPECT_TRUE(test::close(y, expected, test::tolerance<float>()));
    EXPECT_TRUE(test::close(y, unrounded, bound_vs_unrounded));
    EXPECT_FALSE(test::close(y, unrounded, test::tolerance<float>()))
        << "rounding the weights changed nothing: were they rounded?";
  }
}

TEST(MHAErrors, ConstructorRejectsImpossibleConfigsAndWeights) {
  std::mt19937 rng(12);
  const AttentionConfig c{8, 4, 2, 2};
  const AttentionWeights<float> w = test::random_weights<float>(c, rng);
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        MultiHeadAttention<float>(AttentionConfig{8, 4, 3, 2}, w);
      },
      {"n_heads = 4 is not a multiple of n_kv_heads = 3"});
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        MultiHeadAttention<float>(AttentionConfig{8, 4, 2, 0}, w);
      },
      {"head_dim = 0"});
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        MultiHeadAttention<float>(AttentionConfig{12, 4, 2, 3, RopeStyle::Interleaved}, w);
      },
      {"head_dim = 3", "even"});
  AttentionWeights<float> bad = w;
  bad.wo = kvattn::RowMatrix<float>::Zero(8, 6);
  test::expect_throw_with<std::invalid_argument>(
      [&] { MultiHeadAttention<float>(c, bad); },
      {"MultiHeadAttention: wo has shape 8x6, expected [d_model x n_heads*head_dim] = 8x8"});
  bad = w;
  bad.wk = kvattn::RowMatrix<float>::Zero(8, 8);
  test::expect_throw_with<std::invalid_argument>([&] { MultiHeadAttention<float>(c, bad); },
                                                 {"wk has shape 8x8", "= 4x8"});
  bad = w;
  bad.bo = kvattn::Vector<float>::Zero(3);
  test::expect_throw_with<std::invalid_argument>([&] { MultiHeadAttention<float>(c, bad); },
                                                 {"bias has 3 elements", "out_features = 8"});
}

// Every throwing call leaves the cache exactly as it was, and the layer and
// cache keep working afterwards.
TEST(MHAErrors, FailedCallsLeaveTheCacheUntouched) {
  std::mt19937 rng(13);
  const AttentionConfig c{8, 4, 2, 2, RopeStyle::Interleaved};
  MultiHeadAttention<float> layer(c, test::random_weights<float>(c, rng));
  const kvattn::RowMatrix<float> x = test::random_matrix<float>(5, 8, rng);
  KVCache<float> cache = layer.make_cache(6);
  layer.forward(x.topRows(4), cache);
  const KVCache<float> before = cache.copy();
  auto unchanged = [&] {
    EXPECT_EQ(cache.size(), before.size());
    for (Eigen::Index h = 0; h < 2; ++h) {
      EXPECT_EQ(cache.keys(h), before.keys(h));
      EXPECT_EQ(cache.values(h), before.values(h));
    }
  };
  test::expect_throw_with<std::invalid_argument>(
      [&] { layer.forward(kvattn::RowMatrix<float>::Zero(2, 7), cache); },
      {"MultiHeadAttention::forward: x has 7 columns, expected d_model = 8"});
  unchanged();
  test::expect_throw_with<std::invalid_argument>(
      [&] { layer.step(kvattn::Vector<float>::Zero(9), cache); },
      {"MultiHeadAttention::step: x has 9 elements, expected d_model = 8"});
  unchanged();
  test::expect_throw_with<std::length_error>(
      [&] { layer.forward(kvattn::RowMatrix<float>::Zero(3, 8), cache); },
      {"MultiHeadAttention::forward", "appending 3 tokens to 4 cached exceeds capacity = 6"});
  unchanged();
  KVCache<float> wrong(1, 2, 8);
  test::expect_throw_with<std::invalid_argument>(
      [&] { layer.step(kvattn::Vector<float>::Zero(8), wrong); },
      {"cache has n_kv_heads = 1, head_dim = 2, expected n_kv_heads = 2, head_dim = 2"});
  EXPECT_EQ(wrong.size(), 0);
  kvattn::Vector<float> y_small(3);
  kvattn::AttentionWorkspace<float> ws;
  test::expect_throw_with<std::invalid_argument>(
      [&] { layer.step(x.row(4).transpose(), cache, y_small, ws); },
      {"y has 3 elements, expected d_model = 8"});
  unchanged();

  // Still usable: the fifth token gives what an uninterrupted run gives.
  KVCache<float> clean = layer.make_cache(6);
  const kvattn::RowMatrix<float> expected = layer.forward(x, clean);
  EXPECT_TRUE(
      test::close(layer.step(x.row(4).transpose(), cache), expected.row(4).transpose(), 1e-6));
}

TEST(MHAWorkspace, SharedConstLayerWithOwnWorkspaces) {
  std::mt19937 rng(14);
  const AttentionConfig c{16, 4, 2, 4, RopeStyle::HalfSplit};
  const MultiHeadAttention<float> layer(c, test::random_weights<float>(c, rng));
  const kvattn::RowMatrix<float> x = test::random_matrix<float>(6, 16, rng);
  kvattn::AttentionWorkspace<float> ws1, ws2;
  KVCache<float> c1 = layer.make_cache(8), c2 = layer.make_cache(8);
  kvattn::RowMatrix<float> y1(6, 16), y2(6, 16);
  layer.forward(x, c1, y1, ws1);
  for (Eigen::Index t = 0; t < 6; ++t) {
    kvattn::Vector<float> yt(16);
    layer.step(x.row(t).transpose(), c2, yt, ws2);
    y2.row(t) = yt.transpose();
  }
  EXPECT_TRUE(test::close(y1, y2, 1e-5));
}
