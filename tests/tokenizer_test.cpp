#include <kvattn/io/llama2c.hpp>
#include <kvattn/models/tokenizer.hpp>

#include "models.hpp"
#include "test_util.hpp"

using kvattn::Tokenizer;

namespace {

// 256 byte pieces after the three specials, then the given pieces.
Tokenizer small_tokenizer(std::vector<std::pair<std::string, float>> extra) {
  std::vector<std::string> pieces{"<unk>", "<s>", "</s>"};
  std::vector<float> scores(3, 0.0f);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    pieces.push_back(name);
    scores.push_back(0.0f);
  }
  for (auto& [p, s] : extra) {
    pieces.push_back(p);
    scores.push_back(s);
  }
  return Tokenizer(pieces, scores);
}

}  // namespace

// Pieces 259.. : " " (259), "a" (260), "b" (261), "ab" (262, score 1),
// " a" (263, score 2), " ab" (264, score 0.5).
// encode("ab"): " ab" -> chars ' ', 'a', 'b' = 259 260 261.
//   Candidate merges: " a" (score 2) and "ab" (score 1): take " a" -> 263 261.
//   Then " a"+"b" = " ab" (264, score 0.5) -> 264. No pair left.
TEST(Tokenizer, HandComputedMerges) {
  const Tokenizer tok =
      small_tokenizer({{" ", 0}, {"a", 0}, {"b", 0}, {"ab", 1}, {" a", 2}, {" ab", 0.5f}});
  EXPECT_EQ(tok.encode("ab"), (std::vector<int>{1, 264}));
  EXPECT_EQ(tok.encode("ab", false), (std::vector<int>{264}));
  // "ba": ' ', 'b', 'a'; no pair " b" or "ba": only nothing merges -> 259 261 260.
  EXPECT_EQ(tok.encode("ba"), (std::vector<int>{1, 259, 261, 260}));
  // 'c' has no piece: byte fallback id = 'c' + 3 = 102.
  EXPECT_EQ(tok.encode("c"), (std::vector<int>{1, 259, 'c' + 3}));
  EXPECT_EQ(tok.encode(""), (std::vector<int>{1}));
  // Decoding: after BOS the leading space goes; <0xNN> is a raw byte.
  EXPECT_EQ(tok.decode(1, 264), "ab");
  EXPECT_EQ(tok.decode(264, 264), " ab");
  EXPECT_EQ(tok.decode(260, 'c' + 3), "c");
  EXPECT_EQ(tok.decode(std::vector<int>{1, 264, 259, 102}), "ab c");
}

TEST(Tokenizer, SharedTokenizerEncodesThePrompt) {
  KVATTN_REQUIRE_MODELS();
  const Tokenizer tok = kvattn::read_llama2c_tokenizer(test::model_path("tok512.bin"), 512);
  EXPECT_EQ(tok.encode("The dream"), (std::vector<int>{1, 368, 430, 281, 269, 435, 447}));
}

TEST(Tokenizer, DecodeOfEncodeRoundTrips) {
  KVATTN_REQUIRE_MODELS();
  const Tokenizer tok = kvattn::read_llama2c_tokenizer(test::model_path("tok512.bin"), 512);
  for (const std::string s :
       {"The dream", "Echoes of vectors unfold, a gentle hum.", "  two leading spaces",
        "tabs\tand\nnewlines\n", "na\xc3\xafve caf\xc3\xa9", "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
        "emoji \xf0\x9f\x99\x82!", "control \x01\x7f bytes", "lone continuation \x80\xbf",
        "<0x41> is not a byte when typed", "1234567890 {}[]()<>"}) {
    const std::vector<int> ids = tok.encode(s);
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(ids[0], Tokenizer::kBos);
    for (int id : ids) EXPECT_TRUE(id >= 0 && id < 512);
    EXPECT_EQ(tok.decode(ids), s);
  }
  // Bytes outside the vocabulary take byte pieces: U+1F642 is 4 bytes, none a piece.
  const std::vector<int> ids = tok.encode("\xf0\x9f\x99\x82", false);
  EXPECT_NE(std::find(ids.begin(), ids.end(), 0xf0 + 3), ids.end());
}

TEST(Tokenizer, RejectsBadInput) {
  test::expect_throw_with<std::invalid_argument>(
      [] {
        Tokenizer({"a", "b"}, {0.0f});
      },
      {"Tokenizer: scores has 1 elements", "= 2"});
  const Tokenizer tok = small_tokenizer({});
  test::expect_throw_with<std::invalid_argument>([&] { (void)tok.decode(1, 259); },
                                                 {"Tokenizer::decode: token = 259"});
}
