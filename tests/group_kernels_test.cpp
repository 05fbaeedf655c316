// The decode step's inner kernels (ops/group_kernels.hpp) against a plain
// double loop over the same stored values, for every storage type (int8 also
// in its integer form) and every register-tile shape and remainder: group
// sizes that take 8-, 4-, 2- and 1-head tiles and their mixes (3, 5, 12, 13,
// 32), row counts that leave a partial tile or an odd row, head dims with one
// and many vectors. The softmax pieces run
// through both their vector path and the scalar path for wide odd groups.
#include <kvattn/kvattn.hpp>

#include "test_util.hpp"

#include <cmath>
#include <cstdint>
#include <iterator>
#include <vector>

namespace {

using kvattn::RowMatrix;

// Rows as a KVCache of this storage type keeps them, plus their float
// reading (with int8 the unscaled codes and the row scales separately).
template <class Storage>
struct Stored {
  kvattn::KVCache<float, Storage> cache;
  Eigen::Index n, hd;

  Stored(const RowMatrix<float>& rows)
      : cache(1, rows.cols(), rows.rows()), n(rows.rows()), hd(rows.cols()) {
    cache.append(rows, rows);
  }
  const Storage* data() const { return cache.key_data(0); }
  const float* scales() const { return cache.key_scale_data(0); }
  // Element (j, d) as the kernel reads it, before the row scale.
  double raw(Eigen::Index j, Eigen::Index d) const {
    return double(static_cast<float>(data()[j * hd + d]));
  }
  double scale(Eigen::Index j) const { return scales() != nullptr ? double(scales()[j]) : 1.0; }
};

template <class Storage>
class GroupKernels : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, Eigen::bfloat16, Eigen::half, std::int8_t>;
TYPED_TEST_SUITE(GroupKernels, StorageTypes);

const Eigen::Index kGroups[] = {1, 2, 3, 4, 5, 8, 12, 13, 32};
const Eigen::Index kRows[] = {1, 7, 16};
const Eigen::Index kHeadDims[] = {8, 24, 128};

// Calls f(g, n, hd) for every group size and the given row counts and head
// dims (by default those above).
template <class F, size_t Rows = std::size(kRows), size_t Dims = std::size(kHeadDims)>
void for_each_shape(F&& f, const Eigen::Index (&rows)[Rows] = kRows,
                    const Eigen::Index (&head_dims)[Dims] = kHeadDims) {
  for (Eigen::Index g : kGroups) {
    for (Eigen::Index n : rows) {
      for (Eigen::Index hd : head_dims) f(g, n, hd);
    }
  }
}

}  // namespace

#if defined(KVATTN_GROUP_KERNELS_AVX2)

TYPED_TEST(GroupKernels, ScoresMatchPlainDotProducts) {
  using Storage = TypeParam;
  std::mt19937 rng(11);
  for_each_shape([&](Eigen::Index g, Eigen::Index n, Eigen::Index hd) {
    const RowMatrix<float> q = test::random_matrix<float>(g, hd, rng, 2.0);
    const Stored<Storage> k(test::random_matrix<float>(n, hd, rng, 2.0));
    const float scale = 0.3f;
    std::vector<float> s(size_t(n * g), -1e30f);
    kvattn::ops::simd::group_scores(q.data(), g, hd, k.data(), k.scales(), n, scale, s.data());
    for (Eigen::Index j = 0; j < n; ++j) {
      for (Eigen::Index r = 0; r < g; ++r) {
        double dot = 0, mag = 0;
        for (Eigen::Index d = 0; d < hd; ++d) {
          dot += double(q(r, d)) * k.raw(j, d);
          mag += std::abs(double(q(r, d)) * k.raw(j, d));
        }
        const double want = double(scale) * k.scale(j) * dot;
        const double tol = 1e-6 * double(scale) * k.scale(j) * mag + 1e-30;
        ASSERT_NEAR(s[size_t(j * g + r)], want, tol)
            << "g " << g << " n " << n << " hd " << hd << " row " << j << " head " << r;
      }
    }
  });
}

