// Llama::forward_batch over a paged pool: a batch of different prompts on
// the real checkpoints gives, for each, the greedy tokens of running it
// alone; a decode entry's logits are bitwise those of the same sequence
// alone (and of the contiguous Llama::step), whatever else is in the batch;
// prompt chunks in a mixed batch agree with a solo prefill within 1e-5;
// bad batches throw and leave the pool as it was.
#include <kvattn/io/llama2c.hpp>
#include <kvattn/models/llama.hpp>

#include "models.hpp"
#include "test_util.hpp"

#include <cstring>

using kvattn::Llama;
using kvattn::PagedKVCache;
using kvattn::RowMatrix;
using kvattn::SeqId;
using kvattn::SeqTokens;
using Index = Eigen::Index;

namespace {

int argmax(const float* logits, Index n) {
  return int(std::max_element(logits, logits + n) - logits);
}

// Greedy continuation of `prompt` (BOS first) alone, through the contiguous
// state: the tokens after the prompt, `steps` of them.
std::vector<int> solo_greedy(Llama<float>& model, const std::vector<int>& prompt, int steps) {
  kvattn::LlamaState<float> state = model.make_state();
  kvattn::Vector<float> logits = model.prefill(prompt, state);
  std::vector<int> out;
  for (int i = 0; i < steps; ++i) {
    out.push_back(argmax(logits.data(), logits.size()));
    logits = model.step(out.back(), state);
  }
  return out;
}

bool same_bits(const float* a, const float* b, Index n) {
  return std::memcmp(a, b, size_t(n) * sizeof(float)) == 0;
}

}  // namespace

class BatchOnCheckpoint : public ::testing::TestWithParam<const char*> {};

// Four prompts of different lengths prefilled in one forward_batch, then
// decoded together (one token per entry per call), greedy: each gets
// exactly the tokens it gets alone.
TEST_P(BatchOnCheckpoint, GreedyTokensMatchEachPromptAlone) {
  KVATTN_REQUIRE_MODELS();
  Llama<float> model(kvattn::read_llama2c_checkpoint<float>(test::model_path(GetParam())));
  const std::vector<std::vector<int>> prompts = {
      {1}, {1, 400, 401}, {1, 368, 430, 281, 269, 435, 447}, {1, 20, 30, 40, 50, 60, 70, 80, 90}};
  const int steps = 40;
  PagedKVCache<float> pool = model.make_paged_cache(64);
  std::vector<SeqTokens> batch;
  for (const auto& p : prompts) batch.push_back({pool.add_sequence(), p});
  RowMatrix<float> logits = model.forward_batch(batch, pool);
  std::vector<std::vector<int>> got(prompts.size());
  for (int i = 0; i < steps; ++i) {
    for (size_t b = 0; b < batch.size(); ++b) {
      got[b].push_back(argmax(logits.row(Index(b)).data(), logits.cols()));
      batch[b].tokens = {got[b].back()};
    }
    logits = model.forward_batch(batch, pool);
  }
  for (size_t b = 0; b < prompts.size(); ++b) {
    EXPECT_EQ(got[b], solo_greedy(model, prompts[b], steps)) << GetParam() << " prompt " << b;
    EXPECT_EQ(pool.length(batch[b].seq), Index(prompts[b].size()) + steps);
  }
}

INSTANTIATE_TEST_SUITE_P(Shared, BatchOnCheckpoint,
                         ::testing::Values("aidreams260K.bin", "stories260K.bin"));

// Random weights (no shared files needed): a decode entry's logits do not
// depend on the batch; they equal the contiguous step's; a prompt chunk
// agrees with a solo prefill; every storage type.
template <class S>
class LlamaBatch : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, Eigen::bfloat16, Eigen::half, std::int8_t>;
TYPED_TEST_SUITE(LlamaBatch, StorageTypes);

