// A randomized soak of the paged pool (fixed seeds): thousands of
// operations -- add, fork, prefill chunk, batched step, truncate, release,
// save/load -- against a model made of independent contiguous KVCaches
// holding the same sequences. Every output is compared (batched steps
// bitwise, prefill chunks to float rounding) and the pool's accounting is
// checked after every operation; a full pool must throw and change nothing.
#include <kvattn/cache/paged_kv_cache.hpp>
#include <kvattn/cache/paged_serialization.hpp>
#include <kvattn/layers/multi_head_attention.hpp>

#include "test_util.hpp"

#include <cstring>
#include <map>
#include <sstream>

using kvattn::KVCache;
using kvattn::PagedKVCache;
using kvattn::RowMatrix;
using kvattn::SeqId;
using Index = Eigen::Index;

namespace {

template <class S>
struct Soak {
  static constexpr Index kCapacity = 300;
  kvattn::AttentionConfig config{16, 4, 2, 4, kvattn::RopeStyle::Interleaved};
  kvattn::MultiHeadAttention<float> mha;
  PagedKVCache<float, S> pool{{1, 2, 4, 16, 24}};
  std::map<SeqId, KVCache<float, S>> model;
  std::mt19937 rng;
  long ops = 0, full = 0;

  explicit Soak(unsigned seed)
      : mha(config,
            [&] {
              std::mt19937 r(seed);
              return test::random_weights<float>(config, r);
            }()),
        rng(seed) {}

  SeqId pick() {
    auto it = model.begin();
    std::advance(it, long(rng() % model.size()));
    return it->first;
  }

  // The pool holds exactly the model's sequences, with their lengths, every
  // block is held by as many sequences as its refcount, the rest are free.
  void check() {
    ASSERT_EQ(pool.sequences().size(), model.size());
    std::vector<int> holders(size_t(pool.n_blocks()), 0);
    for (const auto& [id, cache] : model) {
      ASSERT_TRUE(pool.contains(id));
      ASSERT_EQ(pool.length(id), cache.size());
      const std::vector<Index> blocks = pool.blocks_of(id);
      ASSERT_EQ(Index(blocks.size()), (cache.size() + 15) / 16);
      for (Index b : blocks) ++holders[size_t(b)];
    }
    Index unused = 0;
    for (Index b = 0; b < pool.n_blocks(); ++b) {
      ASSERT_EQ(pool.block_refs(b), holders[size_t(b)]);
      unused += holders[size_t(b)] == 0;
    }
    ASSERT_EQ(pool.free_blocks(), unused);
  }

  void prefill(SeqId s) {
    const Index n = Index(2 + rng() % 19);
    if (model.at(s).size() + n > kCapacity) return;
    const RowMatrix<float> x = test::random_matrix<float>(n, 16, rng);
    RowMatrix<float> got;
    try {
      got = mha.forward(x, pool.layer(0), s);
    } catch (const std::length_error&) {
      ++full;  // checked: nothing changed
      return;
    }
    const RowMatrix<float> want = mha.forward(x, model.at(s));
    ASSERT_TRUE(test::close(got, want, 1e-5)) << "operation " << ops;
  }

  void step(Index batch) {
    std::vector<SeqId> seqs;
    for (const auto& m : model) {
      if (m.second.size() < kCapacity) seqs.push_back(m.first);
    }
    std::shuffle(seqs.begin(), seqs.end(), rng);
    seqs.resize(size_t(std::min<Index>(batch, Index(seqs.size()))));
    if (seqs.empty()) return;
    const RowMatrix<float> x = test::random_matrix<float>(Index(seqs.size()), 16, rng);
    RowMatrix<float> y(x.rows(), 16);
    try {
      mha.step_batch(x, pool.layer(0), seqs, y);
    } catch (const std::length_error&) {
      ++full;
      return;
    }
    for (size_t b = 0; b < seqs.size(); ++b) {
      const kvattn::Vector<float> want = mha.step(x.row(Index(b)).transpose(), model.at(seqs[b]));
      ASSERT_EQ(std::memcmp(y.row(Index(b)).data(), want.data(), 16 * sizeof(float)), 0)
          << "operation " << ops << ", batch of " << seqs.size();
    }
  }

  // Park s on "disk" and bring it back as a new sequence (where the pool
  // has room for the copy), then drop the original.
  void save_load(SeqId s) {
    std::stringstream buf;
    kvattn::save(pool, s, buf);
    SeqId t = 0;
    try {
      t = kvattn::load(pool, buf, "soak");
    } catch (const std::length_error&) {
      ++full;
      return;
    }
    pool.release(s);
    model.emplace(t, std::move(model.at(s)));
    model.erase(s);
  }

  void run(long count) {
    for (ops = 0; ops < count; ++ops) {
      const unsigned kind = model.empty() ? 0 : unsigned(rng() % 16);
      if (kind == 0 || model.size() < 2) {
        model.emplace(pool.add_sequence(), mha.template make_cache<S>(kCapacity));
      } else if (kind == 1) {
        const SeqId s = pick();
        model.emplace(pool.fork(s), model.at(s).copy());
      } else if (kind <= 4) {
        prefill(pick());
      } else if (kind <= 10) {
        step(Index(1 + rng() % 9));
      } else if (kind <= 12) {
        const SeqId s = pick();
        const Index n = Index(rng() % size_t(model.at(s).size() + 1));
        pool.truncate(s, n);
        model.at(s).truncate(n);
      } else if (kind <= 14) {
        const SeqId s = pick();
        pool.release(s);
        model.erase(s);
      } else {
        save_load(pick());
      }
      check();
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
};

}  // namespace

template <class S>
class PagedSoak : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, Eigen::bfloat16, std::int8_t>;
TYPED_TEST_SUITE(PagedSoak, StorageTypes);

TYPED_TEST(PagedSoak, ThousandsOfOperationsAgreeWithContiguousCaches) {
  Soak<TypeParam> soak(51);
  soak.run(10000);
  std::printf("soak: %ld operations, %ld refused for a full pool, %zu sequences left\n", soak.ops,
              soak.full, soak.model.size());
  EXPECT_GT(soak.full, 0);  // the pool did run full
  for (const auto& m : soak.model) soak.pool.release(m.first);
  EXPECT_EQ(soak.pool.free_blocks(), soak.pool.n_blocks());
}
