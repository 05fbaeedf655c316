// Failure injection: the Nth heap allocation throws std::bad_alloc, for every
// N until the call succeeds. After each failure the objects must be as they
// were and still usable; AddressSanitizer (in the sanitizer build) reports
// any leak. Eigen's allocations are seen through EIGEN_RUNTIME_NO_MALLOC,
// whose check goes through eigen_assert, redefined here; everything else
// through a replaced operator new.
//
// Eigen's matrix products allocate inside their own OpenMP parallel region,
// where an exception cannot propagate; these tests run Eigen on one thread.
#define EIGEN_RUNTIME_NO_MALLOC
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

namespace fi {
std::atomic<long> count{0};
std::atomic<long> fail_at{0};  // 0: never fail
std::atomic<bool> other_assert{false};
inline void on_allocation() {
  const long n = count.fetch_add(1) + 1;
  if (fail_at.load() != 0 && n == fail_at.load()) throw std::bad_alloc();
}
inline void on_assert(const char* what) {
  if (std::strstr(what, "heap allocation is forbidden") != nullptr) {
    on_allocation();
  } else {
    other_assert = true;
  }
}
}  // namespace fi

#define eigen_assert(x)          \
  do {                           \
    if (!(x)) fi::on_assert(#x); \
  } while (false)

#include <kvattn/cache/serialization.hpp>
#include <kvattn/kvattn.hpp>

#include "test_util.hpp"

#include <memory>
#include <sstream>

void* operator new(std::size_t n) {
  if (fi::fail_at.load() != 0) fi::on_allocation();
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
// GCC cannot see that this operator new allocates with malloc.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace {

// Calls f with allocation n failing, for n = 1, 2, ... until f succeeds;
// after each failure calls unchanged(). Returns how many allocations failed.
template <class F, class Check>
long fail_each_allocation(F&& f, Check&& unchanged) {
  Eigen::setNbThreads(1);
  for (long n = 1;; ++n) {
    fi::count = 0;
    fi::fail_at = n;
    Eigen::internal::set_is_malloc_allowed(false);
    bool failed = false;
    try {
      f();
    } catch (const std::bad_alloc&) {
      failed = true;
    }
    Eigen::internal::set_is_malloc_allowed(true);
    fi::fail_at = 0;
    EXPECT_FALSE(fi::other_assert.load());
    if (!failed) return n - 1;
    unchanged();
    if (::testing::Test::HasFailure()) return n;
  }
}

template <class Cache>
void expect_equal(const Cache& a, const Cache& b) {
  ASSERT_EQ(a.size(), b.size());
  for (Eigen::Index h = 0; h < a.n_kv_heads(); ++h) {
    ASSERT_EQ(a.keys(h), b.keys(h));
    ASSERT_EQ(a.values(h), b.values(h));
  }
}

const kvattn::AttentionConfig kConfig{32, 4, 2, 8, kvattn::RopeStyle::Interleaved};

}  // namespace

TEST(FailureInjection, Construction) {
  std::mt19937 rng(1);
  const kvattn::AttentionWeights<float> w = test::random_weights<float>(kConfig, rng, true);
  const long failures = fail_each_allocation(
      [&] {
        kvattn::MultiHeadAttention<float> layer(kConfig, w);
        kvattn::KVCache<float, std::int8_t> cache = layer.make_cache<std::int8_t>(16);
      },
      [] {});
  EXPECT_GT(failures, 3);
}

TEST(FailureInjection, AppendForwardAndStepKeepTheCache) {
  std::mt19937 rng(2);
  kvattn::MultiHeadAttention<float> layer(kConfig, test::random_weights<float>(kConfig, rng));
  const kvattn::RowMatrix<float> x = test::random_matrix<float>(48, 32, rng);
  kvattn::KVCache<float> cache = layer.make_cache(128);
  layer.forward(x.topRows(5), cache);
  const kvattn::KVCache<float> before = cache.copy();
  auto unchanged = [&] { expect_equal(cache, before); };

  // A fresh layer each time, so its workspace must grow inside the call.
  long failures = fail_each_allocation(
      [&] {
        kvattn::MultiHeadAttention<float> fresh(kConfig, test::random_weights<float>(kConfig, rng));
        (void)fresh;
      },
      [] {});
  EXPECT_GT(failures, 0);
  kvattn::AttentionWorkspace<float> ws;
  kvattn::RowMatrix<float> y(40, 32);
  failures =
      fail_each_allocation([&] { layer.forward(x.middleRows(5, 40), cache, y, ws); }, unchanged);
  EXPECT_GT(failures, 0);  // the workspace grew and the matrix products allocated
  EXPECT_EQ(cache.size(), 45);
  cache.truncate(5);
  kvattn::AttentionWorkspace<float> ws2;
  kvattn::Vector<float> y1(32);
  failures =
      fail_each_allocation([&] { layer.step(x.row(5).transpose(), cache, y1, ws2); }, unchanged);
  EXPECT_GT(failures, 0);
  EXPECT_EQ(cache.size(), 6);
  // And the results are those of an undisturbed run.
  kvattn::KVCache<float> clean = layer.make_cache(128);
  const kvattn::RowMatrix<float> expected = layer.forward(x.topRows(6), clean);
  EXPECT_TRUE(test::close(y1.transpose(), expected.row(5), 1e-5));
}

TEST(FailureInjection, LoadKeepsTheCache) {
  std::mt19937 rng(3);
  kvattn::KVCache<float, Eigen::half> saved(2, 8, 16), target(2, 8, 16);
  saved.append(test::random_matrix<float>(9, 16, rng), test::random_matrix<float>(9, 16, rng));
  target.append(test::random_matrix<float>(3, 16, rng), test::random_matrix<float>(3, 16, rng));
  std::stringstream buffer;
  kvattn::save(saved, buffer);
  const std::string bytes = buffer.str();
  const kvattn::KVCache<float, Eigen::half> before = target.copy();
  const long failures = fail_each_allocation(
      [&] {
        std::istringstream in(bytes);
        kvattn::load(target, in);
      },
      [&] { expect_equal(target, before); });
  EXPECT_GT(failures, 1);
  expect_equal(target, saved);
}

TEST(FailureInjection, LlamaPrefillAndStepKeepTheState) {
  std::mt19937 rng(4);
  const kvattn::LlamaWeights<float> w = test::random_llama(16, 24, 2, 4, 2, 20, rng);
  kvattn::Llama<float> model(w);
  kvattn::LlamaState<float> state = model.make_state();
  model.prefill({1, 2, 3}, state);
  const kvattn::LlamaState<float> before = state.copy();
  auto unchanged = [&] {
    ASSERT_EQ(state.pos(), before.pos());
    for (Eigen::Index l = 0; l < 2; ++l) expect_equal(state.cache(l), before.cache(l));
  };
  kvattn::Vector<float> logits;
  const long failures = fail_each_allocation(
      [&] {
        logits = model.prefill({4, 5, 6, 7, 8, 9, 10, 11}, state);
      },
      unchanged);
  EXPECT_GT(failures, 0);
  EXPECT_EQ(state.pos(), 11);
  EXPECT_TRUE(logits.allFinite());
  const kvattn::LlamaState<float> after_prefill = state.copy();
  kvattn::RowMatrix<float> all;
  const long forward_failures = fail_each_allocation(
      [&] {
        all = model.forward({12, 13, 14, 15, 16, 17}, state);
      },
      [&] {
        ASSERT_EQ(state.pos(), after_prefill.pos());
        for (Eigen::Index l = 0; l < 2; ++l) expect_equal(state.cache(l), after_prefill.cache(l));
      });
  EXPECT_GT(forward_failures, 0);
  EXPECT_EQ(all.rows(), 6);
}

// The batched paged calls: a mixed batch (decode tokens, a prompt chunk,
// a fork whose shared blocks must be copied) through Llama::forward_batch,
// and step_batch of one layer, with the Nth allocation failing: every
// sequence keeps its length, block table and rows, the pool its accounting.
namespace {

struct PoolSnapshot {
  std::vector<kvattn::SeqId> seqs;
  std::vector<std::vector<Eigen::Index>> blocks;
  std::vector<float> rows;
  Eigen::Index free = 0;
};

PoolSnapshot snapshot(kvattn::PagedKVCache<float>& pool) {
  PoolSnapshot s;
  s.seqs = pool.sequences();
  s.free = pool.free_blocks();
  for (kvattn::SeqId id : s.seqs) {
    s.blocks.push_back(pool.blocks_of(id));
    for (Eigen::Index l = 0; l < pool.n_layers(); ++l) {
      for (Eigen::Index h = 0; h < pool.n_kv_heads(); ++h) {
        for (Eigen::Index p = 0; p < pool.layer_length(id, l); ++p) {
          const auto r = pool.row(id, l, h, p);
          s.rows.insert(s.rows.end(), r.k, r.k + pool.head_dim());
          s.rows.insert(s.rows.end(), r.v, r.v + pool.head_dim());
        }
      }
    }
  }
  return s;
}

void expect_same(const PoolSnapshot& a, const PoolSnapshot& b) {
  ASSERT_EQ(a.seqs, b.seqs);
  ASSERT_EQ(a.blocks, b.blocks);
  ASSERT_EQ(a.free, b.free);
  ASSERT_EQ(a.rows, b.rows);
}

}  // namespace

TEST(FailureInjection, PagedBatchesKeepThePool) {
  std::mt19937 rng(5);
  const kvattn::LlamaWeights<float> w = test::random_llama(16, 24, 2, 4, 2, 20, rng);
  kvattn::Llama<float> warm(w);
  kvattn::PagedKVCache<float> pool = warm.make_paged_cache(12);
  const kvattn::SeqId a = pool.add_sequence(), b = pool.add_sequence();
  warm.forward_batch({{a, {1, 2, 3, 4, 5}}, {b, {1, 7}}}, pool);
  const kvattn::SeqId c = pool.fork(a);  // shares a's block: writing c copies it
  const PoolSnapshot before = snapshot(pool);
  kvattn::RowMatrix<float> logits;
  std::unique_ptr<kvattn::Llama<float>> model;
  const long failures = fail_each_allocation(
      [&] {
        model = std::make_unique<kvattn::Llama<float>>(w);  // its scratch grows inside the call
        logits = model->forward_batch({{a, {9}}, {c, {3, 4, 5}}, {b, {8}}}, pool);
      },
      [&] { expect_same(snapshot(pool), before); });
  EXPECT_GT(failures, 5);
  EXPECT_EQ(pool.length(a), 6);
  EXPECT_EQ(pool.length(c), 8);
  EXPECT_NE(pool.blocks_of(c)[0], pool.blocks_of(a)[0]);
  EXPECT_TRUE(logits.allFinite());

  const kvattn::AttentionConfig ac{16, 4, 2, 4, kvattn::RopeStyle::Interleaved};
  kvattn::MultiHeadAttention<float> layer(ac, test::random_weights<float>(ac, rng));
  kvattn::PagedKVCache<float> one({1, 2, 4, 16, 4});
  const kvattn::SeqId s = one.add_sequence(), t = one.add_sequence();
  layer.forward(test::random_matrix<float>(16, 16, rng), one.layer(0), s);
  layer.forward(test::random_matrix<float>(3, 16, rng), one.layer(0), t);
  const kvattn::RowMatrix<float> x = test::random_matrix<float>(2, 16, rng);
  kvattn::RowMatrix<float> y(2, 16);
  const PoolSnapshot before_step = snapshot(one);
  const long step_failures = fail_each_allocation(
      [&] {
        kvattn::AttentionWorkspace<float> ws;  // grows inside the call
        layer.step_batch(x, one.layer(0), {t, s}, y, ws);
      },
      [&] { expect_same(snapshot(one), before_step); });
  EXPECT_GT(step_failures, 2);
  EXPECT_EQ(one.length(s), 17);
}
