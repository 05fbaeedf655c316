#include <kvattn/ops/rope.hpp>

#include "reference.hpp"
#include "test_util.hpp"

using kvattn::RopeStyle;
using kvattn::RotaryEmbedding;

template <class T>
class Rope : public ::testing::Test {};
TYPED_TEST_SUITE(Rope, test::ScalarTypes);

// head_dim 4, theta 100: pair i turns by pos * 100^(-2i/4), i.e. pos * 1 for
// pair 0 and pos * 0.1 for pair 1. At pos 2 the angles are 2 and 0.2.
// x = (1, 2, 3, 4).
//   Interleaved pairs (x0,x1) = (1,2) by 2 and (x2,x3) = (3,4) by 0.2:
//     (1 cos2 - 2 sin2, 1 sin2 + 2 cos2, 3 cos.2 - 4 sin.2, 3 sin.2 + 4 cos.2)
//   HalfSplit pairs (x0,x2) = (1,3) by 2 and (x1,x3) = (2,4) by 0.2:
//     x0' = 1 cos2 - 3 sin2, x2' = 1 sin2 + 3 cos2,
//     x1' = 2 cos.2 - 4 sin.2, x3' = 2 sin.2 + 4 cos.2
TYPED_TEST(Rope, HandComputedInterleaved) {
  using T = TypeParam;
  const double c2 = std::cos(2.0), s2 = std::sin(2.0), c02 = std::cos(0.2), s02 = std::sin(0.2);
  kvattn::Vector<T> x(4);
  x << 1, 2, 3, 4;
  kvattn::Vector<T> expected(4);
  expected << T(c2 - 2 * s2), T(s2 + 2 * c2), T(3 * c02 - 4 * s02), T(3 * s02 + 4 * c02);
  RotaryEmbedding<T>(4, RopeStyle::Interleaved, 100.0).apply_token(x, 2);
  EXPECT_TRUE(test::close(x, expected, test::tolerance<T>()));
}

TYPED_TEST(Rope, HandComputedHalfSplit) {
  using T = TypeParam;
  const double c2 = std::cos(2.0), s2 = std::sin(2.0), c02 = std::cos(0.2), s02 = std::sin(0.2);
  kvattn::Vector<T> x(4);
  x << 1, 2, 3, 4;
  kvattn::Vector<T> expected(4);
  expected << T(c2 - 3 * s2), T(2 * c02 - 4 * s02), T(s2 + 3 * c2), T(2 * s02 + 4 * c02);
  RotaryEmbedding<T>(4, RopeStyle::HalfSplit, 100.0).apply_token(x, 2);
  EXPECT_TRUE(test::close(x, expected, test::tolerance<T>()));
}

TYPED_TEST(Rope, PositionZeroAndNoneAreIdentity) {
  using T = TypeParam;
  std::mt19937 rng(1);
  const kvattn::RowMatrix<T> x = test::random_matrix<T>(1, 16, rng);
  for (RopeStyle style : {RopeStyle::Interleaved, RopeStyle::HalfSplit}) {
    kvattn::RowMatrix<T> y = x;
    RotaryEmbedding<T>(8, style).apply(y, 0);
    EXPECT_EQ(y, x);
  }
  kvattn::RowMatrix<T> y = x;
  RotaryEmbedding<T>(8, RopeStyle::None).apply(y, 123);
  EXPECT_EQ(y, x);
}

// Every row of a batch, every head of a row, at its own position, against the
// plain double formula in reference.hpp.
TYPED_TEST(Rope, BatchMatchesReferenceAtEveryPosition) {
  using T = TypeParam;
  std::mt19937 rng(2);
  const Eigen::Index head_dim = 16, heads = 3, n = 40, first = 1000;
  for (RopeStyle style : {RopeStyle::Interleaved, RopeStyle::HalfSplit}) {
    const kvattn::RowMatrix<double> x = test::random_matrix<double>(n, heads * head_dim, rng);
    kvattn::RowMatrix<T> y = x.cast<T>();
    RotaryEmbedding<T>(head_dim, style, 10000.0).apply(y, first);
    for (Eigen::Index r = 0; r < n; ++r) {
      const reference::Vec expected =
          reference::rope(x.row(r).transpose(), head_dim, style, 10000.0, first + r);
      // The angle first+r is up to ~1e3 rad: float rounding of cos/sin inputs
      // is not the point here, so compare at the precision of T's trig.
      EXPECT_TRUE(
          test::close(y.row(r).transpose(), expected, std::is_same<T, float>::value ? 2e-6 : 1e-12))
          << "row " << r << " style " << kvattn::to_string(style);
    }
  }
}

// (R_m q) . (R_n k) depends only on m - n, and rotation keeps the norm.
TYPED_TEST(Rope, DotProductDependsOnlyOnRelativePosition) {
  using T = TypeParam;
  std::mt19937 rng(3);
  const Eigen::Index head_dim = 32;
  for (RopeStyle style : {RopeStyle::Interleaved, RopeStyle::HalfSplit}) {
    const RotaryEmbedding<T> rope(head_dim, style);
    const kvattn::Vector<T> q = test::random_vector<T>(head_dim, rng);
    const kvattn::Vector<T> k = test::random_vector<T>(head_dim, rng);
    auto rotated_dot = [&](Eigen::Index m, Eigen::Index n) {
      kvattn::Vector<T> qm = q, kn = k;
      rope.apply_token(qm, m);
      rope.apply_token(kn, n);
      EXPECT_NEAR(double(qm.norm()), double(q.norm()), 1e3 * test::tolerance<T>());
      return double(qm.dot(kn));
    };
    const double tol = std::is_same<T, float>::value ? 1e-4 : 1e-11;
    for (Eigen::Index delta : {0, 1, 5, 17}) {
      const double base = rotated_dot(delta, 0);
      for (Eigen::Index shift : {1, 10, 250}) {
        EXPECT_NEAR(rotated_dot(delta + shift, shift), base, tol)
            << "delta " << delta << " shift " << shift;
      }
    }
    // And it does depend on m - n (the test could fail): delta 0 vs delta 5.
    EXPECT_GT(std::abs(rotated_dot(5, 0) - rotated_dot(0, 0)), 1e-3);
  }
}

TEST(RopeErrors, RejectsBadArguments) {
  test::expect_throw_with<std::invalid_argument>(
      [] { RotaryEmbedding<float>(5, RopeStyle::Interleaved); }, {"head_dim = 5", "even"});
  test::expect_throw_with<std::invalid_argument>([] { RotaryEmbedding<float>(0, RopeStyle::None); },
                                                 {"head_dim = 0"});
  test::expect_throw_with<std::invalid_argument>(
      [] { RotaryEmbedding<float>(4, RopeStyle::HalfSplit, 0.0); }, {"theta = 0"});
  const RotaryEmbedding<float> rope(4, RopeStyle::Interleaved);
  kvattn::RowMatrix<float> x = kvattn::RowMatrix<float>::Ones(2, 6);
  const kvattn::RowMatrix<float> before = x;
  test::expect_throw_with<std::invalid_argument>(
      [&] { rope.apply(x, 0); },
      {"RotaryEmbedding::apply", "6 columns", "multiple of head_dim = 4"});
  kvattn::RowMatrix<float> y = kvattn::RowMatrix<float>::Ones(2, 8);
  test::expect_throw_with<std::invalid_argument>([&] { rope.apply(y, -1); }, {"first_pos = -1"});
  EXPECT_EQ(x, before);
  EXPECT_EQ(y, kvattn::RowMatrix<float>::Ones(2, 8));
}