TYPED_TEST(GroupKernels, AccumulateAddsWeightedRows) {
  using Storage = TypeParam;
  std::mt19937 rng(12);
  for_each_shape([&](Eigen::Index g, Eigen::Index n, Eigen::Index hd) {
    const RowMatrix<float> p = test::random_matrix<float>(n, g, rng);
    const Stored<Storage> v(test::random_matrix<float>(n, hd, rng, 2.0));
    RowMatrix<float> o = test::random_matrix<float>(g, hd, rng);  // accumulated into
    const RowMatrix<float> o0 = o;
    kvattn::ops::simd::group_accumulate(p.data(), g, hd, v.data(), n, o.data());
    for (Eigen::Index r = 0; r < g; ++r) {
      for (Eigen::Index d = 0; d < hd; ++d) {
        double want = o0(r, d), mag = std::abs(o0(r, d));
        for (Eigen::Index j = 0; j < n; ++j) {
          want += double(p(j, r)) * v.raw(j, d);
          mag += std::abs(double(p(j, r)) * v.raw(j, d));
        }
        ASSERT_NEAR(o(r, d), want, 1e-6 * mag)
            << "g " << g << " n " << n << " hd " << hd << " head " << r << " d " << d;
      }
    }
  });
}

// Every group size up to 72 covers both the vector path (lcm(g, 8) <= 64)
// and the scalar one (g = 9, 11, ..., 72 - e.g. lcm(9, 8) = 72), and row
// counts that leave part of a period over.
TEST(GroupSoftmax, PartsMatchPlainLoops) {
  std::mt19937 rng(13);
  for (Eigen::Index g = 1; g <= 72; ++g) {
    for (Eigen::Index n : {1, 3, 16, 37}) {
      const RowMatrix<float> s0 = test::random_matrix<float>(n, g, rng, 8.0);
      RowMatrix<float> s = s0;
      std::vector<float> m(static_cast<size_t>(g)), l(static_cast<size_t>(g));
      kvattn::ops::simd::softmax_parts(s.data(), n, g, m.data(), l.data());
      for (Eigen::Index r = 0; r < g; ++r) {
        double mx = s0(0, r);
        for (Eigen::Index j = 1; j < n; ++j) mx = std::max(mx, double(s0(j, r)));
        ASSERT_EQ(m[size_t(r)], float(mx)) << "g " << g << " n " << n << " head " << r;
        double sum = 0;
        for (Eigen::Index j = 0; j < n; ++j) {
          const double e = std::exp(double(s0(j, r)) - mx);
          sum += e;
          ASSERT_NEAR(s(j, r), e, 1e-6) << "g " << g << " n " << n << " row " << j;
        }
        ASSERT_NEAR(l[size_t(r)], sum, 1e-6 * sum) << "g " << g << " n " << n << " head " << r;
      }
    }
  }
}

// int8 rows in the integer domain: queries and softmax weights quantized to
// int16 (quantize_query, quantize_weights), products summed in int32. Each
// kernel is checked twice: exactly against the same codes summed in double
// (catches any wrong lane, row, head or overflow), and against the float
// inputs within the rounding bound the header states (catches a wrong scale).
namespace {

const Eigen::Index kIntRows[] = {1, 2, 7, 16};
const Eigen::Index kIntHeadDims[] = {16, 48, 128};  // multiples of 16

}  // namespace

