#include <kvattn/io/llama2c.hpp>

#include "models.hpp"
#include "test_util.hpp"

#include <cstdio>
#include <fstream>
#include <iterator>

namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A file in a fresh temporary folder, removed with the fixture.
class TempFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("kvattn_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& bytes) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
    return path;
  }
  std::filesystem::path dir_;
};

std::string header(std::initializer_list<int32_t> fields) {
  std::string s;
  for (int32_t f : fields) s.append(reinterpret_cast<const char*>(&f), 4);
  return s;
}

// A small valid checkpoint written here: dim 8, hidden 12, 2 layers, 2 heads,
// 1 KV head, vocab 5 (negative: own classifier), seq_len 4. Every float is its
// own index, so the test can tell where each array landed.
std::string tiny_checkpoint(int32_t vocab_field = -5) {
  const int dim = 8, hidden = 12, L = 2, hs = 4, kv = 4, vocab = 5, seq = 4;
  const long floats = vocab * dim + L * dim + L * dim * dim * 2 + L * kv * dim * 2 + L * dim +
                      L * hidden * dim * 3 + dim + seq * hs + (vocab_field < 0 ? vocab * dim : 0);
  std::string s = header({dim, hidden, L, 2, 1, vocab_field, seq});
  for (long i = 0; i < floats; ++i) {
    const float f = float(i);
    s.append(reinterpret_cast<const char*>(&f), 4);
  }
  return s;
}

}  // namespace

TEST(Llama2cReader, SharedCheckpointsLoadWithTheirConfigs) {
  KVATTN_REQUIRE_MODELS();
  const auto a = kvattn::read_llama2c_checkpoint<float>(test::model_path("aidreams260K.bin"));
  EXPECT_EQ(a.config.dim, 64);
  EXPECT_EQ(a.config.hidden_dim, 172);
  EXPECT_EQ(a.config.n_layers, 4);
  EXPECT_EQ(a.config.n_heads, 4);
  EXPECT_EQ(a.config.n_kv_heads, 4);
  EXPECT_EQ(a.config.vocab_size, 512);
  EXPECT_EQ(a.config.seq_len, 128);
  EXPECT_EQ(a.classifier.size(), 0);  // shared with the embedding, not copied
  const auto s = kvattn::read_llama2c_checkpoint<double>(test::model_path("stories260K.bin"));
  EXPECT_EQ(s.config.n_layers, 5);
  EXPECT_EQ(s.config.n_heads, 8);
  EXPECT_EQ(s.config.n_kv_heads, 4);
  EXPECT_EQ(s.config.seq_len, 512);
  EXPECT_EQ(s.layers.size(), 5u);
  EXPECT_EQ(s.layers[4].attention.wk.rows(), 32);
  // The first float after the header is embedding(0, 0).
  const std::string bytes = read_all(test::model_path("stories260K.bin"));
  float first = 0;
  std::memcpy(&first, bytes.data() + 28, 4);
  EXPECT_EQ(s.token_embedding(0, 0), double(first));
}

TEST_F(TempFiles, ArraysLandInTheirPlaces) {
  const auto w = kvattn::read_llama2c_checkpoint<float>(write("tiny.bin", tiny_checkpoint()));
  // Offsets, counting floats: embedding 0..39, attention norms 40..55,
  // wq 56..183, wk 184..247, wv 248..311, wo 312..439, ffn norms 440..455,
  // w1 456..647, w2 648..839, w3 840..1031, final norm 1032..1039,
  // RoPE tables 1040..1055 (skipped), classifier 1056..1095.
  EXPECT_EQ(w.token_embedding(4, 7), 39.0f);
  EXPECT_EQ(w.layers[1].attention_norm(0), 48.0f);
  EXPECT_EQ(w.layers[0].attention.wq(0, 1), 57.0f);
  EXPECT_EQ(w.layers[1].attention.wq(7, 7), 183.0f);
  EXPECT_EQ(w.layers[0].attention.wk(1, 0), 192.0f);
  EXPECT_EQ(w.layers[1].attention.wv(0, 0), 280.0f);
  EXPECT_EQ(w.layers[0].attention.wo(0, 0), 312.0f);
  EXPECT_EQ(w.layers[1].ffn_norm(7), 455.0f);
  EXPECT_EQ(w.layers[0].w1(11, 7), 551.0f);
  EXPECT_EQ(w.layers[1].w2(0, 0), 744.0f);
  EXPECT_EQ(w.layers[1].w3(11, 7), 1031.0f);
  EXPECT_EQ(w.final_norm(0), 1032.0f);
  ASSERT_EQ(w.classifier.rows(), 5);
  EXPECT_EQ(w.classifier(0, 0), 1056.0f);
  EXPECT_EQ(w.classifier(4, 7), 1095.0f);
  EXPECT_EQ(w.layers[0].attention.bq.size(), 0);
}

