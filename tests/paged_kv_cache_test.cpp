// The paged pool on its own: block tables checked by hand, copy-on-write,
// truncation, release, accounting, exhaustion, bad input, and sequence
// save/restore. The attention over it is in paged_attention_test.cpp.
#include <kvattn/cache/paged_kv_cache.hpp>
#include <kvattn/cache/paged_serialization.hpp>

#include "test_util.hpp"

#include <set>
#include <sstream>

using kvattn::PagedKVCache;
using kvattn::RowMatrix;
using kvattn::SeqId;

namespace {

using Index = Eigen::Index;
using Blocks = std::vector<Index>;

// Token t's key row, head h: t*100 + h*10 + d (values exactly representable
// in every storage type's range we use here; int8 rows are scaled).
RowMatrix<float> rows(Index first, Index n, Index n_kv, Index hd, float sign = 1.0f) {
  RowMatrix<float> m(n, n_kv * hd);
  for (Index t = 0; t < n; ++t) {
    for (Index h = 0; h < n_kv; ++h) {
      for (Index d = 0; d < hd; ++d)
        m(t, h * hd + d) = sign * float((first + t) * 100 + h * 10 + d);
    }
  }
  return m;
}

template <class T, class S>
void append_all_layers(PagedKVCache<T, S>& c, SeqId seq, Index first, Index n, float sign = 1.0f) {
  const RowMatrix<float> k = rows(first, n, c.n_kv_heads(), c.head_dim(), sign);
  for (Index l = 0; l < c.n_layers(); ++l) c.layer(l).append(seq, k, -k);
}

// Key row of position p, head h, layer l of seq, as stored, as floats.
std::vector<float> key_of(PagedKVCache<float>& c, SeqId seq, Index l, Index h, Index p) {
  const float* r = c.row(seq, l, h, p).k;
  return std::vector<float>(r, r + c.head_dim());
}

// Every block is held by as many sequences as its refcount says, and the
// free list holds exactly the others.
template <class T, class S>
void expect_consistent(const PagedKVCache<T, S>& c) {
  std::vector<int> holders(size_t(c.n_blocks()), 0);
  for (SeqId s : c.sequences()) {
    const Blocks b = c.blocks_of(s);
    EXPECT_EQ(Index(b.size()), (c.length(s) + c.block_tokens() - 1) / c.block_tokens())
        << "sequence " << s;
    for (Index x : b) ++holders[size_t(x)];
  }
  Index unused = 0;
  for (Index x = 0; x < c.n_blocks(); ++x) {
    EXPECT_EQ(c.block_refs(x), holders[size_t(x)]) << "block " << x;
    unused += holders[size_t(x)] == 0;
  }
  EXPECT_EQ(c.free_blocks(), unused);
}

}  // namespace

