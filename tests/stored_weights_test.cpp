// Weights kept as stored (Weight = kvattn::Stored): StoredMatrix's encodings
// on hand-worked blocks, its bands and views, the products against a double
// product of the dequantized weights, Llama<float, Stored> against the
// dense models (the shared GGUF files against the double reference:
// stored_gguf_test.cpp).
#include <kvattn/io/model_file.hpp>
#include <kvattn/models/llama.hpp>
#include <kvattn/ops/stored_linear.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "models.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

using kvattn::RowMatrix;
using kvattn::StoredMatrix;
namespace ggml = kvattn::ggml;

RowMatrix<float> random_matrix(Eigen::Index rows, Eigen::Index cols, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  RowMatrix<float> m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = u(rng);
  return m;
}

uint16_t le16(const unsigned char* p) { return uint16_t(p[0] | (p[1] << 8)); }

TEST(StoredMatrix, Q8_0OfAHandWorkedRow) {
  // x_j = 0.5 k_j with integer k_j in [-127, 127] and max |k| = 127: d = 63.5 / 127
  // = 0.5 exactly (fp16 0x3800), the codes are the k_j, and they decode exactly.
  RowMatrix<float> x(1, 32);
  for (int j = 0; j < 32; ++j) x(0, j) = 0.5f * float(j == 5 ? -127 : (j * 7) % 255 - 127);
  const StoredMatrix s = StoredMatrix::encode(x, ggml::Q8_0);
  ASSERT_EQ(s.bands().size(), 1u);
  const unsigned char* b = s.bands()[0].data;
  EXPECT_EQ(s.bytes(), 34);
  EXPECT_EQ(le16(b), 0x3800);
  for (int j = 0; j < 32; ++j) {
    EXPECT_EQ(int(int8_t(b[2 + j])), int(2 * x(0, j))) << j;
  }
  EXPECT_EQ(s.dense(), x);
}

TEST(StoredMatrix, Q4_0OfAHandWorkedRow) {
  // x_j = 0.25 (c_j - 8) with c_0 = 0: the value of largest magnitude is -2, so
  // d = -2 / -8 = 0.25 (fp16 0x3400) and the codes are the c_j; byte i holds c_i
  // low and c_{i+16} high.
  int c[32];
  for (int j = 0; j < 32; ++j) c[j] = j == 0 ? 0 : (j * 5 + 3) % 16;
  RowMatrix<float> x(1, 32);
  for (int j = 0; j < 32; ++j) x(0, j) = 0.25f * float(c[j] - 8);
  const StoredMatrix s = StoredMatrix::encode(x, ggml::Q4_0);
  const unsigned char* b = s.bands()[0].data;
  EXPECT_EQ(s.bytes(), 18);
  EXPECT_EQ(le16(b), 0x3400);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(int(b[2 + i]), c[i] | (c[i + 16] << 4)) << i;
  EXPECT_EQ(s.dense(), x);
}

TEST(StoredMatrix, F16AndBf16RoundToNearestEven) {
  RowMatrix<float> x(1, 3);
  // 1 + 2^-11 lies halfway between fp16 1 and 1 + 2^-10: even is 1 (0x3C00);
  // 1 + 3 * 2^-11 halfway between 1 + 2^-10 and 1 + 2^-9: even is 0x3C02.
  x << 1.0f + std::ldexp(1.0f, -11), 1.0f + 3 * std::ldexp(1.0f, -11), -2.0f;
  const StoredMatrix h = StoredMatrix::encode(x, ggml::F16);
  EXPECT_EQ(le16(h.bands()[0].data), 0x3C00);
  EXPECT_EQ(le16(h.bands()[0].data + 2), 0x3C02);
  EXPECT_EQ(le16(h.bands()[0].data + 4), 0xC000);
  const StoredMatrix b = StoredMatrix::encode(x, ggml::BF16);
  EXPECT_EQ(le16(b.bands()[0].data), 0x3F80);  // 1 + 2^-11 is far under bf16's half step
  EXPECT_EQ(le16(b.bands()[0].data + 4), 0xC000);
}

TEST(StoredMatrix, F16SaturatesLikeTheDenseHalfWeights) {
  RowMatrix<float> x(1, 2);
  x << 1e6f, -70000.0f;  // beyond fp16's largest finite value, 65504 (0x7BFF)
  const StoredMatrix h = StoredMatrix::encode(x, ggml::F16);
  EXPECT_EQ(le16(h.bands()[0].data), 0x7BFF);
  EXPECT_EQ(le16(h.bands()[0].data + 2), 0xFBFF);
}

