// ggml's block formats, dequantized by the plain twins: hand-computed
// blocks of every supported type, worked on paper in the comments.
#include "gguf_writer.hpp"
// ---------------------------------------------------------------------------
// Block formats, worked on paper

namespace {

std::vector<float> dequantize(uint32_t type, const std::string& bytes, int64_t n) {
  std::vector<float> x(static_cast<size_t>(n));
  kvattn::dequantize_row(type, reinterpret_cast<const unsigned char*>(bytes.data()), n, x.data());
  return x;
}

std::string fp16(uint16_t bits) {
  std::string s;
  put<uint16_t>(s, bits);
  return s;
}

// 16 code bytes: byte i holds i in its low nibble and 15 - i in its high nibble.
std::string codes_up_and_down() {
  std::string s;
  for (int i = 0; i < 16; ++i) s += char(i | ((15 - i) << 4));
  return s;
}

}  // namespace

TEST(GgmlQuants, TypeIdsAndBlockLayouts) {
  struct Layout {
    uint32_t type;
    uint32_t id;
    const char* name;
    int64_t block;
    uint64_t bytes;
  };
  const Layout layouts[] = {
      {ggml::F32, 0, "F32", 1, 4},     {ggml::F16, 1, "F16", 1, 2},
      {ggml::Q4_0, 2, "Q4_0", 32, 18}, {ggml::Q4_1, 3, "Q4_1", 32, 20},
      {ggml::Q5_0, 6, "Q5_0", 32, 22}, {ggml::Q5_1, 7, "Q5_1", 32, 24},
      {ggml::Q8_0, 8, "Q8_0", 32, 34}, {ggml::IQ4_NL, 20, "IQ4_NL", 32, 18},
      {ggml::BF16, 30, "BF16", 1, 2},
  };
  for (const Layout& l : layouts) {
    SCOPED_TRACE(l.name);
    EXPECT_EQ(l.type, l.id);
    const kvattn::GgmlTypeInfo* info = kvattn::ggml_type_info(l.type);
    ASSERT_NE(info, nullptr);
    EXPECT_STREQ(info->name, l.name);
    EXPECT_STREQ(kvattn::ggml_type_name(l.type), l.name);
    EXPECT_EQ(info->block, l.block);
    EXPECT_EQ(info->block_bytes, l.bytes);
    EXPECT_EQ(kvattn::ggml_row_bytes(l.type, 64), uint64_t(64 / l.block) * l.bytes);
  }
  EXPECT_EQ(kvattn::ggml_type_info(12), nullptr);
  EXPECT_STREQ(kvattn::ggml_type_name(12), "Q4_K");
  EXPECT_EQ(kvattn::ggml_type_name(4), nullptr);  // Q4_2, removed from ggml
  EXPECT_EQ(kvattn::ggml_type_name(1000), nullptr);
  test::expect_throw_with<std::invalid_argument>(
      [] { kvattn::ggml_row_bytes(ggml::Q4_0, 48); },
      {"ggml_row_bytes: n = 48, expected a multiple of the Q4_0 block size 32"});
}

TEST(GgmlQuants, Q8_0) {
  // Block 0: d = 0.5 (fp16 0x3800); q[j] = 8j - 128 for j < 31, q[31] = 127:
  //   x[0] = 0.5 * -128 = -64, x[1] = 0.5 * -120 = -60, ..., x[30] = 0.5 * 112 = 56,
  //   x[31] = 0.5 * 127 = 63.5.
  // Block 1: d = -1 (0xBC00), every q = 3: x = -3.
  std::string b = fp16(0x3800);
  for (int j = 0; j < 31; ++j) b += char(8 * j - 128);
  b += char(127);
  b += fp16(0xBC00) + std::string(32, char(3));
  const std::vector<float> x = dequantize(ggml::Q8_0, b, 64);
  EXPECT_EQ(x[0], -64.0f);
  EXPECT_EQ(x[1], -60.0f);
  EXPECT_EQ(x[30], 56.0f);
  EXPECT_EQ(x[31], 63.5f);
  for (int j = 0; j < 31; ++j) EXPECT_EQ(x[size_t(j)], 4.0f * float(j) - 64.0f) << j;
  for (int j = 32; j < 64; ++j) EXPECT_EQ(x[size_t(j)], -3.0f) << j;
}

