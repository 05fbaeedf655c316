#include <kvattn/cache/kv_cache.hpp>

#include <algorithm>
#include <cstdint>

#include "test_util.hpp"

using kvattn::KVCache;

template <class T>
class KVCacheTest : public ::testing::Test {};
TYPED_TEST_SUITE(KVCacheTest, test::ScalarTypes);

template <class T>
kvattn::RowMatrix<T> rows(std::initializer_list<std::initializer_list<T>> values) {
  kvattn::RowMatrix<T> m(Eigen::Index(values.size()), Eigen::Index(values.begin()->size()));
  Eigen::Index r = 0;
  for (const auto& row : values) {
    Eigen::Index c = 0;
    for (T v : row) m(r, c++) = v;
    ++r;
  }
  return m;
}

// Two KV heads of head_dim 2: a row k = (a, b, c, d) puts (a, b) in head 0
// and (c, d) in head 1.
TYPED_TEST(KVCacheTest, AppendSplitsHeadsIntoContiguousBlocks) {
  using T = TypeParam;
  KVCache<T> cache(2, 2, 4);
  EXPECT_EQ(cache.size(), 0);
  EXPECT_EQ(cache.capacity(), 4);
  EXPECT_EQ(cache.kv_dim(), 4);
  EXPECT_EQ(cache.keys(0).rows(), 0);

  cache.append(rows<T>({{1, 2, 3, 4}}), rows<T>({{5, 6, 7, 8}}));
  ASSERT_EQ(cache.size(), 1);
  EXPECT_EQ(cache.keys(0), rows<T>({{1, 2}}));
  EXPECT_EQ(cache.keys(1), rows<T>({{3, 4}}));
  EXPECT_EQ(cache.values(0), rows<T>({{5, 6}}));
  EXPECT_EQ(cache.values(1), rows<T>({{7, 8}}));

  // Two more tokens at once: they follow the first one in each head's block.
  cache.append(rows<T>({{9, 10, 11, 12}, {13, 14, 15, 16}}),
               rows<T>({{17, 18, 19, 20}, {21, 22, 23, 24}}));
  ASSERT_EQ(cache.size(), 3);
  EXPECT_EQ(cache.keys(0), rows<T>({{1, 2}, {9, 10}, {13, 14}}));
  EXPECT_EQ(cache.keys(1), rows<T>({{3, 4}, {11, 12}, {15, 16}}));
  EXPECT_EQ(cache.values(0), rows<T>({{5, 6}, {17, 18}, {21, 22}}));
  EXPECT_EQ(cache.values(1), rows<T>({{7, 8}, {19, 20}, {23, 24}}));
  // Head 1 starts capacity rows after head 0: [head][capacity][head_dim].
  EXPECT_EQ(cache.keys(1).data() - cache.keys(0).data(), 4 * 2);
}

TYPED_TEST(KVCacheTest, TruncateThenAppendOverwritesTheTail) {
  using T = TypeParam;
  KVCache<T> cache(1, 2, 3);
  cache.append(rows<T>({{1, 2}, {3, 4}, {5, 6}}), rows<T>({{-1, -2}, {-3, -4}, {-5, -6}}));
  cache.truncate(1);
  EXPECT_EQ(cache.size(), 1);
  EXPECT_EQ(cache.keys(0), rows<T>({{1, 2}}));
  cache.append(rows<T>({{7, 8}}), rows<T>({{-7, -8}}));
  EXPECT_EQ(cache.size(), 2);
  EXPECT_EQ(cache.keys(0), rows<T>({{1, 2}, {7, 8}}));
  EXPECT_EQ(cache.values(0), rows<T>({{-1, -2}, {-7, -8}}));
  cache.truncate(2);  // no-op
  EXPECT_EQ(cache.size(), 2);
  cache.clear();
  EXPECT_EQ(cache.size(), 0);
  EXPECT_TRUE(cache.empty());
  EXPECT_EQ(cache.capacity(), 3);
}

