// Attention over the paged pool: paged == contiguous KVCache == the double
// reference (MHA, GQA, MQA, every storage type, blocks of 16 and 64,
// lengths that end mid-block); batch invariance (the same sequence inside
// batches of 1, 2, 7 and 64 in shuffled orders, 1 and 2 threads: the same
// bits); bad input and exhaustion in a batch change nothing.
#include <kvattn/cache/paged_kv_cache.hpp>
#include <kvattn/layers/multi_head_attention.hpp>

#include "reference.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <cstring>

#if defined(_OPENMP)
#include <omp.h>
#endif

using kvattn::AttentionConfig;
using kvattn::MultiHeadAttention;
using kvattn::PagedKVCache;
using kvattn::RopeStyle;
using kvattn::RowMatrix;
using kvattn::SeqId;
using Index = Eigen::Index;

namespace {

void set_threads(int n) {
#if defined(_OPENMP)
  omp_set_num_threads(n);
#else
  (void)n;
#endif
}

bool same_bits(const RowMatrix<float>& a, const RowMatrix<float>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), size_t(a.size()) * sizeof(float)) == 0;
}

}  // namespace

template <class S>
class PagedAttention : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, Eigen::bfloat16, Eigen::half, std::int8_t>;
TYPED_TEST_SUITE(PagedAttention, StorageTypes);

// A prefill of 23 tokens, then 30 steps (ends at 53: mid-block for 16 and 64),
// through a contiguous cache and through the pool (steps once alone, once
// inside step_batch with another sequence): the steps give the same bits,
// the prefill agrees to float rounding, and with float storage all agree
// with the double reference.
TYPED_TEST(PagedAttention, EqualsContiguousAndReference) {
  using S = TypeParam;
  for (const auto& [heads, kv] : std::vector<std::pair<Index, Index>>{{4, 4}, {4, 2}, {4, 1}}) {
    for (Index bt : {16, 64}) {
      std::mt19937 rng(41);
      const AttentionConfig c{16, heads, kv, 8, RopeStyle::Interleaved};
      const kvattn::AttentionWeights<float> w = test::random_weights<float>(c, rng, true);
      const MultiHeadAttention<float> mha(c, w);
      const RowMatrix<float> x = test::random_matrix<float>(53, 16, rng);
      kvattn::AttentionWorkspace<float> ws;
      kvattn::KVCache<float, S> flat = mha.template make_cache<S>(64);
      PagedKVCache<float, S> pool({1, kv, 8, bt, 8});
      const SeqId s = pool.add_sequence(), other = pool.add_sequence();
      RowMatrix<float> y_flat(53, 16), y_paged(53, 16);
      mha.forward(x.topRows(23), flat, y_flat.topRows(23), ws);
      mha.forward(x.topRows(23), pool.layer(0), s, y_paged.topRows(23), ws);
      RowMatrix<float> y_other(9, 16);
      mha.forward(test::random_matrix<float>(9, 16, rng), pool.layer(0), other, y_other, ws);
      ASSERT_TRUE(test::close(y_paged.topRows(23), y_flat.topRows(23), 1e-5)) << "bt " << bt;
      for (Index t = 23; t < 53; ++t) {
        kvattn::Vector<float> y(16);
        mha.step(x.row(t).transpose(), flat, y, ws);
        y_flat.row(t) = y.transpose();
        RowMatrix<float> xb(2, 16), yb(2, 16);
        xb.row(0) = x.row(52 - t + 23);  // the other sequence's token
        xb.row(1) = x.row(t);
        mha.step_batch(xb, pool.layer(0), {other, s}, yb, ws);
        y_paged.row(t) = yb.row(1);
      }
      EXPECT_TRUE(same_bits(y_paged.bottomRows(30), y_flat.bottomRows(30)))
          << "heads " << heads << "/" << kv << " bt " << bt;
      EXPECT_EQ(pool.length(s), 53);
      EXPECT_EQ(Index(pool.blocks_of(s).size()), (53 + bt - 1) / bt);
      if constexpr (std::is_same<S, float>::value) {
        const RowMatrix<double> want =
            reference::attention(c, test::cast_weights<double>(w), x.cast<double>());
        EXPECT_TRUE(test::close(y_paged, want, 1e-5)) << "heads " << heads << "/" << kv;
      }
    }
  }
}

