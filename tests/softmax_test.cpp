#include <kvattn/ops/softmax.hpp>

#include "test_util.hpp"

template <class T>
class Softmax : public ::testing::Test {};
TYPED_TEST_SUITE(Softmax, test::ScalarTypes);

TYPED_TEST(Softmax, HandComputed) {
  using T = TypeParam;
  // exp(0) : exp(ln 2) : exp(ln 3) = 1 : 2 : 3, so p = (1/6, 2/6, 3/6).
  kvattn::Vector<T> x(3);
  x << T(0), T(std::log(2.0)), T(std::log(3.0));
  kvattn::Vector<T> expected(3);
  expected << T(1.0 / 6), T(2.0 / 6), T(3.0 / 6);
  EXPECT_TRUE(test::close(kvattn::softmax<T>(x), expected, test::tolerance<T>()));
}

TYPED_TEST(Softmax, LargeScoresDoNotOverflow) {
  using T = TypeParam;
  // exp(1000) overflows in float and double; shifted by the max it is
  // exp(0) : exp(ln 2) again, so p = (1/3, 2/3). Very negative scores give 0.
  kvattn::Vector<T> x(3);
  x << T(1000), T(1000 + std::log(2.0)), T(-1e4);
  kvattn::Vector<T> expected(3);
  expected << T(1.0 / 3), T(2.0 / 3), T(0);
  const kvattn::Vector<T> p = kvattn::softmax<T>(x);
  ASSERT_TRUE(p.allFinite());
  EXPECT_TRUE(test::close(p, expected, std::is_same<T, float>::value ? 1e-4 : 1e-12));
}

TYPED_TEST(Softmax, RowsSumToOneAndKeepOrder) {
  using T = TypeParam;
  std::mt19937 rng(7);
  kvattn::RowMatrix<T> x = test::random_matrix<T>(5, 37, rng, 20.0);
  const kvattn::RowMatrix<T> before = x;
  kvattn::softmax_rows_inplace<T>(x);
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    EXPECT_NEAR(double(x.row(r).sum()), 1.0, 10 * test::tolerance<T>());
    EXPECT_TRUE((x.row(r).array() >= T(0)).all());
    for (Eigen::Index j = 1; j < x.cols(); ++j) {
      // softmax is monotone: a larger score gets a larger (or equal) weight.
      EXPECT_EQ(before(r, j) > before(r, 0), x(r, j) > x(r, 0));
    }
  }
}

TYPED_TEST(Softmax, AllEqualScoresGiveUniformWeights) {
  using T = TypeParam;
  kvattn::Vector<T> x = kvattn::Vector<T>::Constant(8, T(-3.5));
  kvattn::softmax_inplace<T>(x);
  EXPECT_TRUE(test::close(x, kvattn::Vector<T>::Constant(8, T(0.125)), test::tolerance<T>()));
}

TEST(SoftmaxErrors, EmptyInputIsRejected) {
  kvattn::Vector<float> x;
  test::expect_throw_with<std::invalid_argument>([&] { kvattn::softmax_inplace<float>(x); },
                                                 {"softmax_inplace", "x.size() = 0"});
}
