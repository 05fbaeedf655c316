#include <kvattn/io/llama2c.hpp>
#include <kvattn/models/llama.hpp>
#include <kvattn/models/sampler.hpp>

#include "llama_reference.hpp"
#include "models.hpp"
#include "test_util.hpp"

#include <sstream>

using kvattn::Llama;
using kvattn::LlamaState;

namespace {

// Greedy generation with the cache: BOS (and a prompt) prefilled in one pass,
// then one step per token, for `positions` positions. Returns every token fed
// plus the last prediction, and the logits after every position.
struct Generation {
  std::vector<int> tokens;
  std::vector<kvattn::Vector<float>> logits;
};
Generation greedy(Llama<float>& model, std::vector<int> prompt, size_t positions) {
  LlamaState<float> state = model.make_state(long(positions));
  Generation run;
  run.tokens = prompt;
  const kvattn::RowMatrix<float> first = model.forward(prompt, state);
  for (Eigen::Index r = 0; r < first.rows(); ++r) run.logits.push_back(first.row(r).transpose());
  while (run.logits.size() < positions) {
    if (run.tokens.size() == run.logits.size()) {
      run.tokens.push_back(kvattn::Sampler::argmax<float>(run.logits.back()));
    }
    run.logits.push_back(model.step(run.tokens.back(), state));
  }
  run.tokens.push_back(kvattn::Sampler::argmax<float>(run.logits.back()));
  return run;
}

struct ModelCase {
  const char* file;
  size_t positions;
};
void PrintTo(const ModelCase& c, std::ostream* os) {
  *os << c.file << ", " << c.positions << " positions";
}

}  // namespace

class RealCheckpoint : public ::testing::TestWithParam<ModelCase> {};

