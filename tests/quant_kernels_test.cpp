// The quantized-weight products (Q8_0 and Q4_0 weights, Q8_0 activations)
// on every kernel target this CPU runs: hand-worked blocks, the twin in
// double (kernels/reference.hpp), the float-activation product within the
// activations' quantization error, and the bitwise properties the layers
// rely on (a row's result does not depend on its neighbours or threads).
#include <kvattn/io/ggml_quants.hpp>
#include <kvattn/kernels/kernels.hpp>
#include <kvattn/kernels/reference.hpp>
#include <kvattn/ops/quant_linear.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

using kvattn::kernels::BlockQ8_0;
using kvattn::kernels::Index;
using kvattn::kernels::KernelTable;
using kvattn::kernels::kQ4_0Bytes;
using kvattn::kernels::kQ8_0Bytes;

constexpr double kU = 1.0 / (1 << 24);
const char* const kAllTargets[] = {"portable", "avx2", "avx512", "avx512vnni", "neon"};

std::uint16_t half_bits(float x) { return Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(x)); }

const KernelTable* target_or_skip(const std::string& name, std::string* why) {
  for (const kvattn::kernels::Target& t : kvattn::kernels::compiled_targets()) {
    if (name == t.name) {
      if (t.supported()) return &t.table();
      *why = "this CPU lacks the instructions of target " + name;
      return nullptr;
    }
  }
  *why = "target " + name + " is not compiled for this architecture";
  return nullptr;
}

#define KVATTN_TARGET_OR_SKIP(table)                           \
  std::string why;                                             \
  const KernelTable* table = target_or_skip(GetParam(), &why); \
  if (table == nullptr) GTEST_SKIP() << why

class QuantKernels : public ::testing::TestWithParam<const char*> {};

// Random weights: every code value (Q8_0 includes -128, which llama.cpp's
// own quantizer never writes but a file may hold), scales in [1e-3, 0.05].
std::vector<std::uint8_t> random_rows(Index block_bytes, Index rows, Index nb, std::mt19937& rng) {
  std::vector<std::uint8_t> w(static_cast<size_t>(rows * nb * block_bytes));
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(1e-3f, 0.05f);
  for (Index b = 0; b < rows * nb; ++b) {
    std::uint8_t* block = w.data() + b * block_bytes;
    const std::uint16_t d = half_bits(byte(rng) < 128 ? scale(rng) : -scale(rng));
    std::memcpy(block, &d, 2);
    for (Index j = 2; j < block_bytes; ++j) block[j] = std::uint8_t(byte(rng));
  }
  return w;
}

std::vector<float> random_vector(Index n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = u(rng);
  return x;
}

TEST(QuantizeQ8_0, HandWorkedBlocks) {
  // max |x| = 127: d = 1 exactly, codes round to nearest even.
  float x[64] = {127, -127, 0.5f, 1.5f, 2.5f, -0.5f, -2.25f, 3.75f, -126.5f};
  for (int j = 32; j < 64; ++j) x[j] = 0;  // an all-zero block: d = 0, codes 0
  BlockQ8_0 q[2];
  kvattn::kernels::quantize_q8_0(x, 64, q);
  EXPECT_EQ(q[0].d, 0x3C00);  // 1.0
  const int want[9] = {127, -127, 0, 2, 2, 0, -2, 4, -126};
  for (int j = 0; j < 9; ++j) EXPECT_EQ(q[0].qs[j], want[j]) << j;
  for (int j = 9; j < 32; ++j) EXPECT_EQ(q[0].qs[j], 0) << j;
  EXPECT_EQ(q[1].d, 0);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(q[1].qs[j], 0);
  // max |x| = 254: d = 2 (0x4000), x / 2 rounded.
  float y[32] = {254, 3, -5, 7};
  kvattn::kernels::quantize_q8_0(y, 32, q);
  EXPECT_EQ(q[0].d, 0x4000);
  EXPECT_EQ(q[0].qs[0], 127);
  EXPECT_EQ(q[0].qs[1], 2);   // 1.5 -> 2
  EXPECT_EQ(q[0].qs[2], -2);  // -2.5 -> -2
  EXPECT_EQ(q[0].qs[3], 4);   // 3.5 -> 4
  EXPECT_THROW(kvattn::kernels::quantize_q8_0(y, 31, q), std::invalid_argument);
}

