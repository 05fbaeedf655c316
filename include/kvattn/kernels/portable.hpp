#pragma once
/// \file
/// The portable target: plain C++, any compiler, any CPU. Its "vectors" are
/// arrays of 4 floats handled by loops (which compilers may vectorize for
/// the baseline instruction set); it has no integer or bf16 dot products.

#include <kvattn/kernels/common.hpp>

namespace kvattn::kernels::portable {

inline constexpr const char* kName = "portable";

struct V {
  static constexpr int kLanes = 4;
  static constexpr int kTileAcc = 8;
  static constexpr int kGemmRows1 = 8, kGemmRows = 4, kGemmCols = 2;
  static constexpr bool kIntegerDot = false;
  static constexpr int kHintEvery = 16;
  struct F {
    float v[4];
  };

  static F zero() { return set1(0.0f); }
  static F set1(float x) { return F{{x, x, x, x}}; }
  static F loadu(const float* p) { return F{{p[0], p[1], p[2], p[3]}}; }
  static void storeu(float* p, F x) {
    for (int i = 0; i < 4; ++i) p[i] = x.v[i];
  }
  static F load(const float* p) { return loadu(p); }
  static F load(const Eigen::bfloat16* p) {  // bfloat16 is the top half of a float
    F x;
    for (int i = 0; i < 4; ++i) {
      std::uint16_t bits;
      std::memcpy(&bits, p + i, 2);
      const std::uint32_t wide = std::uint32_t(bits) << 16;
      std::memcpy(&x.v[i], &wide, 4);
    }
    return x;
  }
  static F load(const Eigen::half* p) {
    F x;
    for (int i = 0; i < 4; ++i) x.v[i] = static_cast<float>(p[i]);
    return x;
  }
  static F load(const std::int8_t* p) {
    F x;
    for (int i = 0; i < 4; ++i) x.v[i] = float(p[i]);
    return x;
  }
  template <class Op>
  static F map(F a, F b, Op op) {
    F r;
    for (int i = 0; i < 4; ++i) r.v[i] = op(a.v[i], b.v[i]);
    return r;
  }
  // One rounding where the hardware has a fused multiply-add, two where it
  // has none, but the same at every call site: a compiler contracting
  // a * b + c in some loops and not in others would make a result depend on
  // the tile that computed it.
  static F fma(F a, F b, F c) {
    F r;
    for (int i = 0; i < 4; ++i) {
#if defined(FP_FAST_FMAF)
      r.v[i] = std::fma(a.v[i], b.v[i], c.v[i]);
#else
      r.v[i] = a.v[i] * b.v[i] + c.v[i];  // nothing to contract into
#endif
    }
    return r;
  }
  static F add(F a, F b) {
    return map(a, b, [](float x, float y) { return x + y; });
  }
  static F sub(F a, F b) {
    return map(a, b, [](float x, float y) { return x - y; });
  }
  static F mul(F a, F b) {
    return map(a, b, [](float x, float y) { return x * y; });
  }
  static F div(F a, F b) {
    return map(a, b, [](float x, float y) { return x / y; });
  }
  // b when either is NaN, as x86's max/min.
  static F max(F a, F b) {
    return map(a, b, [](float x, float y) { return x > y ? x : y; });
  }
  static F min(F a, F b) {
    return map(a, b, [](float x, float y) { return x < y ? x : y; });
  }
  static F abs(F a) {
    for (float& x : a.v) x = std::fabs(x);
    return a;
  }
  static F round(F a) {  // to nearest even, without libm (|x| < 2^22; larger values are integral)
    for (float& x : a.v) {
      if (std::fabs(x) < 4194304.0f) x = (x + 12582912.0f) - 12582912.0f;
    }
    return a;
  }
  static F pow2(F n) {
    F r;
    for (int i = 0; i < 4; ++i) {
      const float e = n.v[i];  // NaN (from a NaN input): any scale, the result is NaN
      const std::uint32_t bits = std::uint32_t((e >= -126.0f && e <= 127.0f ? int(e) : 0) + 127)
                                 << 23;
      std::memcpy(&r.v[i], &bits, 4);
    }
    return r;
  }
  static void reduce(const F* a, int n, float* out) {
    for (int i = 0; i < n; ++i) out[i] = (a[i].v[0] + a[i].v[1]) + (a[i].v[2] + a[i].v[3]);
  }
  static void keep(F&) {}
  static void prefetch_l2(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(p, 0, 2);
#else
    (void)p;
#endif
  }
  static void prefetch(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(p, 0, 3);
#else
    (void)p;
#endif
  }
  static void prefetch_row(const void* p) { prefetch(p); }
  // Quantized blocks (generic_quant_inl.hpp): codes dotted in int32, one
  // lane.
  using QAcc = float;
  static QAcc qzero() { return 0.0f; }
  static float qreduce(QAcc a) { return a; }
  template <Index kBlockBytes>
  static std::int32_t qcode(const std::uint8_t* q, int j) {
    if constexpr (kBlockBytes == kQ8_0Bytes) {
      // Read as int8 in memory, not as uint8 converted to int8: GCC 12.2
      // with AVX-512 VNNI or AVX-VNNI vectorizes sum (int)(int8_t)u8[j] *
      // (int)s8[j] into vpdpbusd with u8 unsigned, dropping the conversion
      // (-128 counts as +128; docs/kernels.md).
      return std::int32_t(reinterpret_cast<const std::int8_t*>(q)[j]);
    } else {
      return std::int32_t(j < 16 ? q[j] & 15 : q[j - 16] >> 4) - 8;
    }
  }
  template <Index kBlockBytes>
  static void qdot4(const std::uint8_t* const* r, Index at, const BlockQ8_0* x, QAcc* acc) {
    const float dx = half_bits_to_float(x->d);
    for (int k = 0; k < 4; ++k) {
      const std::uint8_t* block = r[k] + at;
      std::int32_t s = 0;
      for (int j = 0; j < kQuantBlock; ++j) s += qcode<kBlockBytes>(block + 2, j) * x->qs[j];
      std::uint16_t d;
      std::memcpy(&d, block, 2);
      acc[k] = fma(set1(float(s)), set1(half_bits_to_float(d) * dx), set1(acc[k])).v[0];
    }
  }
};

#include <kvattn/kernels/generic_inl.hpp>
#include <kvattn/kernels/generic_quant_inl.hpp>
#include <kvattn/kernels/generic_table_inl.hpp>

}  // namespace kvattn::kernels::portable