// The same sequence's step inside batches of 1, 2, 7 and 64 sequences of
// other lengths, in shuffled orders, with 1 and 2 threads: the same bits.
// 64 sequences of about 40 positions make the step read more than 1 MiB,
// so the threads do split it.
TEST(PagedAttentionBatch, OutputsDoNotDependOnTheBatchOrThreads) {
  std::mt19937 rng(42);
  const AttentionConfig c{64, 8, 2, 32, RopeStyle::HalfSplit};
  MultiHeadAttention<float> mha(c, test::random_weights<float>(c, rng));
  PagedKVCache<float> pool({1, 2, 32, 16, 64 * 4 * 2});
  std::vector<SeqId> seqs;
  RowMatrix<float> tokens(64, 64);  // each sequence's next token
  for (int i = 0; i < 64; ++i) {
    seqs.push_back(pool.add_sequence());
    const Index n = 17 + (i * 7) % 40;
    mha.forward(test::random_matrix<float>(n, 64, rng), pool.layer(0), seqs.back());
    tokens.row(i) = test::random_matrix<float>(1, 64, rng);
  }
  const int target = 5;
  RowMatrix<float> want;
  for (int threads : {1, 2}) {
    set_threads(threads);
    for (int batch : {1, 2, 7, 64}) {
      for (int trial = 0; trial < 3; ++trial) {
        std::vector<int> members{target};
        std::vector<int> others;
        for (int i = 0; i < 64; ++i) {
          if (i != target) others.push_back(i);
        }
        std::shuffle(others.begin(), others.end(), rng);
        members.insert(members.end(), others.begin(), others.begin() + (batch - 1));
        std::shuffle(members.begin(), members.end(), rng);
        std::vector<SeqId> forks;
        RowMatrix<float> x(batch, 64), y(batch, 64);
        Index row = 0;
        for (int b = 0; b < batch; ++b) {
          forks.push_back(pool.fork(seqs[size_t(members[size_t(b)])]));
          x.row(b) = tokens.row(members[size_t(b)]);
          if (members[size_t(b)] == target) row = b;
        }
        mha.step_batch(x, pool.layer(0), forks, y);
        const RowMatrix<float> got = y.row(row);
        if (want.size() == 0) want = got;
        EXPECT_TRUE(same_bits(got, want)) << "batch " << batch << " threads " << threads;
        for (SeqId f : forks) pool.release(f);
      }
    }
  }
  set_threads(2);
}

TEST(PagedAttentionBatch, BadInputAndExhaustionChangeNothing) {
  std::mt19937 rng(43);
  const AttentionConfig c{16, 4, 2, 8, RopeStyle::Interleaved};
  MultiHeadAttention<float> mha(c, test::random_weights<float>(c, rng));
  PagedKVCache<float> pool({1, 2, 8, 16, 3});
  const SeqId a = pool.add_sequence(), b = pool.add_sequence();
  mha.forward(test::random_matrix<float>(16, 16, rng), pool.layer(0), a);  // a full block
  mha.forward(test::random_matrix<float>(20, 16, rng), pool.layer(0), b);  // two blocks
  auto snapshot = [&] {
    std::vector<float> all;
    for (SeqId s : {a, b}) {
      for (Index p = 0; p < pool.length(s); ++p) {
        const auto r = pool.row(s, 0, 1, p);
        all.insert(all.end(), r.k, r.k + 8);
        all.insert(all.end(), r.v, r.v + 8);
      }
    }
    return all;
  };
  const std::vector<float> before = snapshot();
  const RowMatrix<float> x2 = test::random_matrix<float>(2, 16, rng);
  RowMatrix<float> y2(2, 16);
  auto unchanged = [&] {
    EXPECT_EQ(pool.length(a), 16);
    EXPECT_EQ(pool.length(b), 20);
    EXPECT_EQ(pool.free_blocks(), 0);
    EXPECT_EQ(snapshot(), before);
  };
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        mha.step_batch(x2, pool.layer(0), {a, 77}, y2);
      },
      {"step_batch", "seqs[b] = 77 is not a sequence of this cache"});
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        mha.step_batch(x2, pool.layer(0), {b, b}, y2);
      },
      {"seq " + std::to_string(b) + " appears more than once"});
  test::expect_throw_with<std::invalid_argument>(
      [&] { mha.step_batch(x2, pool.layer(0), {a}, y2); },
      {"x has 2 rows", "one per sequence = 1"});
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        mha.step_batch(RowMatrix<float>(2, 15), pool.layer(0), {a, b}, y2);
      },
      {"x has 15 columns", "d_model = 16"});
  RowMatrix<float> y_bad(2, 3);
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        mha.step_batch(x2, pool.layer(0), {a, b}, y_bad);
      },
      {"y has shape 2x3"});
  PagedKVCache<float> other_shape({1, 1, 8, 16, 3});
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        mha.step_batch(x2, other_shape.layer(0), {a, b}, y2);
      },
      {"cache has n_kv_heads = 1"});
  // a needs a new block for position 16 (b's position 20 is in its own block): none is free.
  test::expect_throw_with<std::length_error>(
      [&] {
        mha.step_batch(x2, pool.layer(0), {a, b}, y2);
      },
      {"needs 1 free blocks", "0 are free"});
  unchanged();
  pool.release(b);
  test::expect_throw_with<std::invalid_argument>(
      [&] { mha.step_batch(x2.topRows(1), pool.layer(0), {b}, y2.topRows(1)); },
      {"is not a sequence of this cache"});
  mha.step_batch(x2.topRows(1), pool.layer(0), {a}, y2.topRows(1));  // room now
  EXPECT_EQ(pool.length(a), 17);
}