TEST_P(QuantKernels, HandWorkedProducts) {
  KVATTN_TARGET_OR_SKIP(table);
  BlockQ8_0 x;  // d = 1, codes j - 16
  x.d = 0x3C00;
  for (int j = 0; j < 32; ++j) x.qs[j] = std::int8_t(j - 16);
  // Q4_0, d = 0.5, every byte 0x98: codes 8 - 8 = 0 (j < 16), 9 - 8 = 1 (j >= 16):
  // 0.5 * (0 + 1 + ... + 15) = 60.
  std::uint8_t q4[kQ4_0Bytes];
  const std::uint16_t half = 0x3800;
  std::memcpy(q4, &half, 2);
  std::memset(q4 + 2, 0x98, 16);
  float y = 0;
  table->gemv_q4_0(q4, kQ4_0Bytes, 1, &x, 1, &y);
  EXPECT_EQ(y, 60.0f);
  // Q8_0, d = 0.25, every code -128; x: d = 2, codes 1: 0.25 * 2 * (-128 * 32) = -2048.
  std::uint8_t q8[kQ8_0Bytes];
  const std::uint16_t quarter = 0x3400;
  std::memcpy(q8, &quarter, 2);
  std::memset(q8 + 2, 0x80, 32);
  BlockQ8_0 ones;
  ones.d = 0x4000;
  for (auto& c : ones.qs) c = 1;
  table->gemv_q8_0(q8, kQ8_0Bytes, 1, &ones, 1, &y);
  EXPECT_EQ(y, -2048.0f);
}

// Against the twin: the integer sums are exact, so the only difference is
// float rounding: the scale product and one multiply-add per block and lane,
// then the lanes' sum, bounded by (nb + 8) u sum_b |d_b| sum_j |w_bj x_bj|.
template <Index kBytes>
void check_against_twin(const KernelTable& table, kvattn::kernels::QGemvFn fn) {
  std::mt19937 rng(kBytes);
  for (Index nb : {1, 3, 4, 7, 9, 64}) {
    const Index rows = 37;
    const std::vector<std::uint8_t> w = random_rows(kBytes, rows, nb, rng);
    const std::vector<float> xf = random_vector(nb * 32, rng);
    std::vector<BlockQ8_0> x(static_cast<size_t>(nb));
    kvattn::kernels::quantize_q8_0(xf.data(), nb * 32, x.data());
    std::vector<float> got(static_cast<size_t>(rows)), want(static_cast<size_t>(rows));
    fn(w.data(), nb * kBytes, rows, x.data(), nb, got.data());
    kvattn::kernels::gemv_q_ref<kBytes>(w.data(), nb * kBytes, rows, x.data(), nb, want.data());
    for (Index i = 0; i < rows; ++i) {
      double abs_sum = 0;
      for (Index b = 0; b < nb; ++b) {
        const std::uint8_t* block = w.data() + (i * nb + b) * kBytes;
        std::uint16_t d;
        std::memcpy(&d, block, 2);
        double dot = 0;  // of the magnitudes: the lanes' partial sums may cancel
        for (Index j = 0; j < 32; ++j)
          dot += std::abs(kvattn::kernels::quant_code_ref<kBytes>(block, j) * x[size_t(b)].qs[j]);
        abs_sum += std::abs(double(kvattn::kernels::half_bits_to_float(d)) *
                            kvattn::kernels::half_bits_to_float(x[size_t(b)].d) * dot);
      }
      ASSERT_NEAR(got[size_t(i)], want[size_t(i)], (double(nb) + 8) * kU * abs_sum + 1e-30)
          << table.name << " nb " << nb << " row " << i;
    }
    // A row's bits do not depend on the rows computed with it.
    std::vector<float> part(3);
    fn(w.data() + 5 * nb * kBytes, nb * kBytes, 3, x.data(), nb, part.data());
    for (int k = 0; k < 3; ++k) EXPECT_EQ(part[size_t(k)], got[size_t(5 + k)]) << table.name;
  }
}

TEST_P(QuantKernels, Q8_0MatchesTwin) {
  KVATTN_TARGET_OR_SKIP(table);
  check_against_twin<kQ8_0Bytes>(*table, table->gemv_q8_0);
}

TEST_P(QuantKernels, Q4_0MatchesTwin) {
  KVATTN_TARGET_OR_SKIP(table);
  check_against_twin<kQ4_0Bytes>(*table, table->gemv_q4_0);
}

INSTANTIATE_TEST_SUITE_P(AllTargets, QuantKernels, ::testing::ValuesIn(kAllTargets),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param);
                         });

// The twins decode the blocks as the GGUF reader's dequantize_row does (two
// decoders written separately: a nibble-order slip in either shows here).
TEST(QuantTwins, DecodeAsTheGgufReaderDoes) {
  std::mt19937 rng(7);
  const Index nb = 5;
  for (auto [type, bytes] : {std::pair<uint32_t, Index>{8, kQ8_0Bytes}, {2, kQ4_0Bytes}}) {
    const std::vector<std::uint8_t> w = random_rows(bytes, 1, nb, rng);
    const std::vector<float> x = random_vector(nb * 32, rng);
    std::vector<float> deq(static_cast<size_t>(nb * 32));
    kvattn::dequantize_row(type, w.data(), nb * 32, deq.data());
    double want = 0, got = 0;
    for (Index j = 0; j < nb * 32; ++j) want += double(deq[size_t(j)]) * x[size_t(j)];
    if (bytes == kQ8_0Bytes) {
      kvattn::kernels::gemv_q_float_ref<kQ8_0Bytes>(w.data(), nb * bytes, 1, x.data(), nb, &got);
    } else {
      kvattn::kernels::gemv_q_float_ref<kQ4_0Bytes>(w.data(), nb * bytes, 1, x.data(), nb, &got);
    }
    EXPECT_NEAR(got, want, 1e-12 * (std::abs(want) + 1)) << "ggml type " << type;
  }
}

