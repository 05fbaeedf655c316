// Tensor parallelism over MPI, run by ctest under mpiexec with 1, 2 and 4
// ranks (--oversubscribe on a 2-core machine): the deterministic
// all-reduce; ShardedAttention against the single-process layer and the
// double reference (MHA, GQA, and MQA where one KV head allows it), bitwise
// repeatable and equal on every rank; bad splits and mismatched configs
// throwing on every rank; ShardedLlama on the real checkpoints giving the
// single process's greedy tokens, and resuming from saved slices.
#include <kvattn/dist/sharded_llama.hpp>
#include <kvattn/kvattn.hpp>

#include "models.hpp"
#include "reference.hpp"
#include "test_util.hpp"

#include <cstring>
#include <sstream>

using kvattn::RowMatrix;
using kvattn::dist::Communicator;
using Index = Eigen::Index;

namespace {

Communicator& comm() {
  static Communicator c;
  return c;
}

// Whether every rank holds the same bytes.
bool same_on_every_rank(const float* data, Index n) {
  std::vector<float> all(size_t(n) * size_t(comm().size()));
  comm().allgather(data, n, all.data());
  for (int r = 1; r < comm().size(); ++r) {
    if (std::memcmp(all.data(), all.data() + size_t(r) * size_t(n), size_t(n) * 4) != 0)
      return false;
  }
  return true;
}

}  // namespace

// Values whose float sum depends on the order: rank r contributes 1e8 * (-1)^r
// plus r + 0.25 to element i; the expected sum adds them in rank order.
TEST(Communicator, AllreduceSumsInRankOrderBitForBit) {
  const int R = comm().size(), me = comm().rank();
  std::vector<float> data(37);
  auto part = [](int r, size_t i) {
    return float(((r % 2) ? -1e8 : 1e8) * double(i % 3)) + float(r) + 0.25f;
  };
  for (size_t i = 0; i < data.size(); ++i) data[i] = part(me, i);
  comm().allreduce_sum(data.data(), Index(data.size()));
  for (size_t i = 0; i < data.size(); ++i) {
    float want = part(0, i);
    for (int r = 1; r < R; ++r) want += part(r, i);
    ASSERT_EQ(data[i], want) << "element " << i;
  }
  EXPECT_TRUE(same_on_every_rank(data.data(), Index(data.size())));
  std::vector<double> d(5, double(me) + 0.5);
  comm().allreduce_sum(d.data(), 5);
  EXPECT_EQ(d[0], R * (R - 1) / 2.0 + 0.5 * R);
  int token = me == 0 ? 42 : -1;
  comm().broadcast(&token, 1);
  EXPECT_EQ(token, 42);
}

class ShardedAttentionTest : public ::testing::TestWithParam<std::pair<Index, Index>> {};

// Prefill 10 tokens, 6 steps, then a chunk of 3 and more steps, through the
// sharded layer and through one process's layer on every rank.
TEST_P(ShardedAttentionTest, MatchesOneProcessAndTheReference) {
  const auto [heads, kv] = GetParam();
  if (kv % comm().size() != 0)
    GTEST_SKIP() << kv << " KV heads do not split over " << comm().size() << " ranks";
  std::mt19937 rng(71);  // the same weights and inputs on every rank
  const kvattn::AttentionConfig c{32, heads, kv, 8, kvattn::RopeStyle::Interleaved};
  const kvattn::AttentionWeights<float> w = test::random_weights<float>(c, rng, true);
  const RowMatrix<float> x = test::random_matrix<float>(24, 32, rng);
  kvattn::dist::ShardedAttention<float> sharded(comm(), c, w);
  kvattn::MultiHeadAttention<float> single(c, w);
  RowMatrix<float> first_run;
  for (int run = 0; run < 2; ++run) {
    kvattn::KVCache<float> mine = sharded.make_cache(32), all = single.make_cache(32);
    EXPECT_EQ(mine.n_kv_heads(), kv / comm().size());
    RowMatrix<float> got(24, 32), want(24, 32);
    got.topRows(10) = sharded.forward(x.topRows(10), mine);
    want.topRows(10) = single.forward(x.topRows(10), all);
    for (Index t = 10; t < 16; ++t) {
      got.row(t) = sharded.step(x.row(t).transpose(), mine).transpose();
      want.row(t) = single.step(x.row(t).transpose(), all).transpose();
    }
    got.middleRows(16, 3) = sharded.forward(x.middleRows(16, 3), mine);
    want.middleRows(16, 3) = single.forward(x.middleRows(16, 3), all);
    for (Index t = 19; t < 24; ++t) {
      got.row(t) = sharded.step(x.row(t).transpose(), mine).transpose();
      want.row(t) = single.step(x.row(t).transpose(), all).transpose();
    }
    EXPECT_TRUE(test::close(got, want, 1e-5)) << comm().size() << " ranks";
    const RowMatrix<double> ref =
        reference::attention(c, test::cast_weights<double>(w), x.cast<double>());
    EXPECT_TRUE(test::close(got, ref, 1e-5));
    EXPECT_TRUE(same_on_every_rank(got.data(), got.size()));
    if (run == 0) {
      first_run = got;
    } else {
      EXPECT_EQ(std::memcmp(got.data(), first_run.data(), size_t(got.size()) * 4), 0)
          << "a second run differs";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, ShardedAttentionTest,
                         ::testing::Values(std::make_pair(Index(8), Index(8)),   // MHA
                                           std::make_pair(Index(8), Index(4)),   // GQA
                                           std::make_pair(Index(8), Index(1))),  // MQA
                         [](const auto& info) {
                           return std::to_string(info.param.first) + "_" +
                                  std::to_string(info.param.second);
                         });

TEST(ShardedAttentionErrors, BadSplitsAndMismatchedConfigsThrowOnEveryRank) {
  if (comm().size() == 1) GTEST_SKIP() << "needs more than one rank";
  std::mt19937 rng(72);
  const kvattn::AttentionConfig odd{24, 3, 3, 8};
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        kvattn::dist::ShardedAttention<float>(comm(), odd, test::random_weights<float>(odd, rng));
      },
      {"n_kv_heads = 3 is not a multiple of the number of ranks = " +
       std::to_string(comm().size())});
  const Index hd = comm().rank() == 1 ? 4 : 8;  // rank 1 disagrees
  const kvattn::AttentionConfig mixed{32, 4, 2, hd};
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        kvattn::dist::ShardedAttention<float>(comm(), mixed,
                                              test::random_weights<float>(mixed, rng));
      },
      {"differs between ranks: rank 0 has", "rank 1 has"});
}