// Two layers, one KV head of 4, blocks of 16 positions, 6 blocks. The free
// list hands out the lowest free block first on a fresh pool.
TEST(PagedKVCache, BlockTablesByHand) {
  PagedKVCache<float> c({2, 1, 4, 16, 6});
  EXPECT_EQ(c.n_blocks(), 6);
  EXPECT_EQ(c.block_tokens(), 16);
  EXPECT_EQ(c.bytes(), 2 * 6 * (2 * 1 * 16) * 4 * 4);  // K and V: blocks * rows * head_dim * 4 B
  const SeqId a = c.add_sequence();
  EXPECT_TRUE(c.contains(a));
  EXPECT_EQ(c.length(a), 0);
  EXPECT_EQ(c.blocks_of(a), Blocks{});  // no token, no block
  EXPECT_EQ(c.free_blocks(), 6);

  append_all_layers(c, a, 0, 20);  // positions 0..19: ceil(20/16) = 2 blocks
  EXPECT_EQ(c.length(a), 20);
  EXPECT_EQ(c.blocks_of(a), (Blocks{0, 1}));
  EXPECT_EQ(c.free_blocks(), 4);

  const SeqId b = c.fork(a);  // shares both blocks, allocates none
  EXPECT_NE(b, a);
  EXPECT_EQ(c.blocks_of(b), (Blocks{0, 1}));
  EXPECT_EQ(c.block_refs(0), 2);
  EXPECT_EQ(c.block_refs(1), 2);
  EXPECT_EQ(c.free_blocks(), 4);

  // b writes position 20, in the shared partial block 1: exactly that block
  // is copied (into block 2, the next free one), for every layer at once.
  append_all_layers(c, b, 20, 1, -1.0f);
  EXPECT_EQ(c.blocks_of(a), (Blocks{0, 1}));
  EXPECT_EQ(c.blocks_of(b), (Blocks{0, 2}));
  EXPECT_EQ(c.block_refs(0), 2);
  EXPECT_EQ(c.block_refs(1), 1);
  EXPECT_EQ(c.block_refs(2), 1);
  EXPECT_EQ(c.free_blocks(), 3);
  EXPECT_EQ(c.length(a), 20);
  EXPECT_EQ(c.length(b), 21);
  for (Index l = 0; l < 2; ++l) {
    EXPECT_EQ(key_of(c, b, l, 0, 17), key_of(c, a, l, 0, 17)) << "copied row, layer " << l;
    EXPECT_EQ(key_of(c, b, l, 0, 20), (std::vector<float>{-2000, -2001, -2002, -2003}));
  }

  // Truncating into the middle of a block keeps it; to a block boundary frees the rest.
  c.truncate(a, 17);
  EXPECT_EQ(c.blocks_of(a), (Blocks{0, 1}));
  c.truncate(a, 16);
  EXPECT_EQ(c.blocks_of(a), (Blocks{0}));
  EXPECT_EQ(c.free_blocks(), 4);  // block 1 back
  c.truncate(a, 5);
  EXPECT_EQ(c.length(a), 5);
  // a writes positions 5..16: block 0 is shared with b, so a copies it
  // (block 1, freed last, comes first), and takes one more block for 16.
  append_all_layers(c, a, 5, 12, 2.0f);
  EXPECT_EQ(c.blocks_of(a), (Blocks{1, 3}));
  EXPECT_EQ(c.blocks_of(b), (Blocks{0, 2}));
  EXPECT_EQ(c.block_refs(0), 1);
  EXPECT_EQ(c.free_blocks(), 2);
  EXPECT_EQ(key_of(c, a, 0, 0, 4), key_of(c, b, 0, 0, 4));  // before the truncation point: kept
  EXPECT_EQ(key_of(c, b, 0, 0, 5), (std::vector<float>{500, 501, 502, 503}));  // b untouched
  EXPECT_EQ(key_of(c, a, 0, 0, 5), (std::vector<float>{1000, 1002, 1004, 1006}));
  expect_consistent(c);

  c.release(b);
  EXPECT_FALSE(c.contains(b));
  EXPECT_EQ(c.free_blocks(), 4);
  c.release(a);
  EXPECT_EQ(c.free_blocks(), 6);
  EXPECT_TRUE(c.sequences().empty());
}

TEST(PagedKVCache, LayersFillInTurnAndLengthIsTheCommonCount) {
  PagedKVCache<float> c({3, 2, 4, 16, 4});
  const SeqId s = c.add_sequence();
  c.layer(0).append(s, rows(0, 3, 2, 4), rows(0, 3, 2, 4));
  EXPECT_EQ(c.layer_length(s, 0), 3);
  EXPECT_EQ(c.layer_length(s, 1), 0);
  EXPECT_EQ(c.length(s), 0);
  c.layer(1).append(s, rows(0, 3, 2, 4), rows(0, 3, 2, 4));
  c.layer(2).append(s, rows(0, 3, 2, 4), rows(0, 3, 2, 4));
  EXPECT_EQ(c.length(s), 3);
  EXPECT_EQ(c.blocks_of(s).size(), 1u);
}