// quant_gemv with float activations against the float-activation twin:
// within the activations' quantization error, per block at most
// sum_j |w_j| (d/2 + 127 |d - half(d)|) with d = max|x| / 127, plus float
// rounding. Threads change no bit.
TEST(QuantGemv, AgreesWithFloatActivationsAndThreads) {
  std::mt19937 rng(11);
  const Index rows = 1001, cols = 2048, nb = cols / 32;  // >= 1 MiB either way: threaded
  for (kvattn::QuantType type : {kvattn::QuantType::Q8_0, kvattn::QuantType::Q4_0}) {
    const bool q8 = type == kvattn::QuantType::Q8_0;
    const Index bytes = q8 ? kQ8_0Bytes : kQ4_0Bytes;
    const std::vector<std::uint8_t> w = random_rows(bytes, rows, nb, rng);
    const std::vector<float> x = random_vector(cols, rng);
    const kvattn::QuantMatrixView view{type, w.data(), rows, cols};
    std::vector<BlockQ8_0> scratch;
    std::vector<float> y(static_cast<size_t>(rows)), y1(static_cast<size_t>(rows));
    kvattn::quant_gemv(view, x.data(), y.data(), scratch);
    std::vector<double> want(static_cast<size_t>(rows));
    if (q8) {
      kvattn::kernels::gemv_q_float_ref<kQ8_0Bytes>(w.data(), view.row_bytes(), rows, x.data(), nb,
                                                    want.data());
    } else {
      kvattn::kernels::gemv_q_float_ref<kQ4_0Bytes>(w.data(), view.row_bytes(), rows, x.data(), nb,
                                                    want.data());
    }
    for (Index i = 0; i < rows; ++i) {
      double bound = 0;
      for (Index b = 0; b < nb; ++b) {
        const std::uint8_t* block = w.data() + i * view.row_bytes() + b * bytes;
        std::uint16_t dbits;
        std::memcpy(&dbits, block, 2);
        float amax = 0;
        for (Index j = 0; j < 32; ++j) amax = std::max(amax, std::abs(x[size_t(b * 32 + j)]));
        const double d = amax / 127.0, dh = double(Eigen::half(float(d)));
        double wsum = 0;
        for (Index j = 0; j < 32; ++j) {
          const int c = q8 ? kvattn::kernels::quant_code_ref<kQ8_0Bytes>(block, j)
                           : kvattn::kernels::quant_code_ref<kQ4_0Bytes>(block, j);
          wsum += std::abs(c * double(kvattn::kernels::half_bits_to_float(dbits)));
        }
        bound += wsum * (d / 2 + 127 * std::abs(d - dh)) * 1.001 + wsum * amax * (nb + 8) * kU;
      }
      ASSERT_NEAR(y[size_t(i)], want[size_t(i)], bound) << (q8 ? "Q8_0" : "Q4_0") << " row " << i;
    }
#if defined(_OPENMP)
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    kvattn::quant_gemv(view, x.data(), y1.data(), scratch);
    omp_set_num_threads(threads);
    EXPECT_EQ(0, std::memcmp(y.data(), y1.data(), y.size() * sizeof(float)));
#endif
  }
  const kvattn::QuantMatrixView odd{kvattn::QuantType::Q8_0, nullptr, 1, 33};
  std::vector<BlockQ8_0> scratch;
  float x[33] = {}, y = 0;
  EXPECT_THROW(kvattn::quant_gemv(odd, x, &y, scratch), std::invalid_argument);
}

TEST(QuantGemv, NonFiniteInputsGiveNaN) {
  std::mt19937 rng(3);
  const std::vector<std::uint8_t> w = random_rows(kQ8_0Bytes, 4, 2, rng);
  const kvattn::QuantMatrixView view{kvattn::QuantType::Q8_0, w.data(), 4, 64};
  std::vector<BlockQ8_0> scratch;
  for (float bad :
       {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    std::vector<float> x = random_vector(64, rng), y(4);
    x[40] = bad;
    kvattn::quant_gemv(view, x.data(), y.data(), scratch);
    for (float v : y) EXPECT_TRUE(std::isnan(v)) << "input " << bad << " gave " << v;
  }
}

}  // namespace