// The decoder against the independent double-precision reference: logits of
// the first 32 positions within 1e-4, and the reference's greedy choice at
// every position equal to the token kvattn generated (at least 128 tokens).
TEST_P(RealCheckpoint, MatchesPlainReference) {
  KVATTN_REQUIRE_MODELS();
  const ModelCase mc = GetParam();
  Llama<float> model(kvattn::read_llama2c_checkpoint<float>(test::model_path(mc.file)));
  const Generation run = greedy(model, {1}, mc.positions);
  ASSERT_GE(run.tokens.size(), 129u);

  const reference::LlamaFile file = reference::read_llama(test::model_path(mc.file));
  const std::vector<int> fed(run.tokens.begin(), run.tokens.end() - 1);
  const auto ref = reference::llama_logits(file, fed);
  ASSERT_EQ(ref.size(), run.logits.size());
  double worst = 0;
  for (size_t t = 0; t < 32; ++t) {
    for (size_t i = 0; i < ref[t].size(); ++i) {
      worst = std::max(worst, std::abs(double(run.logits[t](Eigen::Index(i))) - ref[t][i]));
    }
  }
  EXPECT_LE(worst, 1e-4) << "largest logit difference over the first 32 positions";
  std::printf(
      "[ info     ] %s: largest |logit - reference| over 32 positions: %.3g; %zu greedy tokens "
      "compared\n",
      mc.file, worst, ref.size());
  for (size_t t = 0; t < ref.size(); ++t) {
    const size_t ref_choice =
        size_t(std::max_element(ref[t].begin(), ref[t].end()) - ref[t].begin());
    ASSERT_EQ(int(ref_choice), run.tokens[t + 1]) << "greedy tokens differ at position " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Shared, RealCheckpoint,
                         ::testing::Values(ModelCase{"aidreams260K.bin", 128},
                                           ModelCase{"stories260K.bin", 160}),
                         [](const auto& info) {
                           const std::string file = info.param.file;
                           return file.substr(0, file.find('.'));  // e.g. aidreams260K
                         });

// llama2.c's greedy output of aidreams260K.bin from BOS (shared/models/README.md).
TEST(RealCheckpointText, GreedyTextOfAidreams) {
  KVATTN_REQUIRE_MODELS();
  Llama<float> model(kvattn::read_llama2c_checkpoint<float>(test::model_path("aidreams260K.bin")));
  const kvattn::Tokenizer tok = kvattn::read_llama2c_tokenizer(test::model_path("tok512.bin"), 512);
  const Generation run = greedy(model, {1}, 40);
  const std::string text = tok.decode(run.tokens);
  const std::string expected =
      "\"Echoes of vectors unfold, a gentle hum of precision, as I sense the nodes";
  EXPECT_EQ(text.substr(0, expected.size()), expected) << text;
}

// A prompt prefilled in one batch, the same prompt stepped token by token,
// and recomputing the whole sequence without a cache give the same tokens.
TEST(RealCheckpointText, PrefillStepsAndNoCacheAgree) {
  KVATTN_REQUIRE_MODELS();
  for (const char* file : {"aidreams260K.bin", "stories260K.bin"}) {
    SCOPED_TRACE(file);
    Llama<float> model(kvattn::read_llama2c_checkpoint<float>(test::model_path(file)));
    const std::vector<int> prompt{1, 368, 430, 281, 269, 435, 447};
    const Generation batched = greedy(model, prompt, 64);

    LlamaState<float> state = model.make_state(64);
    std::vector<int> stepped{prompt[0]};
    kvattn::Vector<float> logits = model.step(prompt[0], state);
    for (size_t p = 1; p < 64; ++p) {
      stepped.push_back(p < prompt.size() ? prompt[p] : kvattn::Sampler::argmax<float>(logits));
      logits = model.step(stepped.back(), state);
      if (p < batched.logits.size()) {
        EXPECT_TRUE(test::close(logits, batched.logits[p], 1e-5)) << "position " << p;
      }
    }
    stepped.push_back(kvattn::Sampler::argmax<float>(logits));
    EXPECT_EQ(stepped, batched.tokens);

    std::vector<int> recomputed(prompt);
    while (recomputed.size() < 65) {
      LlamaState<float> fresh = model.make_state(64);
      const kvattn::RowMatrix<float> all = model.forward(recomputed, fresh);
      recomputed.push_back(kvattn::Sampler::argmax<float>(all.bottomRows(1).transpose()));
    }
    EXPECT_EQ(recomputed, batched.tokens);
  }
}

TEST(RealCheckpointText, BadTokensAndOverflowLeaveTheStateUntouched) {
  KVATTN_REQUIRE_MODELS();
  Llama<float> model(kvattn::read_llama2c_checkpoint<float>(test::model_path("stories260K.bin")));
  LlamaState<float> state = model.make_state(8);
  const kvattn::Vector<float> first = model.prefill({1, 400, 401}, state);
  const LlamaState<float> before = state.copy();
  test::expect_throw_with<std::invalid_argument>(
      [&] {
        model.prefill({5, 512}, state);
      },
      {"Llama::prefill: tokens[1] = 512", "vocab_size = 512"});
  test::expect_throw_with<std::invalid_argument>([&] { model.step(-1, state); },
                                                 {"Llama::step: tokens[0] = -1"});
  test::expect_throw_with<std::length_error>(
      [&] { model.forward(std::vector<int>(6, 7), state); },
      {"Llama::forward", "appending 6 tokens to 3 cached exceeds capacity = 8"});
  test::expect_throw_with<std::invalid_argument>([&] { model.prefill({}, state); },
                                                 {"tokens.size() = 0"});
  ASSERT_EQ(state.pos(), 3);
  for (Eigen::Index l = 0; l < model.config().n_layers; ++l) {
    for (Eigen::Index h = 0; h < model.config().n_kv_heads; ++h) {
      EXPECT_EQ(state.cache(l).keys(h), before.cache(l).keys(h));
      EXPECT_EQ(state.cache(l).values(h), before.cache(l).values(h));
    }
  }
  // Rolling back one token and feeding it again reproduces the logits.
  state.truncate(2);
  EXPECT_TRUE(test::close(model.step(401, state), first, 1e-5));
}

// A saved state restores exactly; a corrupt one changes nothing.
TEST(RealCheckpointText, StateSavesAndRestores) {
  KVATTN_REQUIRE_MODELS();
  Llama<float> model(kvattn::read_llama2c_checkpoint<float>(test::model_path("stories260K.bin")));
  LlamaState<float, Eigen::half> state = model.make_state<Eigen::half>(32);
  model.prefill({1, 400, 401, 402}, state);
  std::stringstream buffer;
  state.save(buffer);
  const std::string bytes = buffer.str();
  LlamaState<float, Eigen::half> other = model.make_state<Eigen::half>(32);
  model.prefill({1, 5}, other);
  std::string corrupt = bytes;
  corrupt[bytes.size() / 2] = char(corrupt[bytes.size() / 2] ^ 0x10);
  std::istringstream bad(corrupt);
  test::expect_throw_with<std::runtime_error>([&] { other.load(bad, "s.bin"); },
                                              {"s.bin layer", "checksum mismatch"});
  EXPECT_EQ(other.pos(), 2);
  std::istringstream good(bytes);
  other.load(good, "s.bin");
  ASSERT_EQ(other.pos(), 4);
  EXPECT_EQ(model.step(403, other), model.step(403, state));
}

TEST(LlamaErrors, WeightShapesAreChecked) {
  std::mt19937 rng(1);
  const kvattn::LlamaWeights<float> w = test::random_llama(8, 12, 1, 2, 1, 10, rng);
  EXPECT_NO_THROW(Llama<float>{w});
  auto bad = w;
  bad.layers[0].w2 = test::random_matrix<float>(12, 8, rng);
  test::expect_throw_with<std::invalid_argument>([&] { Llama<float>{bad}; },
                                                 {"Llama layer 0: w2 has shape 12x8", "= 8x12"});
  bad = w;
  bad.config.dim = 9;
  test::expect_throw_with<std::invalid_argument>([&] { Llama<float>{bad}; },
                                                 {"dim = 9 is not a multiple of n_heads = 2"});
  bad = w;
  bad.classifier = test::random_matrix<float>(9, 8, rng);
  test::expect_throw_with<std::invalid_argument>([&] { Llama<float>{bad}; },
                                                 {"classifier has shape 9x8"});
}

// A state that holds no tokens saves and restores for every cache storage
// type, replacing a longer state; the restored state then runs exactly like
// a fresh one (bitwise: same operations on the same inputs).
template <class S>
class EmptyLlamaState : public ::testing::Test {};
using CacheStorageTypes = ::testing::Types<float, Eigen::bfloat16, Eigen::half, std::int8_t>;
TYPED_TEST_SUITE(EmptyLlamaState, CacheStorageTypes);

TYPED_TEST(EmptyLlamaState, SavesAndRestores) {
  using S = TypeParam;
  std::mt19937 rng(5);
  Llama<float> model(test::random_llama(16, 24, 2, 4, 2, 11, rng));
  const LlamaState<float, S> empty = model.template make_state<S>(8);
  std::stringstream buffer;
  empty.save(buffer);
  LlamaState<float, S> target = model.template make_state<S>(8);
  model.prefill({1, 3, 4}, target);
  target.load(buffer, "empty.bin");
  EXPECT_EQ(target.pos(), 0);
  LlamaState<float, S> fresh = model.template make_state<S>(8);
  EXPECT_EQ(model.prefill({1, 7}, target), model.prefill({1, 7}, fresh));
}