TYPED_TEST(KVCacheTest, OverflowThrowsLengthErrorAndKeepsContents) {
  using T = TypeParam;
  KVCache<T> cache(2, 1, 3);
  cache.append(rows<T>({{1, 2}, {3, 4}}), rows<T>({{5, 6}, {7, 8}}));
  const KVCache<T> before = cache.copy();
  test::expect_throw_with<std::length_error>(
      [&] {
        cache.append(rows<T>({{9, 9}, {9, 9}}), rows<T>({{9, 9}, {9, 9}}));
      },
      {"KVCache::append", "appending 2 tokens to 2 cached exceeds capacity = 3"});
  EXPECT_EQ(cache.size(), 2);
  for (Eigen::Index h = 0; h < 2; ++h) {
    EXPECT_EQ(cache.keys(h), before.keys(h));
    EXPECT_EQ(cache.values(h), before.values(h));
  }
  // Exactly filling it is fine.
  cache.append(rows<T>({{9, 10}}), rows<T>({{11, 12}}));
  EXPECT_EQ(cache.size(), 3);
  EXPECT_THROW(cache.append(rows<T>({{0, 0}}), rows<T>({{0, 0}})), std::length_error);
}

TYPED_TEST(KVCacheTest, ShapeErrorsNameTheArgumentAndKeepContents) {
  using T = TypeParam;
  KVCache<T> cache(2, 4, 8);  // kv_dim = 8
  cache.append(kvattn::RowMatrix<T>::Ones(1, 8), kvattn::RowMatrix<T>::Ones(1, 8));
  test::expect_throw_with<std::invalid_argument>(
      [&] { cache.append(kvattn::RowMatrix<T>::Zero(1, 6), kvattn::RowMatrix<T>::Zero(1, 8)); },
      {"KVCache::append: k has 6 columns, expected n_kv_heads*head_dim = 8"});
  test::expect_throw_with<std::invalid_argument>(
      [&] { cache.append(kvattn::RowMatrix<T>::Zero(1, 8), kvattn::RowMatrix<T>::Zero(1, 9)); },
      {"KVCache::append: v has 9 columns, expected n_kv_heads*head_dim = 8"});
  test::expect_throw_with<std::invalid_argument>(
      [&] { cache.append(kvattn::RowMatrix<T>::Zero(2, 8), kvattn::RowMatrix<T>::Zero(1, 8)); },
      {"v has 1 rows, expected the rows of k = 2"});
  test::expect_throw_with<std::invalid_argument>([&] { cache.truncate(2); },
                                                 {"KVCache::truncate: n = 2", "size() = 1"});
  test::expect_throw_with<std::invalid_argument>([&] { cache.truncate(-1); }, {"n = -1"});
  test::expect_throw_with<std::out_of_range>([&] { (void)cache.keys(2); },
                                             {"KVCache::keys: h = 2", "n_kv_heads = 2"});
  test::expect_throw_with<std::out_of_range>([&] { (void)cache.values(-1); }, {"h = -1"});
  EXPECT_EQ(cache.size(), 1);
  EXPECT_EQ(cache.keys(1), (kvattn::RowMatrix<T>::Ones(1, 4)));
}

TEST(KVCacheErrors, ConstructorRejectsImpossibleSizes) {
  test::expect_throw_with<std::invalid_argument>([] { KVCache<float>(0, 4, 4); },
                                                 {"KVCache", "n_kv_heads = 0"});
  test::expect_throw_with<std::invalid_argument>([] { KVCache<float>(1, 0, 4); }, {"head_dim = 0"});
  test::expect_throw_with<std::invalid_argument>([] { KVCache<float>(1, 4, 0); }, {"capacity = 0"});
  test::expect_throw_with<std::length_error>(
      [] { KVCache<float>(Eigen::Index(1) << 40, Eigen::Index(1) << 20, 1 << 10); }, {"too large"});
}

