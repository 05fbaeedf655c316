#pragma once
/// \file
/// Activations into Q8_0 blocks, the form the quantized-weight products
/// take them in (as llama.cpp's CPU kernels do): per 32 values, d = max|x| /
/// 127, codes round(x / d) to nearest even, d stored as an IEEE half.

#include <kvattn/kernels/common.hpp>

#include <stdexcept>
#include <string>

namespace kvattn::kernels {

/// x[0..n) into n / 32 blocks at out. Throws std::invalid_argument unless n
/// is a multiple of 32. NaN or infinite inputs give NaN codes' stand-in 0
/// and a NaN or infinite scale, so the products come out NaN, not silently
/// finite.
inline void quantize_q8_0(const float* x, Index n, BlockQ8_0* out) {
  if (n % kQuantBlock != 0) {
    throw std::invalid_argument("quantize_q8_0: n = " + std::to_string(n) +
                                ", expected a multiple of 32");
  }
  for (Index b = 0; b < n / kQuantBlock; ++b) {
    const float* v = x + b * kQuantBlock;
    float amax = 0;
    for (Index j = 0; j < kQuantBlock; ++j) {
      const float a = std::fabs(v[j]);
      amax = a > amax || a != a ? a : amax;  // NaN wins
    }
    const float d = amax / 127.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    BlockQ8_0& q = out[b];
    q.d = Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(d));
    for (Index j = 0; j < kQuantBlock; ++j) {
      // rint: nearbyint's value in the default rounding mode, and inlined at
      // the baseline instruction set (nearbyint is a libm call there).
      const float c = std::rint(v[j] * id);  // |c| <= 127 for finite inputs
      q.qs[j] = std::isfinite(c) ? std::int8_t(c) : std::int8_t(0);
    }
  }
}

/// Weights x[0..n) into n / 32 Q4_0 blocks of 18 bytes at out (fp16 d, then
/// 16 code bytes: byte i holds code i in its low nibble, code i + 16 in its
/// high one; value j = d * (code j - 8)). Per block, m is the value of
/// largest magnitude (the first such, keeping its sign) and d = m / -8, so
/// that m gets code 0 exactly; code j = min(15, floor(x[j] / d + 8.5)).
/// Throws std::invalid_argument unless n is a multiple of 32.
inline void quantize_q4_0(const float* x, Index n, std::uint8_t* out) {
  if (n % kQuantBlock != 0) {
    throw std::invalid_argument("quantize_q4_0: n = " + std::to_string(n) +
                                ", expected a multiple of 32");
  }
  for (Index b = 0; b < n / kQuantBlock; ++b) {
    const float* v = x + b * kQuantBlock;
    float m = 0;
    for (Index j = 0; j < kQuantBlock; ++j) {
      if (std::fabs(v[j]) > std::fabs(m)) m = v[j];
    }
    const float d = m / -8.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    std::uint8_t* q = out + b * kQ4_0Bytes;
    const std::uint16_t dh = Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(d));
    q[0] = std::uint8_t(dh & 0xFF);
    q[1] = std::uint8_t(dh >> 8);
    auto code = [&](float value) {
      const float c = std::floor(value * id + 8.5f);
      return std::uint8_t(c > 15 ? 15 : (c < 0 || c != c ? 0 : c));
    };
    for (Index j = 0; j < kQuantBlock / 2; ++j) {
      q[2 + j] = std::uint8_t(code(v[j]) | (code(v[j + kQuantBlock / 2]) << 4));
    }
  }
}

}  // namespace kvattn::kernels