class ShardedLlamaTest : public ::testing::TestWithParam<const char*> {};

// Greedy decoding over every position: the tokens of one process.
TEST_P(ShardedLlamaTest, GreedyTokensEqualOneProcess) {
  KVATTN_REQUIRE_MODELS();
  const std::string path = test::model_path(GetParam());
  auto sharded = kvattn::dist::ShardedLlama<float>::read_llama2c(comm(), path);
  kvattn::Llama<float> single(kvattn::read_llama2c_checkpoint<float>(path));
  const Index steps = sharded.config().seq_len;
  auto a = sharded.make_state();
  auto b = single.make_state();
  kvattn::Vector<float> la = sharded.prefill({1}, a), lb = single.prefill({1}, b);
  std::vector<int> ta, tb;
  for (Index p = 1; p < steps; ++p) {
    ta.push_back(int(std::max_element(la.data(), la.data() + la.size()) - la.data()));
    tb.push_back(int(std::max_element(lb.data(), lb.data() + lb.size()) - lb.data()));
    if (p + 1 < steps) {
      la = sharded.step(ta.back(), a);
      lb = single.step(tb.back(), b);
    }
  }
  EXPECT_EQ(ta, tb) << GetParam() << " on " << comm().size() << " ranks";
  EXPECT_TRUE(same_on_every_rank(la.data(), la.size()));
}

// Each rank saves its slice of the state; a fresh state restored from it
// continues with the same tokens.
TEST_P(ShardedLlamaTest, SavedSlicesResume) {
  KVATTN_REQUIRE_MODELS();
  auto model =
      kvattn::dist::ShardedLlama<float>::read_llama2c(comm(), test::model_path(GetParam()));
  auto state = model.make_state(64);
  model.prefill({1, 20, 30, 40}, state);
  std::stringstream slice;
  state.save(slice);
  auto resumed = model.make_state(64);
  model.load_state(resumed, slice, "slice");
  ASSERT_EQ(resumed.pos(), 4);
  for (int t : {5, 6, 7}) EXPECT_EQ(model.step(t, state), model.step(t, resumed));
  if (comm().size() == 1) return;
  // Slices saved at different positions (the last rank's one token behind),
  // and a slice one rank cannot read: every rank throws, no state changes.
  std::stringstream uneven;
  auto behind = model.make_state(64);
  model.prefill({1, 20, 30, 40}, behind);
  if (comm().rank() == comm().size() - 1) behind.truncate(3);
  behind.save(uneven);
  auto target = model.make_state(64);
  model.prefill({1, 9}, target);
  test::expect_throw_with<std::runtime_error>(
      [&] { model.load_state(target, uneven, "uneven"); },
      {"ShardedLlama::load_state: the slices hold different positions: rank 0 has 4, rank"});
  EXPECT_EQ(target.pos(), 2);
  std::stringstream broken(comm().rank() == 0 ? std::string("not a state") : slice.str());
  test::expect_throw_with<std::runtime_error>(
      [&] { model.load_state(target, broken, "broken"); },
      {"ShardedLlama::load_state: rank 0 could not load its slice"});
  EXPECT_EQ(target.pos(), 2);
}

INSTANTIATE_TEST_SUITE_P(Shared, ShardedLlamaTest,
                         ::testing::Values("aidreams260K.bin", "stories260K.bin"));

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  if (comm().rank() != 0) {  // one rank reports; every rank's result counts
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any;
}