TEST(GgmlQuants, Q4_0PairsEachElementWithTheOneHalfABlockAway) {
  // d = 2 (fp16 0x4000); code byte i = i | (15 - i) << 4. Its low nibble is element i and its
  // high nibble element i + 16 (not element 2i + 1):
  //   byte 0 = 0xF0: x[0] = 2 * (0 - 8) = -16,  x[16] = 2 * (15 - 8) = 14;
  //   byte 1 = 0xE1: x[1] = 2 * (1 - 8) = -14,  x[17] = 2 * (14 - 8) = 12;
  //   byte 15 = 0x0F: x[15] = 2 * (15 - 8) = 14, x[31] = 2 * (0 - 8) = -16;
  //   in general x[i] = 2i - 16 and x[i + 16] = 14 - 2i.
  const std::vector<float> x = dequantize(ggml::Q4_0, fp16(0x4000) + codes_up_and_down(), 32);
  EXPECT_EQ(x[0], -16.0f);
  EXPECT_EQ(x[16], 14.0f);
  EXPECT_EQ(x[1], -14.0f);
  EXPECT_EQ(x[17], 12.0f);
  EXPECT_EQ(x[15], 14.0f);
  EXPECT_EQ(x[31], -16.0f);
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(x[size_t(i)], 2.0f * float(i) - 16.0f) << i;
    EXPECT_EQ(x[size_t(i + 16)], 14.0f - 2.0f * float(i)) << i + 16;
  }
}

TEST(GgmlQuants, Q4_1) {
  // d = 0.5 (0x3800), m = -1 (0xBC00), the same codes: x[i] = 0.5 i - 1 and
  // x[i + 16] = 0.5 (15 - i) - 1 = 6.5 - 0.5 i; x[0] = -1, x[15] = 6.5, x[16] = 6.5, x[31] = -1.
  const std::vector<float> x =
      dequantize(ggml::Q4_1, fp16(0x3800) + fp16(0xBC00) + codes_up_and_down(), 32);
  EXPECT_EQ(x[0], -1.0f);
  EXPECT_EQ(x[15], 6.5f);
  EXPECT_EQ(x[16], 6.5f);
  EXPECT_EQ(x[31], -1.0f);
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(x[size_t(i)], 0.5f * float(i) - 1.0f) << i;
    EXPECT_EQ(x[size_t(i + 16)], 6.5f - 0.5f * float(i)) << i + 16;
  }
}

// qh = 0x80010003 (bytes 03 00 01 80): the fifth bit is set for elements 0, 1 (bits 0, 1 go with
// the low nibbles), 16 and 31 (bits 16..31 go with the high nibbles).
constexpr uint32_t kQh = 0x80010003u;

TEST(GgmlQuants, Q5_0) {
  // d = 0.25 (0x3400), the codes above, x[j] = 0.25 (c[j] + 16 h[j] - 16):
  //   x[0]  = 0.25 (0 + 16 - 16) = 0      x[16] = 0.25 (15 + 16 - 16) = 3.75
  //   x[1]  = 0.25 (1 + 16 - 16) = 0.25   x[17] = 0.25 (14 - 16) = -0.5
  //   x[2]  = 0.25 (2 - 16) = -3.5        x[30] = 0.25 (1 - 16) = -3.75
  //   x[15] = 0.25 (15 - 16) = -0.25      x[31] = 0.25 (0 + 16 - 16) = 0
  std::string b = fp16(0x3400);
  put<uint32_t>(b, kQh);
  const std::vector<float> x = dequantize(ggml::Q5_0, b + codes_up_and_down(), 32);
  const std::vector<std::pair<int, float>> worked = {{0, 0.0f},    {1, 0.25f},  {2, -3.5f},
                                                     {15, -0.25f}, {16, 3.75f}, {17, -0.5f},
                                                     {30, -3.75f}, {31, 0.0f}};
  for (const auto& [j, v] : worked) EXPECT_EQ(x[size_t(j)], v) << j;
  for (int i = 0; i < 16; ++i) {
    const int h_low = int((kQh >> i) & 1u), h_high = int((kQh >> (i + 16)) & 1u);
    EXPECT_EQ(x[size_t(i)], 0.25f * float(i + 16 * h_low - 16)) << i;
    EXPECT_EQ(x[size_t(i + 16)], 0.25f * float(15 - i + 16 * h_high - 16)) << i + 16;
  }
}

TEST(GgmlQuants, Q5_1) {
  // d = 0.5 (0x3800), m = 1 (0x3C00), the same qh and codes, x[j] = 0.5 (c[j] + 16 h[j]) + 1:
  //   x[0]  = 0.5 * 16 + 1 = 9     x[16] = 0.5 * 31 + 1 = 16.5
  //   x[1]  = 0.5 * 17 + 1 = 9.5   x[17] = 0.5 * 14 + 1 = 8
  //   x[2]  = 0.5 * 2 + 1 = 2      x[30] = 0.5 * 1 + 1 = 1.5
  //   x[15] = 0.5 * 15 + 1 = 8.5   x[31] = 0.5 * 16 + 1 = 9
  std::string b = fp16(0x3800) + fp16(0x3C00);
  put<uint32_t>(b, kQh);
  const std::vector<float> x = dequantize(ggml::Q5_1, b + codes_up_and_down(), 32);
  const std::vector<std::pair<int, float>> worked = {
      {0, 9.0f}, {1, 9.5f}, {2, 2.0f}, {15, 8.5f}, {16, 16.5f}, {17, 8.0f}, {30, 1.5f}, {31, 9.0f}};
  for (const auto& [j, v] : worked) EXPECT_EQ(x[size_t(j)], v) << j;
  for (int i = 0; i < 16; ++i) {
    const int h_low = int((kQh >> i) & 1u), h_high = int((kQh >> (i + 16)) & 1u);
    EXPECT_EQ(x[size_t(i)], 0.5f * float(i + 16 * h_low) + 1.0f) << i;
    EXPECT_EQ(x[size_t(i + 16)], 0.5f * float(15 - i + 16 * h_high) + 1.0f) << i + 16;
  }
}

