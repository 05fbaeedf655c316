#include <kvattn/models/sampler.hpp>
#include <kvattn/ops/rmsnorm.hpp>

#include "test_util.hpp"

using kvattn::Sampler;

TEST(Sampler, GreedyTakesTheFirstLargest) {
  kvattn::Vector<float> logits(5);
  logits << 0.5f, 3.0f, -1.0f, 3.0f, 2.0f;
  Sampler greedy(0.0);
  EXPECT_EQ(greedy.sample<float>(logits), 1);
  EXPECT_EQ(Sampler::argmax<float>(logits), 1);
}

TEST(Sampler, SeededSamplingRepeatsAndFollowsTheDistribution) {
  // logits ln(1), ln(2), ln(3), ln(4) at temperature 1: p = (0.1, 0.2, 0.3, 0.4).
  kvattn::Vector<double> logits(4);
  logits << 0.0, std::log(2.0), std::log(3.0), std::log(4.0);
  Sampler a(1.0, 1.0, 42), b(1.0, 1.0, 42), c(1.0, 1.0, 43);
  std::vector<int> counts(4, 0);
  bool differs = false;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const int x = a.sample<double>(logits);
    EXPECT_EQ(x, b.sample<double>(logits));
    differs |= x != c.sample<double>(logits);
    ++counts[size_t(x)];
  }
  EXPECT_TRUE(differs);  // another seed gives another sequence
  for (int i = 0; i < 4; ++i) {
    // Binomial standard deviation at n = 20000 is at most 0.0035; allow 5 of them.
    EXPECT_NEAR(counts[size_t(i)] / double(n), 0.1 * (i + 1), 0.0175) << "token " << i;
  }
}

TEST(Sampler, TopPKeepsOnlyTheNucleus) {
  // p = (0.1, 0.2, 0.3, 0.4): top_p 0.5 keeps {3, 2} (0.4 + 0.3 >= 0.5);
  // top_p 0.3 keeps {3} only.
  kvattn::Vector<double> logits(4);
  logits << 0.0, std::log(2.0), std::log(3.0), std::log(4.0);
  Sampler half(1.0, 0.5, 7), narrow(1.0, 0.3, 7);
  std::vector<int> seen(4, 0);
  for (int i = 0; i < 2000; ++i) {
    ++seen[size_t(half.sample<double>(logits))];
    EXPECT_EQ(narrow.sample<double>(logits), 3);
  }
  EXPECT_EQ(seen[0], 0);
  EXPECT_EQ(seen[1], 0);
  EXPECT_GT(seen[2], 600);  // expected 2000 * 3/7 = 857
  EXPECT_GT(seen[3], 900);  // expected 1143
}

TEST(Sampler, RejectsBadSettings) {
  test::expect_throw_with<std::invalid_argument>([] { Sampler(-1.0); },
                                                 {"Sampler: temperature = -1"});
  test::expect_throw_with<std::invalid_argument>([] { Sampler(1.0, 0.0); },
                                                 {"top_p = 0", "in (0, 1]"});
  test::expect_throw_with<std::invalid_argument>([] { Sampler(1.0, 1.5); }, {"top_p = 1.5"});
}

// RMSNorm on x = (3, 4): mean(x^2) = (9 + 16) / 2 = 12.5; with eps 0 the norm
// divides by sqrt(12.5) = 3.5355...; times w = (1, 2): (0.8485, 2.2627).
TEST(RmsNorm, HandComputed) {
  kvattn::RowMatrix<double> x(1, 2), y(1, 2);
  x << 3, 4;
  kvattn::Vector<double> w(2);
  w << 1, 2;
  kvattn::ops::rmsnorm_rows<double>(x, w, 0.0, y);
  kvattn::RowMatrix<double> expected(1, 2);
  expected << 3 / std::sqrt(12.5), 8 / std::sqrt(12.5);
  EXPECT_TRUE(test::close(y, expected, 1e-15));
  kvattn::ops::rmsnorm_rows<double>(x, w, 0.0, x);  // in place
  EXPECT_TRUE(test::close(x, expected, 1e-15));
}