TEST(StoredMatrix, MisalignedF32BytesAreCopied) {
  alignas(4) unsigned char bytes[4 * 8 + 1] = {};
  const float v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  std::memcpy(bytes + 1, v, sizeof v);
  const StoredMatrix s = StoredMatrix::view(ggml::F32, 2, 4, bytes + 1, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(s.bands()[0].data) % 4, 0u);
  for (int j = 0; j < 8; ++j) EXPECT_EQ(s.dense()(j / 4, j % 4), v[j]);
}

TEST(StoredMatrix, StacksAndSlicesBandsWithoutCopies) {
  const RowMatrix<float> a = random_matrix(3, 64, 1), q = random_matrix(5, 64, 2);
  const StoredMatrix sa = StoredMatrix::encode(a, ggml::F16);
  const StoredMatrix sq = StoredMatrix::encode(q, ggml::Q8_0);
  const StoredMatrix s = StoredMatrix::stack({&sa, &sq});
  ASSERT_EQ(s.rows(), 8);
  ASSERT_EQ(s.bands().size(), 2u);
  EXPECT_EQ(s.bands()[0].data, sa.bands()[0].data);  // a view, not a copy
  EXPECT_EQ(s.bands()[1].first, 3);
  RowMatrix<float> want(8, 64);
  want << sa.dense(), sq.dense();
  EXPECT_EQ(s.dense(), want);
  const StoredMatrix mid = s.middle_rows(2, 3);  // the last row of a, two of q
  ASSERT_EQ(mid.bands().size(), 2u);
  EXPECT_EQ(mid.dense(), want.middleRows(2, 3));
  EXPECT_EQ(mid.bytes(), 64 * 2 + 2 * 2 * 34);
}