TEST(GgmlQuants, Iq4NlLooksCodesUpInItsTable) {
  // The 16 levels, as published with the format.
  const int levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  for (int k = 0; k < 16; ++k) EXPECT_EQ(int(kvattn::kIq4nlValues[k]), levels[k]) << k;
  // d = 0.5 (0x3800), the codes above: x[i] = 0.5 levels[i], x[i + 16] = 0.5 levels[15 - i]:
  //   x[0] = -63.5, x[7] = -5, x[8] = 0.5, x[15] = 56.5, x[16] = 56.5, x[31] = -63.5.
  const std::vector<float> x = dequantize(ggml::IQ4_NL, fp16(0x3800) + codes_up_and_down(), 32);
  EXPECT_EQ(x[0], -63.5f);
  EXPECT_EQ(x[7], -5.0f);
  EXPECT_EQ(x[8], 0.5f);
  EXPECT_EQ(x[15], 56.5f);
  EXPECT_EQ(x[16], 56.5f);
  EXPECT_EQ(x[31], -63.5f);
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(x[size_t(i)], 0.5f * float(levels[i])) << i;
    EXPECT_EQ(x[size_t(i + 16)], 0.5f * float(levels[15 - i])) << i + 16;
  }
}

TEST(GgmlQuants, F16Bf16AndF32) {
  // fp16: sign, 5 exponent bits (bias 15), 10 mantissa bits.
  //   0x3C00 = 1; 0xC000 = -2; 0x3555 = (1 + 341/1024) / 4 = 1365/4096 = 0.333251953125;
  //   0x7BFF = (2 - 2^-10) 2^15 = 65504 (the largest); 0x0400 = 2^-14 (the smallest normal);
  //   0x03FF = 1023 * 2^-24 (the largest subnormal); 0x0001 = 2^-24; 0x8000 = -0;
  //   0x7C00 = inf; 0xFC00 = -inf; 0x7E00 = NaN.
  const std::vector<uint16_t> halves = {0x3C00, 0xC000, 0x3555, 0x7BFF, 0x0400, 0x03FF,
                                        0x0001, 0x8000, 0x7C00, 0xFC00, 0x7E00};
  std::string b;
  for (uint16_t h : halves) put<uint16_t>(b, h);
  const std::vector<float> x = dequantize(ggml::F16, b, int64_t(halves.size()));
  EXPECT_EQ(x[0], 1.0f);
  EXPECT_EQ(x[1], -2.0f);
  EXPECT_EQ(x[2], 0.333251953125f);
  EXPECT_EQ(x[3], 65504.0f);
  EXPECT_EQ(x[4], std::ldexp(1.0f, -14));
  EXPECT_EQ(x[5], std::ldexp(1023.0f, -24));
  EXPECT_EQ(x[6], std::ldexp(1.0f, -24));
  EXPECT_EQ(x[7], 0.0f);
  EXPECT_TRUE(std::signbit(x[7]));
  EXPECT_EQ(x[8], std::numeric_limits<float>::infinity());
  EXPECT_EQ(x[9], -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(x[10]));
  // bf16: the upper half of a float32. 0x3F80 = 1; 0xC0A0 = -5; 0x4049 = 3.140625 (pi cut to
  // 8 mantissa bits); 0x7F80 = inf; 0x0000 = 0.
  std::string c;
  for (uint16_t h : {0x3F80, 0xC0A0, 0x4049, 0x7F80, 0x0000}) put<uint16_t>(c, h);
  const std::vector<float> y = dequantize(ggml::BF16, c, 5);
  EXPECT_EQ(y, (std::vector<float>{1.0f, -5.0f, 3.140625f, std::numeric_limits<float>::infinity(),
                                   0.0f}));
  std::string d;
  put<float>(d, 1.5f);
  put<float>(d, -0.25f);
  EXPECT_EQ(dequantize(ggml::F32, d, 2), (std::vector<float>{1.5f, -0.25f}));
}

TEST(GgmlQuants, DequantizeRowRejectsWhatItCannotDo) {
  using E = std::invalid_argument;
  test::expect_throw_with<E>([] { dequantize(ggml::Q8_0, std::string(68, '\0'), 33); },
                             {"dequantize_row: n = 33, expected a multiple of the Q8_0 block "
                              "size 32"});
  test::expect_throw_with<E>([] { dequantize(12, std::string(144, '\0'), 256); },
                             {"dequantize_row: ggml type 12 (Q4_K) is not supported"});
  test::expect_throw_with<E>([] { dequantize(77, std::string(4, '\0'), 1); },
                             {"ggml type 77 (unknown)"});
}