TEST(PagedKVCache, BadInputIsNamedAndChangesNothing) {
  PagedKVCache<float> c({2, 2, 4, 16, 4});
  const SeqId a = c.add_sequence();
  append_all_layers(c, a, 0, 5);
  test::expect_throw_with<std::invalid_argument>(
      [&] { c.length(a + 100); }, {"seq = " + std::to_string(a + 100), "is not in this cache"});
  test::expect_throw_with<std::invalid_argument>([&] { c.truncate(a, 6); },
                                                 {"n = 6", "0 <= n <= length(seq) = 5"});
  test::expect_throw_with<std::invalid_argument>([&] { c.fork(999); }, {"fork", "999"});
  test::expect_throw_with<std::invalid_argument>([&] { c.release(999); }, {"release", "999"});
  test::expect_throw_with<std::out_of_range>([&] { c.layer(2); }, {"layer = 2", "n_layers = 2"});
  test::expect_throw_with<std::invalid_argument>(
      [&] { c.layer(0).append(a, rows(0, 1, 1, 4), rows(0, 1, 1, 4)); },
      {"k has 4 columns", "n_kv_heads*head_dim = 8"});
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        PagedKVCache<float>({1, 1, 4, 24, 4});
      },
      {"block_tokens = 24", "multiple of 16"});
  c.release(a);
  test::expect_throw_with<std::invalid_argument>([&] { c.length(a); }, {"is not in this cache"});
  EXPECT_EQ(c.free_blocks(), 4);
}

// A write that needs more blocks than are free (copy-on-write copies
// counted) throws std::length_error saying how many, and changes nothing.
TEST(PagedKVCache, ExhaustionChangesNothing) {
  PagedKVCache<float> c({1, 1, 4, 16, 2});
  const SeqId a = c.add_sequence();
  append_all_layers(c, a, 0, 20);  // both blocks
  const SeqId b = c.fork(a);
  const std::vector<float> before = key_of(c, a, 0, 0, 19);
  test::expect_throw_with<std::length_error>([&] { append_all_layers(c, b, 20, 1); },
                                             {"needs 1 free blocks", "0 are free"});
  EXPECT_EQ(c.length(b), 20);
  EXPECT_EQ(c.blocks_of(b), (Blocks{0, 1}));
  EXPECT_EQ(c.block_refs(1), 2);
  EXPECT_EQ(key_of(c, b, 0, 0, 19), before);
  const SeqId d = c.add_sequence();
  test::expect_throw_with<std::length_error>([&] { append_all_layers(c, d, 0, 1); },
                                             {"needs 1 free blocks", "0 are free"});
  EXPECT_EQ(c.length(d), 0);
  c.release(a);  // b now holds both blocks alone: writing into block 1 needs no copy
  append_all_layers(c, b, 20, 12);
  EXPECT_EQ(c.length(b), 32);
  expect_consistent(c);
}

// After thousands of random table operations every block is accounted for,
// and releasing every sequence frees every block.
TEST(PagedKVCache, AccountingSurvivesRandomOperations) {
  PagedKVCache<float> c({2, 1, 2, 16, 24});
  std::mt19937 rng(31);
  std::vector<SeqId> live;
  for (int op = 0; op < 4000; ++op) {
    const int kind = int(rng() % 5);
    if (kind == 0 || live.empty()) {
      live.push_back(c.add_sequence());
    } else {
      const SeqId s = live[rng() % live.size()];
      try {
        if (kind == 1) {
          live.push_back(c.fork(s));
        } else if (kind == 2) {
          append_all_layers(c, s, c.length(s), Index(1 + rng() % 20));
        } else if (kind == 3) {
          c.truncate(s, Index(rng() % size_t(c.length(s) + 1)));
        } else {
          c.release(s);
          live.erase(std::find(live.begin(), live.end(), s));
        }
      } catch (const std::length_error&) {
        // a full pool: nothing changed (checked below)
      }
    }
    ASSERT_NO_FATAL_FAILURE(expect_consistent(c)) << "after operation " << op;
  }
  for (SeqId s : live) c.release(s);
  EXPECT_EQ(c.free_blocks(), c.n_blocks());
}

// ---- save / restore a sequence ----

template <class S>
class PagedSerialization : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, Eigen::bfloat16, Eigen::half, std::int8_t>;
TYPED_TEST_SUITE(PagedSerialization, StorageTypes);