TEST(GroupKernelsInt8, QueryCodesAreRoundedWithMaximalScale) {
  std::mt19937 rng(15);
  for (Eigen::Index hd : kIntHeadDims) {
    RowMatrix<float> q = test::random_matrix<float>(3, hd, rng, 5.0);
    q.row(1).setZero();
    std::vector<std::int16_t> codes(size_t(3 * hd), 1);
    float qs[3];
    kvattn::ops::simd::quantize_query(q.data(), 3, hd, codes.data(), qs);
    for (Eigen::Index r = 0; r < 3; ++r) {
      const double amax = q.row(r).cwiseAbs().maxCoeff();
      ASSERT_FLOAT_EQ(qs[r], float(amax / 32767)) << "head " << r;
      int top = 0;
      for (Eigen::Index d = 0; d < hd; ++d) {
        const int c = codes[size_t(r * hd + d)];
        top = std::max(top, std::abs(c));
        ASSERT_LE(std::abs(double(q(r, d)) - c * double(qs[r])), 0.5001 * double(qs[r]))
            << "hd " << hd << " head " << r << " d " << d;
      }
      ASSERT_EQ(top, r == 1 ? 0 : 32767) << "hd " << hd << " head " << r;
    }
  }
}

TEST(GroupKernelsInt8, ScoresAreExactIntegerDotsWithinQueryRounding) {
  std::mt19937 rng(16);
  for_each_shape(
      [&](Eigen::Index g, Eigen::Index n, Eigen::Index hd) {
        const RowMatrix<float> q = test::random_matrix<float>(g, hd, rng, 2.0);
        const Stored<std::int8_t> k(test::random_matrix<float>(n, hd, rng, 2.0));
        std::vector<std::int16_t> q16(size_t(g * hd));
        std::vector<float> qs(static_cast<size_t>(g)), s(static_cast<size_t>(n * g), -1e30f);
        kvattn::ops::simd::quantize_query(q.data(), g, hd, q16.data(), qs.data());
        const float scale = 0.3f;
        kvattn::ops::simd::group_scores_i8(q16.data(), qs.data(), g, hd, k.data(), k.scales(), n,
                                           scale, s.data());
        for (Eigen::Index j = 0; j < n; ++j) {
          for (Eigen::Index r = 0; r < g; ++r) {
            double exact = 0, dot = 0, rounding = 0;
            for (Eigen::Index d = 0; d < hd; ++d) {
              exact += double(q16[size_t(r * hd + d)]) * k.raw(j, d);
              dot += double(q(r, d)) * k.raw(j, d);
              rounding += std::abs(k.raw(j, d)) * 0.5 * double(qs[size_t(r)]);
            }
            const double f = double(scale) * k.scale(j);
            const double got = s[size_t(j * g + r)];
            ASSERT_NEAR(got, f * double(qs[size_t(r)]) * exact,
                        1e-6 * std::abs(f) * rounding * 65534)
                << "g " << g << " n " << n << " hd " << hd << " row " << j << " head " << r;
            ASSERT_NEAR(got, f * dot, f * rounding * 1.001)
                << "g " << g << " n " << n << " hd " << hd << " row " << j << " head " << r;
          }
        }
      },
      kIntRows, kIntHeadDims);
}

TEST(GroupKernelsInt8, WeightCodesPairRowsAndRound) {
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (Eigen::Index g : kGroups) {
    for (Eigen::Index n : {1, 2, 7, 16}) {
      RowMatrix<float> p(n, g);
      for (Eigen::Index i = 0; i < p.size(); ++i) p.data()[i] = unit(rng);
      p(n / 2, 0) = 1.0f;  // the largest weight of a chunk, as after softmax
      std::vector<float> vs(static_cast<size_t>(n));
      for (float& x : vs) x = 0.01f + unit(rng);
      vs[size_t(n / 2)] = 2.0f;  // the largest row scale
      const Eigen::Index pairs = (n + 1) / 2;
      std::vector<std::int16_t> w(size_t(pairs * 2 * g), -1);
      const float ws = kvattn::ops::simd::quantize_weights(p.data(), n, g, vs.data(), w.data());
      ASSERT_FLOAT_EQ(ws, 2.0f / 32767) << "g " << g << " n " << n;
      for (Eigen::Index j = 0; j < pairs * 2; ++j) {
        for (Eigen::Index r = 0; r < g; ++r) {
          const int code = w[size_t((j / 2) * 2 * g + 2 * r + j % 2)];
          const double want = j < n ? double(p(j, r)) * vs[size_t(j)] / double(ws) : 0.0;
          // half a step, plus float rounding of p * (vs / ws) (~3 ulp of 32767)
          ASSERT_LE(std::abs(code - want), 0.52) << "g " << g << " n " << n << " row " << j;
        }
      }
      ASSERT_EQ(w[size_t((n / 2) / 2 * 2 * g + (n / 2) % 2)], 32767) << "g " << g << " n " << n;
    }
  }
}