TEST(KVCacheOwnership, CopyIsDeepAndMoveTransfers) {
  KVCache<float> a(1, 2, 4);
  a.append(rows<float>({{1, 2}}), rows<float>({{3, 4}}));
  KVCache<float> b = a.copy();
  b.append(rows<float>({{5, 6}}), rows<float>({{7, 8}}));
  EXPECT_EQ(a.size(), 1);
  EXPECT_EQ(b.size(), 2);
  EXPECT_NE(a.keys(0).data(), b.keys(0).data());
  KVCache<float> c = std::move(b);
  EXPECT_EQ(c.size(), 2);
  EXPECT_EQ(c.keys(0), rows<float>({{1, 2}, {5, 6}}));
  EXPECT_EQ(b.size(), 0);  // NOLINT(bugprone-use-after-move): moved-from is empty
  static_assert(!std::is_copy_constructible<KVCache<float>>::value, "copy must be explicit");
}

TEST(KVCacheViews, BindToRefWithoutCopy) {
  KVCache<float> cache(1, 3, 4);
  cache.append(kvattn::RowMatrix<float>::Ones(2, 3), kvattn::RowMatrix<float>::Ones(2, 3));
  const Eigen::Ref<const kvattn::RowMatrix<float>> ref = cache.keys(0);
  EXPECT_EQ(ref.data(), cache.keys(0).data());  // a Ref of the view aliases the cache
  EXPECT_EQ(ref.rows(), 2);
  EXPECT_EQ(ref.cols(), 3);
}

// The cache's storage: zeroed, 64-byte aligned, and 2 MiB aligned from 4 MiB
// up (the alignment transparent huge pages need); copies are deep.
TEST(LargeBuffer, ZeroedAlignedAndDeepCopied) {
  using Buffer = kvattn::detail::LargeBuffer<float>;
  const auto address = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p); };

  const Buffer empty;
  EXPECT_EQ(empty.size(), 0);
  EXPECT_EQ(empty.data(), nullptr);

  {  // leave garbage where the allocator is likely to hand out the next buffer
    Buffer junk(1000);
    std::fill(junk.data(), junk.data() + 1000, 7.0f);
  }
  Buffer small(1000);
  ASSERT_EQ(small.size(), 1000);
  EXPECT_EQ(address(small.data()) % 64, 0u);
  EXPECT_TRUE(std::all_of(small.data(), small.data() + 1000, [](float x) { return x == 0.0f; }));

  const Eigen::Index n = Eigen::Index(Buffer::kHugeMin / sizeof(float)) + 3;  // just over 4 MiB
  Buffer large(n);
  EXPECT_EQ(address(large.data()) % Buffer::kHugePage, 0u);
  EXPECT_TRUE(std::all_of(large.data(), large.data() + n, [](float x) { return x == 0.0f; }));

  small.data()[7] = 3.5f;
  Buffer copy(small);
  ASSERT_EQ(copy.size(), 1000);
  EXPECT_NE(copy.data(), small.data());
  EXPECT_EQ(copy.data()[7], 3.5f);
  copy.data()[7] = -1.0f;
  EXPECT_EQ(small.data()[7], 3.5f);

  large = copy;  // assignment replaces size and contents
  EXPECT_EQ(large.size(), 1000);
  EXPECT_EQ(large.data()[7], -1.0f);
  large.swap(small);
  EXPECT_EQ(large.data()[7], 3.5f);
  EXPECT_EQ(small.data()[7], -1.0f);
}

TEST(LargeBuffer, BigCachesStartOnAHugePageBoundary) {
  const KVCache<float> big(8, 128, 1024);  // 4 MiB of keys, 4 MiB of values
  const KVCache<float> tiny(1, 4, 2);
  const auto address = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p); };
  EXPECT_EQ(address(big.key_data(0)) % (std::uintptr_t(2) << 20), 0u);
  EXPECT_EQ(address(big.value_data(0)) % (std::uintptr_t(2) << 20), 0u);
  EXPECT_EQ(address(tiny.key_data(0)) % 64, 0u);
}