TYPED_TEST(PagedSerialization, RoundTripIntoAnotherPoolIsExact) {
  using S = TypeParam;
  PagedKVCache<float, S> a({2, 2, 4, 16, 8}), b({2, 2, 4, 16, 5});
  const SeqId other = b.add_sequence();
  append_all_layers(b, other, 0, 17);  // b already holds something
  const SeqId s = a.add_sequence();
  std::mt19937 rng(4);
  const RowMatrix<float> k = test::random_matrix<float>(37, 8, rng);
  for (Index l = 0; l < 2; ++l) a.layer(l).append(s, k * float(l + 1), -k);
  std::stringstream buf;
  kvattn::save(a, s, buf);
  const SeqId t = kvattn::load(b, buf, "seq.bin");
  EXPECT_EQ(b.length(t), 37);
  EXPECT_EQ(b.blocks_of(t).size(), 3u);
  EXPECT_EQ(b.free_blocks(), 0);
  for (Index l = 0; l < 2; ++l) {
    for (Index h = 0; h < 2; ++h) {
      for (Index p = 0; p < 37; ++p) {
        const auto x = a.row(s, l, h, p), y = b.row(t, l, h, p);
        EXPECT_EQ(std::memcmp(x.k, y.k, 4 * sizeof(S)), 0);
        EXPECT_EQ(std::memcmp(x.v, y.v, 4 * sizeof(S)), 0);
        if (x.k_scale != nullptr) {
          EXPECT_EQ(*x.k_scale, *y.k_scale);
        }
      }
    }
  }
  // An empty sequence round-trips too (no payload: nothing to copy from).
  const SeqId e = a.add_sequence();
  std::stringstream empty;
  kvattn::save(a, e, empty);
  EXPECT_EQ(empty.str().size(), 64u + 4u);
  PagedKVCache<float, S> c({2, 2, 4, 16, 1});
  const SeqId f = kvattn::load(c, empty);
  EXPECT_EQ(c.length(f), 0);
}

TYPED_TEST(PagedSerialization, CorruptTruncatedMismatchedOrNoRoomChangesNothing) {
  using S = TypeParam;
  PagedKVCache<float, S> a({1, 1, 4, 16, 4});
  const SeqId s = a.add_sequence();
  append_all_layers(a, s, 0, 20);
  std::stringstream buf;
  kvattn::save(a, s, buf);
  const std::string bytes = buf.str();
  PagedKVCache<float, S> target({1, 1, 4, 16, 2});
  auto load = [&](const std::string& data) {
    std::istringstream in(data);
    return kvattn::load(target, in, "seq.bin");
  };
  for (size_t i = 0; i < bytes.size(); i += 3) {
    std::string bad = bytes;
    bad[i] = char(bad[i] ^ 0x20);
    EXPECT_THROW(load(bad), std::runtime_error) << "byte " << i;
  }
  for (size_t len = 0; len < bytes.size(); len += 5) {
    EXPECT_THROW(load(bytes.substr(0, len)), std::runtime_error) << "length " << len;
  }
  EXPECT_TRUE(target.sequences().empty());
  EXPECT_EQ(target.free_blocks(), 2);
  PagedKVCache<float, S> other_heads({1, 2, 4, 16, 4});
  std::istringstream in(bytes);
  test::expect_throw_with<std::runtime_error>(
      [&] { kvattn::load(other_heads, in, "x.bin"); },
      {"x.bin: holds n_layers = 1, n_kv_heads = 1", "expected n_layers = 1, n_kv_heads = 2"});
  PagedKVCache<float, S> small({1, 1, 4, 16, 1});  // 20 tokens need 2 blocks
  std::istringstream in2(bytes);
  EXPECT_THROW(kvattn::load(small, in2, "x.bin"), std::runtime_error);  // more than the pool
  PagedKVCache<float, S> busy({1, 1, 4, 16, 2});
  const SeqId hog = busy.add_sequence();
  append_all_layers(busy, hog, 0, 1);  // one block left
  std::istringstream in3(bytes);
  test::expect_throw_with<std::length_error>([&] { kvattn::load(busy, in3, "x.bin"); },
                                             {"needs 2 free blocks", "1 are free"});
  EXPECT_EQ(busy.sequences(), std::vector<SeqId>{hog});
  EXPECT_EQ(busy.free_blocks(), 1);
  EXPECT_NO_THROW(load(bytes));  // the intact file still loads
}