TEST(GroupKernelsInt8, AccumulateIsExactIntegerSumWithinWeightRounding) {
  std::mt19937 rng(18);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for_each_shape(
      [&](Eigen::Index g, Eigen::Index n, Eigen::Index hd) {
        RowMatrix<float> p(n, g);
        for (Eigen::Index i = 0; i < p.size(); ++i) p.data()[i] = unit(rng);
        const Stored<std::int8_t> v(test::random_matrix<float>(n, hd, rng, 2.0));
        std::vector<std::int16_t> w(size_t((n + 1) / 2 * 2 * g));
        const float ws = kvattn::ops::simd::quantize_weights(p.data(), n, g, v.scales(), w.data());
        RowMatrix<float> o = test::random_matrix<float>(g, hd, rng);  // accumulated into
        const RowMatrix<float> o0 = o;
        kvattn::ops::simd::group_accumulate_i8(w.data(), g, hd, v.data(), n, ws, o.data());
        for (Eigen::Index r = 0; r < g; ++r) {
          for (Eigen::Index d = 0; d < hd; ++d) {
            double exact = 0, want = o0(r, d), rounding = 0, mag = std::abs(o0(r, d));
            for (Eigen::Index j = 0; j < n; ++j) {
              exact += double(w[size_t((j / 2) * 2 * g + 2 * r + j % 2)]) * v.raw(j, d);
              want += double(p(j, r)) * v.scale(j) * v.raw(j, d);
              rounding += std::abs(v.raw(j, d)) * 0.5 * double(ws);
              mag += std::abs(double(p(j, r)) * v.scale(j) * v.raw(j, d));
            }
            ASSERT_NEAR(o(r, d), o0(r, d) + double(ws) * exact, 1e-6 * mag)
                << "g " << g << " n " << n << " hd " << hd << " head " << r << " d " << d;
            ASSERT_NEAR(o(r, d), want, rounding * 1.001 + 1e-6 * mag)
                << "g " << g << " n " << n << " hd " << hd << " head " << r << " d " << d;
          }
        }
      },
      kIntRows, kIntHeadDims);
}

#endif  // KVATTN_GROUP_KERNELS_AVX2

// The portable forms (any compute type, rows already decoded), in double.
TEST(GroupKernelsPortable, MatchPlainLoopsInDouble) {
  std::mt19937 rng(14);
  for (Eigen::Index g : kGroups) {
    for (Eigen::Index n : kRows) {
      const Eigen::Index hd = 5;
      const RowMatrix<double> q = test::random_matrix<double>(g, hd, rng);
      const RowMatrix<double> k = test::random_matrix<double>(n, hd, rng);
      const RowMatrix<double> v = test::random_matrix<double>(n, hd, rng);
      RowMatrix<double> s(n, g), o = RowMatrix<double>::Ones(g, hd);
      kvattn::ops::group_scores(q.data(), g, hd, k.data(), n, 0.5, s.data());
      kvattn::ops::group_accumulate(s.data(), g, hd, v.data(), n, o.data());
      for (Eigen::Index r = 0; r < g; ++r) {
        for (Eigen::Index j = 0; j < n; ++j) {
          double dot = 0;
          for (Eigen::Index d = 0; d < hd; ++d) dot += q(r, d) * k(j, d);
          ASSERT_NEAR(s(j, r), 0.5 * dot, 1e-12);
        }
        for (Eigen::Index d = 0; d < hd; ++d) {
          double want = 1;
          for (Eigen::Index j = 0; j < n; ++j) want += s(j, r) * v(j, d);
          ASSERT_NEAR(o(r, d), want, 1e-12);
        }
      }
    }
  }
}