TEST_F(TempFiles, CorruptCheckpointsAreRejectedWithTheirProblem) {
  using E = std::runtime_error;
  const std::string good = tiny_checkpoint();
  const std::string missing = (dir_ / "missing.bin").string();
  test::expect_throw_with<E>([&] { kvattn::read_llama2c_checkpoint<float>(missing); },
                             {missing, "no such file"});
  test::expect_throw_with<E>([&] { kvattn::read_llama2c_checkpoint<float>(dir_.string()); },
                             {"not a regular file"});
  const std::string empty = write("empty.bin", "");
  test::expect_throw_with<E>([&] { kvattn::read_llama2c_checkpoint<float>(empty); },
                             {empty, "0 bytes, too short"});
  const std::string truncated = write("truncated.bin", good.substr(0, good.size() - 1));
  test::expect_throw_with<E>([&] { kvattn::read_llama2c_checkpoint<float>(truncated); },
                             {truncated, "file is 4411 bytes", "implies 4412 bytes"});
  const std::string half = write("half.bin", good.substr(0, good.size() / 2));
  test::expect_throw_with<E>([&] { kvattn::read_llama2c_checkpoint<float>(half); },
                             {"implies 4412 bytes"});
  const std::string longer = write("longer.bin", good + "xxxx");
  test::expect_throw_with<E>([&] { kvattn::read_llama2c_checkpoint<float>(longer); },
                             {"file is 4416 bytes"});
  const std::string zeros = write("zeros.bin", std::string(4412, '\0'));
  test::expect_throw_with<E>([&] { kvattn::read_llama2c_checkpoint<float>(zeros); },
                             {zeros, "header field dim = 0"});
  const std::string gqa =
      write("gqa.bin", header({8, 12, 2, 3, 2, 5, 4}) + std::string(4000, '\0'));
  test::expect_throw_with<E>([&] { kvattn::read_llama2c_checkpoint<float>(gqa); },
                             {"n_heads = 3 is not a multiple of n_kv_heads = 2"});
  const std::string huge = write("huge.bin", header({1 << 30, 12, 2, 2, 1, 5, 4}));
  test::expect_throw_with<E>([&] { kvattn::read_llama2c_checkpoint<float>(huge); },
                             {"header field dim = 1073741824 is not in [1, 65536]"});
  // Plausible fields whose arrays would need terabytes: rejected by size, nothing allocated.
  const std::string big = write("big.bin", header({65536, 262144, 1024, 1024, 1024, 5, 4}));
  test::expect_throw_with<E>([&] { kvattn::read_llama2c_checkpoint<float>(big); },
                             {"file is 28 bytes"});
  std::mt19937 rng(3);
  std::string garbage(5000, '\0');
  for (char& c : garbage) c = char(rng());
  const std::string noise = write("noise.bin", garbage);
  EXPECT_THROW(kvattn::read_llama2c_checkpoint<float>(noise), E);
  const std::string odd = write("odd.bin", header({6, 12, 2, 2, 1, 5, 4}));
  test::expect_throw_with<E>([&] { kvattn::read_llama2c_checkpoint<float>(odd); },
                             {"dim = 6 is not n_heads = 2 times an even head size"});
  if (test::have_models()) {  // a tokenizer is not a checkpoint
    const std::string tok = test::model_path("tok512.bin");
    EXPECT_THROW(kvattn::read_llama2c_checkpoint<float>(tok), E);
  }
}

TEST(Llama2cTokenizer, SharedTokenizerLoads) {
  KVATTN_REQUIRE_MODELS();
  const kvattn::Tokenizer tok = kvattn::read_llama2c_tokenizer(test::model_path("tok512.bin"), 512);
  EXPECT_EQ(tok.vocab_size(), 512);
  EXPECT_EQ(tok.piece(0), "<unk>");
  EXPECT_EQ(tok.piece(3), "<0x00>");
  EXPECT_EQ(tok.piece(259), "in");
  EXPECT_EQ(tok.score(260), -1.0f);
}

TEST_F(TempFiles, CorruptTokenizersAreRejected) {
  using E = std::runtime_error;
  // A valid 259-token file: max length 6, then <unk>, <s>, </s>, and the 256 byte pieces.
  auto entry = [](float score, const std::string& piece) {
    std::string s(reinterpret_cast<const char*>(&score), 4);
    const int32_t len = int32_t(piece.size());
    s.append(reinterpret_cast<const char*>(&len), 4);
    return s + piece;
  };
  std::string good = header({6}) + entry(0, "<unk>") + entry(0, "<s>") + entry(0, "</s>");
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    good += entry(0, name);
  }
  EXPECT_EQ(kvattn::read_llama2c_tokenizer(write("good.bin", good), 259).vocab_size(), 259);
  const std::string path = write("t.bin", good);
  test::expect_throw_with<E>([&] { kvattn::read_llama2c_tokenizer(path, 258); },
                             {path, "bytes after its 258 tokens"});
  test::expect_throw_with<E>([&] { kvattn::read_llama2c_tokenizer(path, 4000); },
                             {"too short for 4000 tokens"});
  const std::string cut = write("cut.bin", good.substr(0, good.size() - 3));
  test::expect_throw_with<E>([&] { kvattn::read_llama2c_tokenizer(cut, 259); },
                             {cut, "token 258 has length 6"});
  const std::string bad_max = write("max.bin", header({-1}) + good.substr(4));
  test::expect_throw_with<E>([&] { kvattn::read_llama2c_tokenizer(bad_max, 259); },
                             {"max_token_length = -1"});
  std::string long_piece = good;
  const int32_t huge = 1 << 30;
  std::memcpy(&long_piece[4 + 4], &huge, 4);  // length of token 0
  const std::string lp = write("lp.bin", long_piece);
  test::expect_throw_with<E>([&] { kvattn::read_llama2c_tokenizer(lp, 259); },
                             {"token 0 has length 1073741824"});
  const std::string small = write("small.bin", header({6}) + entry(0, "a") + entry(0, "b"));
  test::expect_throw_with<E>([&] { kvattn::read_llama2c_tokenizer(small, 2); },
                             {small, "pieces.size() = 2"});
  const std::string nothing = write("nothing.bin", "ab");
  test::expect_throw_with<E>([&] { kvattn::read_llama2c_tokenizer(nothing, 259); },
                             {"too short for a tokenizer"});
}