// Two sequences of one batch writing the block they share: the first to
// write copies it, the second then holds it alone. The check counts one
// copy, not two, so a pool with one free block takes the batch.
TEST(PagedKVCache, SharedBlockWrittenByTwoOfABatchCostsOneCopy) {
  PagedKVCache<float> c({1, 1, 4, 16, 3});
  const SeqId a = c.add_sequence();
  append_all_layers(c, a, 0, 20);
  const SeqId b = c.fork(a);  // blocks 0 and 1 shared, one free
  const Index first[2] = {20, 20}, end[2] = {21, 21};
  const SeqId both[2] = {a, b};
  EXPECT_EQ(c.blocks_needed(a, 20, 21), 1);
  kvattn::PagedUndo undo;
  c.prepare(both, first, end, 2, undo);
  EXPECT_EQ(c.free_blocks(), 0);
  EXPECT_NE(c.blocks_of(a)[1], c.blocks_of(b)[1]);
  EXPECT_EQ(c.blocks_of(a)[0], c.blocks_of(b)[0]);
  c.undo(undo);  // and undone, exactly
  EXPECT_EQ(c.blocks_of(a), c.blocks_of(b));
  EXPECT_EQ(c.free_blocks(), 1);
  EXPECT_EQ(c.block_refs(1), 2);
}

// When every holder of a shared block writes it in one call, one of them
// may write in place; it must be the one writing furthest along, so that a
// failed call whose undo points the others back at the block finds their
// rows intact. Here b was truncated inside the shared block: a writes at 20,
// b at 18. If b wrote in place, a's row 18 would be b's after the undo.
TEST(PagedKVCache, UndoAfterWritesIntoAPartlyTruncatedSharedBlockKeepsEveryRow) {
  PagedKVCache<float> c({1, 1, 4, 16, 4});
  const SeqId a = c.add_sequence();
  append_all_layers(c, a, 0, 20);
  const SeqId b = c.fork(a);
  c.truncate(b, 18);
  const std::vector<float> a18 = key_of(c, a, 0, 0, 18), a19 = key_of(c, a, 0, 0, 19);
  const SeqId both[2] = {a, b};
  const Index first[2] = {20, 18}, end[2] = {21, 19};
  kvattn::PagedUndo undo;
  c.prepare(both, first, end, 2, undo);
  EXPECT_EQ(c.free_blocks(), 1);  // b copied block 1; a writes it in place
  for (SeqId s : {a, b}) {        // the call writes its rows...
    const Index p = s == a ? 20 : 18;
    float* k = c.row(s, 0, 0, p).k;
    std::fill(k, k + 4, -9.0f);
  }
  c.undo(undo);  // ...then fails
  EXPECT_EQ(c.length(a), 20);
  EXPECT_EQ(c.length(b), 18);
  EXPECT_EQ(key_of(c, a, 0, 0, 18), a18);
  EXPECT_EQ(key_of(c, a, 0, 0, 19), a19);
  EXPECT_EQ(c.blocks_of(a), c.blocks_of(b));
  EXPECT_EQ(c.free_blocks(), 2);
  // An unknown sequence in a planned batch changes nothing, scratch included.
  const SeqId bad[2] = {a, 999};
  EXPECT_THROW(c.prepare(bad, first, end, 2, undo), std::invalid_argument);
  EXPECT_EQ(c.blocks_needed(a, 20, 21), 1);  // exact again: a copy of the shared block
  // A write of no positions takes no block, even into a shared one.
  const Index at20[1] = {20};
  c.prepare(&b, at20, at20, 1, undo);
  EXPECT_EQ(c.free_blocks(), 2);
}