TEST(StoredMatrix, RejectsWhatItCannotHold) {
  auto message = [](auto f) {
    try {
      f();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  const RowMatrix<float> odd = random_matrix(2, 33, 3);
  EXPECT_NE(message([&] {
              StoredMatrix::encode(odd, ggml::Q8_0);
            }).find("cols = 33, expected a multiple of 32 for Q8_0"),
            std::string::npos);
  EXPECT_NE(message([&] { StoredMatrix::encode(odd, ggml::Q4_1); }).find("Q4_1"),
            std::string::npos);
  const unsigned char bytes[64] = {};
  EXPECT_NE(message([&] { StoredMatrix::view(12, 1, 256, bytes, nullptr); }).find("Q4_K"),
            std::string::npos);
  EXPECT_NE(message([&] { StoredMatrix::encode(RowMatrix<float>(0, 4)); }).find("non-empty"),
            std::string::npos);
  const StoredMatrix a = StoredMatrix::encode(random_matrix(1, 32, 4));
  const StoredMatrix b = StoredMatrix::encode(random_matrix(1, 64, 5));
  EXPECT_NE(message([&] {
              StoredMatrix::stack({&a, &b});
            }).find("parts[1] has 64 columns, expected 32"),
            std::string::npos);
}

TEST(StoredMatrix, TypesWithoutAKernelBecomeF32Copies) {
  // One Q4_1 block: d = 0.5, m = -1, codes c_j = j % 16: x_j = 0.5 c_j - 1.
  unsigned char block[20] = {0x00, 0x38, 0x00, 0xBC};  // fp16 0.5, fp16 -1
  for (int i = 0; i < 16; ++i) block[4 + i] = uint8_t((i % 16) | (((i + 16) % 16) << 4));
  const StoredMatrix s = StoredMatrix::view(ggml::Q4_1, 1, 32, block, nullptr);
  EXPECT_EQ(s.bands()[0].type, uint32_t(ggml::F32));
  EXPECT_NE(s.bands()[0].data, block);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(s.dense()(0, j), 0.5f * float(j % 16) - 1.0f) << j;
}

// y = W x in double from W's decoded values, x as given.
std::vector<double> product(const RowMatrix<float>& w, const float* x) {
  std::vector<double> y(size_t(w.rows()), 0.0);
  for (Eigen::Index r = 0; r < w.rows(); ++r) {
    for (Eigen::Index c = 0; c < w.cols(); ++c) y[size_t(r)] += double(w(r, c)) * x[c];
  }
  return y;
}

// x as the Q8_0 blocks the products take it in, decoded.
std::vector<float> q8_decoded(const float* x, Eigen::Index n) {
  std::vector<kvattn::kernels::BlockQ8_0> b(size_t(n / 32));
  kvattn::kernels::quantize_q8_0(x, n, b.data());
  std::vector<float> out(static_cast<size_t>(n));
  kvattn::dequantize_row(ggml::Q8_0, reinterpret_cast<const unsigned char*>(b.data()), n,
                         out.data());
  return out;
}

TEST(StoredProduct, EveryTypeMatchesTheDoubleProductOfItsDecodedWeights) {
  const Eigen::Index rows = 150, cols = 96, batch = 3;
  const RowMatrix<float> w = random_matrix(rows, cols, 6), x = random_matrix(batch, cols, 7);
  for (uint32_t type : {ggml::F32, ggml::F16, ggml::BF16, ggml::Q8_0, ggml::Q4_0}) {
    const StoredMatrix s = StoredMatrix::encode(w, type);
    const RowMatrix<float> wd = s.dense();
    const bool quant = type == ggml::Q8_0 || type == ggml::Q4_0;
    for (bool few : {true, false}) {
      RowMatrix<float> y(batch, rows);
      kvattn::ops::stored_product(s, x.data(), cols, batch, y.data(), rows, few);
      for (Eigen::Index c = 0; c < batch; ++c) {
        const std::vector<float> xin =
            quant ? q8_decoded(x.row(c).data(), cols)
                  : std::vector<float>(x.row(c).data(), x.row(c).data() + cols);
        const std::vector<double> want = product(wd, xin.data());
        for (Eigen::Index r = 0; r < rows; ++r) {
          double mag = 0;  // float summation bound: cols u sum |w x|, u = 2^-24
          for (Eigen::Index k = 0; k < cols; ++k)
            mag += std::abs(double(wd(r, k)) * xin[size_t(k)]);
          ASSERT_NEAR(y(c, r), want[size_t(r)], 2 * double(cols) * mag / (1 << 24))
              << kvattn::ggml_type_name(type) << " few " << few << " row " << r;
        }
      }
    }
  }
}

TEST(StoredProduct, QuantizedRowsDoNotDependOnTheBatchTheBandsOrTheThreads) {
  // 1024 x 1024 Q8_0 is 1.06 MB, 2048 x 1024 Q4_0 1.18 MB: large enough for
  // each band's product to use threads.
  const Eigen::Index rows = 1024, cols = 1024;
  const RowMatrix<float> x = random_matrix(4, cols, 8);
  const StoredMatrix q8 = StoredMatrix::encode(random_matrix(rows, cols, 9), ggml::Q8_0);
  const StoredMatrix q4 = StoredMatrix::encode(random_matrix(2 * rows, cols, 10), ggml::Q4_0);
  const StoredMatrix both = StoredMatrix::stack({&q8, &q4});
  RowMatrix<float> batched(4, both.rows()), prefill(4, both.rows());
  kvattn::ops::stored_product(both, x.data(), cols, 4, batched.data(), both.rows(), true);
  kvattn::ops::stored_product(both, x.data(), cols, 4, prefill.data(), both.rows(), false);
  EXPECT_EQ(std::memcmp(batched.data(), prefill.data(), sizeof(float) * size_t(batched.size())), 0);
#if defined(_OPENMP)
  const int before = omp_get_max_threads();
#endif
  for (int threads : {1, 2}) {
#if defined(_OPENMP)
    omp_set_num_threads(threads);
#endif
    for (Eigen::Index c = 0; c < 4; ++c) {
      std::vector<float> one(size_t(q8.rows())), half(size_t(q4.rows()));
      kvattn::ops::stored_product(q8, x.row(c).data(), cols, 1, one.data(), q8.rows(), true);
      kvattn::ops::stored_product(q4, x.row(c).data(), cols, 1, half.data(), q4.rows(), true);
      EXPECT_EQ(std::memcmp(one.data(), batched.row(c).data(), sizeof(float) * one.size()), 0)
          << threads << " threads, vector " << c;
      EXPECT_EQ(
          std::memcmp(half.data(), batched.row(c).data() + q8.rows(), sizeof(float) * half.size()),
          0)
          << threads << " threads, vector " << c;
    }
  }
#if defined(_OPENMP)
  omp_set_num_threads(before);
#endif
}

bool same_bits(const Eigen::Ref<const RowMatrix<float>>& a,
               const Eigen::Ref<const RowMatrix<float>>& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (Eigen::Index r = 0; r < a.rows(); ++r) {
    if (std::memcmp(a.row(r).data(), b.row(r).data(), sizeof(float) * size_t(a.cols())) != 0)
      return false;
  }
  return true;
}

// Greedy tokens from a prompt, then the logits of a step after them.
template <class Model>
RowMatrix<float> run(Model& model, const std::vector<int>& prompt, int steps) {
  auto state = model.make_state(64);
  RowMatrix<float> out(steps + 1, model.config().vocab_size);
  kvattn::Vector<float> logits = model.prefill(prompt, state);
  out.row(0) = logits.transpose();
  for (int i = 1; i <= steps; ++i) {
    const int next =
        int(std::max_element(logits.data(), logits.data() + logits.size()) - logits.data());
    logits = model.step(next, state);
    out.row(i) = logits.transpose();
  }
  return out;
}

// Stored F32 / F16 / BF16 matrices go through the same decode kernels as the
// dense models keep: one-token steps agree to the bit. A prompt of several
// tokens runs Eigen's matrix product per band (Wq, Wk, Wv apart, where the
// dense model multiplies them stacked), so it agrees to float rounding.
TEST(StoredLlama, DenseTypesRunLikeTheDenseModels) {
  KVATTN_REQUIRE_MODELS();
  const kvattn::LlamaWeights<float> w =
      kvattn::read_llama2c_checkpoint<float>(test::model_path("stories260K.bin"));
  kvattn::Llama<float> f32(w);
  kvattn::Llama<float, Eigen::half> f16(w);
  kvattn::Llama<float, Eigen::bfloat16> bf16(w);
  // The dense bf16 / f16 models keep the embedding in float and round a copy
  // for the classifier; to_stored rounds the embedding itself: undo that.
  auto like_dense = [&w](uint32_t type) {
    kvattn::LlamaWeights<float, StoredMatrix> s = kvattn::to_stored(w, type);
    s.token_embedding = StoredMatrix::encode(w.token_embedding, ggml::F32);
    s.classifier = StoredMatrix::encode(w.token_embedding, type);
    return s;
  };
  kvattn::Llama<float, kvattn::Stored> s32(kvattn::to_stored(w, ggml::F32));
  kvattn::Llama<float, kvattn::Stored> s16(like_dense(ggml::F16));
  kvattn::Llama<float, kvattn::Stored> sb16(like_dense(ggml::BF16));
  EXPECT_TRUE(s32.shares_classifier());
  EXPECT_TRUE(same_bits(run(s32, {1}, 16), run(f32, {1}, 16)));
  EXPECT_TRUE(same_bits(run(s16, {1}, 16), run(f16, {1}, 16)));
  EXPECT_TRUE(same_bits(run(sb16, {1}, 16), run(bf16, {1}, 16)));
  const std::vector<int> prompt = {1, 403, 407, 261};
  const RowMatrix<float> a = run(s16, prompt, 0), b = run(f16, prompt, 0);
  EXPECT_LE((a - b).cwiseAbs().maxCoeff(), 1e-4 * std::max(1.0f, b.cwiseAbs().maxCoeff()));
}

TEST(StoredLlama, ShapesAreCheckedAndNamed) {
  KVATTN_REQUIRE_MODELS();
  kvattn::LlamaWeights<float, StoredMatrix> w = kvattn::to_stored(
      kvattn::read_llama2c_checkpoint<float>(test::model_path("stories260K.bin")), ggml::Q8_0);
  EXPECT_EQ(w.layers[0].w2.bands()[0].type, uint32_t(ggml::F16));  // 172 columns: no blocks
  EXPECT_EQ(w.layers[0].w1.bands()[0].type, uint32_t(ggml::Q8_0));
  w.layers[1].w3 = w.layers[1].w2;  // [dim x hidden_dim] where [hidden_dim x dim] belongs
  try {
    kvattn::Llama<float, kvattn::Stored> model(std::move(w));
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("layer 1: w3"), std::string::npos) << e.what();
  }
}

// A one-token entry of a ragged batch is computed as it would be alone, to
// the bit, with quantized weights too.
TEST(StoredLlama, BatchedStepsAreBitwiseTheSoloSteps) {
  KVATTN_REQUIRE_MODELS();
  for (uint32_t type : {ggml::Q8_0, ggml::Q4_0}) {
    kvattn::Llama<float, kvattn::Stored> model(kvattn::to_stored(
        kvattn::read_llama2c_checkpoint<float>(test::model_path("stories260K.bin")), type));
    kvattn::PagedKVCache<float> alone = model.make_paged_cache(32),
                                crowd = model.make_paged_cache(32);
    const kvattn::SeqId a = alone.add_sequence();
    const kvattn::SeqId b = crowd.add_sequence(), c = crowd.add_sequence();
    const std::vector<int> prompt = {1, 403, 407};
    model.forward_batch({{a, prompt}}, alone);
    model.forward_batch({{b, prompt}, {c, {1, 9, 20, 30, 44}}}, crowd);
    int token = 300;
    for (int i = 0; i < 6; ++i) {
      const RowMatrix<float> one = model.forward_batch({{a, {token}}}, alone);
      const RowMatrix<float> two = model.forward_batch({{c, {token + 1}}, {b, {token}}}, crowd);
      ASSERT_TRUE(same_bits(one.row(0), two.row(1)))
          << kvattn::ggml_type_name(type) << " step " << i;
      token = int(std::max_element(one.data(), one.data() + one.cols()) - one.data());
    }
  }
}

}  // namespace
