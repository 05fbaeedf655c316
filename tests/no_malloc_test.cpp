// A decode step must not touch the heap once its workspace is sized. Eigen's
// allocations are caught with EIGEN_RUNTIME_NO_MALLOC (its check goes through
// eigen_assert, redefined here to count instead of abort, so the check stays
// on in release builds); everything else through a counting operator new.
#define EIGEN_RUNTIME_NO_MALLOC
#include <atomic>
#include <cstdlib>
#include <new>

static std::atomic<int> g_eigen_violations{0};
#define eigen_assert(x)                        \
  do {                                         \
    if (!(x)) g_eigen_violations.fetch_add(1); \
  } while (false)

#include <kvattn/layers/multi_head_attention.hpp>

#include "test_util.hpp"

static std::atomic<bool> g_counting{false};
static std::atomic<int> g_news{0};

void* operator new(std::size_t n) {
  if (g_counting.load()) g_news.fetch_add(1);
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

// Runs f with Eigen's heap and operator new watched; returns the allocations seen.
template <class F>
int allocations_during(F&& f) {
  g_eigen_violations = 0;
  g_news = 0;
  Eigen::internal::set_is_malloc_allowed(false);
  g_counting = true;
  f();
  g_counting = false;
  Eigen::internal::set_is_malloc_allowed(true);
  return g_eigen_violations.load() + g_news.load();
}

}  // namespace

TEST(NoMalloc, TheWatchSeesAnAllocation) {
  // The check can fail: a fresh Eigen vector is counted.
  EXPECT_GT(allocations_during([] {
              kvattn::Vector<float> v(1000);
              v.setZero();
            }),
            0);
}

TEST(NoMalloc, DecodeStepAllocatesNothing) {
  for (const kvattn::AttentionConfig& c :
       {kvattn::AttentionConfig{64, 8, 2, 8, kvattn::RopeStyle::Interleaved},
        kvattn::AttentionConfig{64, 8, 8, 8, kvattn::RopeStyle::HalfSplit},
        kvattn::AttentionConfig{64, 8, 1, 8}}) {
    std::mt19937 rng(1);
    const kvattn::MultiHeadAttention<float> layer(c, test::random_weights<float>(c, rng, true));
    kvattn::KVCache<float> cache = layer.make_cache(256);
    kvattn::AttentionWorkspace<float> ws;
    const kvattn::RowMatrix<float> prompt = test::random_matrix<float>(40, 64, rng);
    kvattn::RowMatrix<float> prompt_out(40, 64);
    layer.forward(prompt, cache, prompt_out, ws);  // prefill may allocate (matrix products)
    const kvattn::Vector<float> x = test::random_vector<float>(64, rng);
    kvattn::Vector<float> y(64);
    layer.step(x, cache, y, ws);  // first step sizes the workspace for the capacity
    const int seen = allocations_during([&] {
      for (int t = 0; t < 200; ++t) layer.step(x, cache, y, ws);
    });
    EXPECT_EQ(seen, 0) << "n_kv_heads " << c.n_kv_heads;
    EXPECT_EQ(cache.size(), 241);
    EXPECT_TRUE(y.allFinite());
  }
}

// The same with 16-bit weights, at a d_model whose stacked Wq|Wk|Wv (3 MiB
// in bfloat16) takes the threaded matrix-vector path, and a bfloat16 cache.
TEST(NoMalloc, DecodeStepWithReducedWeightsAllocatesNothing) {
  const kvattn::AttentionConfig c{1024, 16, 4, 64, kvattn::RopeStyle::HalfSplit};
  std::mt19937 rng(3);
  const kvattn::MultiHeadAttention<float, Eigen::bfloat16> layer(
      c, test::random_weights<float>(c, rng, false));
  kvattn::KVCache<float, Eigen::bfloat16> cache = layer.make_cache<Eigen::bfloat16>(64);
  kvattn::AttentionWorkspace<float> ws;
  const kvattn::Vector<float> x = test::random_vector<float>(c.d_model, rng);
  kvattn::Vector<float> y(c.d_model);
  layer.step(x, cache, y, ws);
  const int seen = allocations_during([&] {
    for (int t = 0; t < 40; ++t) layer.step(x, cache, y, ws);
  });
  EXPECT_EQ(seen, 0);
  EXPECT_EQ(cache.size(), 41);
  EXPECT_TRUE(y.allFinite());
}