TYPED_TEST(LlamaBatch, DecodeIsBatchInvariantAndEqualsTheContiguousStep) {
  using S = TypeParam;
  std::mt19937 rng(61);
  Llama<float> model(test::random_llama(32, 48, 2, 4, 2, 50, rng));
  PagedKVCache<float, S> pool = model.template make_paged_cache<S>(200);
  kvattn::LlamaState<float, S> state = model.template make_state<S>(64);
  const SeqId target = pool.add_sequence();
  const std::vector<int> prompt = {1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 45, 49, 3, 7, 11, 15};
  model.forward_batch({{target, prompt}}, pool);
  model.prefill(prompt, state);
  std::vector<SeqId> others;
  for (int i = 0; i < 20; ++i) {
    others.push_back(pool.add_sequence());
    model.forward_batch({{others.back(), std::vector<int>(size_t(1 + i % 19), 2 + i)}}, pool);
  }
  for (int t = 0; t < 12; ++t) {
    const int token = (7 * t + 3) % 50;
    const kvattn::Vector<float> want = model.step(token, state);  // contiguous
    for (int batch : {1, 3, 21}) {
      std::vector<SeqTokens> entries;
      std::vector<SeqId> forks;
      for (int i = 0; i < batch - 1; ++i) {
        forks.push_back(pool.fork(others[size_t((i * 5 + t) % 20)]));
        entries.push_back({forks.back(), {(i + t) % 50}});
      }
      forks.push_back(pool.fork(target));
      entries.insert(entries.begin() + (t % batch), SeqTokens{forks.back(), {token}});
      const RowMatrix<float> logits = model.forward_batch(entries, pool);
      EXPECT_TRUE(same_bits(logits.row(t % batch).data(), want.data(), want.size()))
          << "step " << t << " batch " << batch;
      for (SeqId f : forks) pool.release(f);
    }
    model.forward_batch({{target, {token}}}, pool);
  }
  // A prompt chunk inside a batch of decode tokens: agrees with a solo prefill.
  const SeqId fresh = pool.add_sequence();
  const std::vector<int> chunk = {1, 4, 8, 15, 16, 23, 42};
  const RowMatrix<float> mixed =
      model.forward_batch({{others[0], {3}}, {fresh, chunk}, {others[1], {4}}}, pool);
  kvattn::LlamaState<float, S> solo = model.template make_state<S>(64);
  const kvattn::Vector<float> alone = model.prefill(chunk, solo);
  EXPECT_TRUE(test::close(mixed.row(1).transpose(), alone, 1e-5));
}

TEST(LlamaBatchErrors, BadBatchesAreNamedAndChangeNothing) {
  std::mt19937 rng(62);
  Llama<float> model(test::random_llama(16, 24, 2, 4, 2, 20, rng));
  PagedKVCache<float> pool = model.make_paged_cache(3);
  const SeqId a = pool.add_sequence(), b = pool.add_sequence();
  model.forward_batch({{a, {1, 2, 3}}, {b, std::vector<int>(20, 4)}}, pool);  // 1 + 2 blocks
  auto unchanged = [&] {
    EXPECT_EQ(pool.length(a), 3);
    EXPECT_EQ(pool.length(b), 20);
    EXPECT_EQ(pool.free_blocks(), 0);
  };
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        model.forward_batch({{a, {1}}, {99, {1}}}, pool);
      },
      {"forward_batch", "batch[1].seq = 99 is not a sequence of this cache"});
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        model.forward_batch({{a, {1}}, {a, {2}}}, pool);
      },
      {"seq " + std::to_string(a) + " appears more than once"});
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        model.forward_batch({{a, {}}}, pool);
      },
      {"batch[0].tokens is empty"});
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        model.forward_batch({{b, {1}}, {a, {3, 20}}}, pool);
      },
      {"batch[1].tokens[1] = 20", "vocab_size = 20"});
  PagedKVCache<float> wrong({3, 2, 4, 16, 4});
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        model.forward_batch({{wrong.add_sequence(), {1}}}, wrong);
      },
      {"cache has n_layers = 3", "make_paged_cache"});
  // b's 21st token needs no block (20 of 32 used); a's 17th would: none free.
  test::expect_throw_with<std::length_error>(
      [&] {
        model.forward_batch({{b, {1}}, {a, std::vector<int>(14, 5)}}, pool);
      },
      {"needs 1 free blocks", "0 are free"});
  unchanged();
  model.forward_batch({{b, {1}}}, pool);
  EXPECT_EQ(pool.length(b), 21);
}
