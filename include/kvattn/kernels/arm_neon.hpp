#pragma once
/// \file
/// The aarch64 target, neon: Advanced SIMD, which every aarch64 CPU has
/// (no attribute needed): 4-lane float vectors, 32 registers; bfloat16 and
/// half widened in registers, int8 rows in the integer domain (int16
/// products summed in pairs).

#include <kvattn/kernels/common.hpp>

#include <arm_neon.h>

namespace kvattn::kernels::neon {

inline constexpr const char* kName = "neon";
#define KVATTN_KERNEL_INTEGER 1

struct V {
  static constexpr int kLanes = 4;
  static constexpr int kTileAcc = 16;
  static constexpr int kGemmRows1 = 8, kGemmRows = 4, kGemmCols = 4;
  static constexpr bool kIntegerDot = true;
  static constexpr int kHintEvery = 4;
  using F = float32x4_t;
  using I16 = int16x8_t;  // 8 int16
  using I32 = int32x4_t;  // 4 int32

  static F zero() { return vdupq_n_f32(0.0f); }
  static F set1(float x) { return vdupq_n_f32(x); }
  static F loadu(const float* p) { return vld1q_f32(p); }
  static void storeu(float* p, F x) { vst1q_f32(p, x); }
  static F load(const float* p) { return vld1q_f32(p); }
  static F load(const Eigen::bfloat16* p) {  // bfloat16 is the top half of a float
    return vreinterpretq_f32_u32(
        vshll_n_u16(vld1_u16(reinterpret_cast<const std::uint16_t*>(p)), 16));
  }
  static F load(const Eigen::half* p) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const std::uint16_t*>(p))));
  }
  static int8x8_t load4_i8(const std::int8_t* p) {  // 4 bytes into lanes 0-3, no over-read
    std::uint32_t bits;
    std::memcpy(&bits, p, 4);
    return vreinterpret_s8_u32(vdup_n_u32(bits));
  }
  static F load(const std::int8_t* p) {  // unscaled codes
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(load4_i8(p)))));
  }
  static F fma(F a, F b, F c) { return vfmaq_f32(c, a, b); }
  static F add(F a, F b) { return vaddq_f32(a, b); }
  static F sub(F a, F b) { return vsubq_f32(a, b); }
  static F mul(F a, F b) { return vmulq_f32(a, b); }
  static F div(F a, F b) { return vdivq_f32(a, b); }
  static F max(F a, F b) { return vmaxq_f32(a, b); }  // NaN if either is NaN
  static F min(F a, F b) { return vminq_f32(a, b); }
  static F abs(F a) { return vabsq_f32(a); }
  static F round(F a) { return vrndnq_f32(a); }
  static F pow2(F n) {
    return vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23));
  }
  /// Lane order: (l0 + l1) + (l2 + l3).
  static void reduce(const F* a, int n, float* out) {
    if (n == 1) {
      const float32x4_t p = vpaddq_f32(a[0], a[0]);
      out[0] = vgetq_lane_f32(p, 0) + vgetq_lane_f32(p, 1);
      return;
    }
    for (int i0 = 0; i0 < n; i0 += 4) {
      F b[4];
      for (int i = 0; i < 4; ++i) b[i] = i0 + i < n ? a[i0 + i] : vdupq_n_f32(0.0f);
      const F sums = vpaddq_f32(vpaddq_f32(b[0], b[1]), vpaddq_f32(b[2], b[3]));
      if (n - i0 >= 4) {
        vst1q_f32(out + i0, sums);
      } else {
        float all[4];
        vst1q_f32(all, sums);
        for (int i = 0; i0 + i < n; ++i) out[i0 + i] = all[i];
      }
    }
  }
  static void keep(F& v) { __asm__("" : "+w"(v)); }
  static void prefetch(const void* p) {  // volatile: a compiler may drop a prefetch-only loop
    __asm__ volatile("prfm pldl1keep, [%0]" : : "r"(p));
  }
  static void prefetch_l2(const void* p) { __asm__ volatile("prfm pldl2keep, [%0]" : : "r"(p)); }
  static void prefetch_row(const void* p) { prefetch(p); }

  // int8 rows in the integer domain.
  static I32 izero() { return vdupq_n_s32(0); }
  static I16 load_i8_i16(const std::int8_t* p) { return vmovl_s8(vld1_s8(p)); }
  static I16 load_i16(const std::int16_t* p) { return vld1q_s16(p); }
  static I32 dot_pairs(I32 acc, I16 a, I16 b) {
    const int32x4_t lo = vmull_s16(vget_low_s16(a), vget_low_s16(b));
    const int32x4_t hi = vmull_high_s16(a, b);
    return vaddq_s32(acc, vpaddq_s32(lo, hi));
  }
  static I16 interleave_i8(const std::int8_t* a, const std::int8_t* b) {
    return vmovl_s8(vzip1_s8(load4_i8(a), load4_i8(b)));
  }
  static void interleave2_i8(const std::int8_t* a, const std::int8_t* b, I16* x) {
    const int8x8_t ra = vld1_s8(a), rb = vld1_s8(b);
    x[0] = vmovl_s8(vzip1_s8(ra, rb));
    x[1] = vmovl_s8(vzip2_s8(ra, rb));
  }
  static void pairs_order(I32&, I32&) {}  // interleave2_i8's pairs are in order
  static I16 broadcast_pair(const std::int16_t* w) {
    std::int32_t both;
    std::memcpy(&both, w, sizeof both);
    return vreinterpretq_s16_s32(vdupq_n_s32(both));
  }
  static F to_float(I32 a) { return vcvtq_f32_s32(a); }
  // Rows of g values, g 1 or 2 (quantize_weights).
  static F expand_rows(const float* f, Index g) {  // lane i: f[i / g]; reads 4 / g values
    if (g == 1) return vld1q_f32(f);
    const float32x2_t two = vld1_f32(f);
    return vcombine_f32(vdup_lane_f32(two, 0), vdup_lane_f32(two, 1));
  }
  static void split_rows(F x0, F x1, Index g, F& even, F& odd) {
    if (g == 1) {
      even = vuzp1q_f32(x0, x1);
      odd = vuzp2q_f32(x0, x1);
      return;
    }
    const float64x2_t a = vreinterpretq_f64_f32(x0), b = vreinterpretq_f64_f32(x1);
    even = vreinterpretq_f32_f64(vuzp1q_f64(a, b));
    odd = vreinterpretq_f32_f64(vuzp2q_f64(a, b));
  }
  static void scaled_sums_i32(const I32* a, int n, const float* f, float* out) {
    for (int i = 0; i < n; ++i) out[i] = float(vaddvq_s32(a[i])) * f[i];
  }
  static void store_i16(std::int16_t* out, F x) { vst1_s16(out, vqmovn_s32(vcvtnq_s32_f32(x))); }
  static void store_pairs_i16(std::int16_t* out, F a, F b) {
    const int16x4x2_t z = vzip_s16(vmovn_s32(vcvtnq_s32_f32(a)), vmovn_s32(vcvtnq_s32_f32(b)));
    vst1q_s16(out, vcombine_s16(z.val[0], z.val[1]));
  }
  // Quantized blocks: 16 codes at a time, int8 x int8 into int16 pairs
  // (at most 2 * 128 * 127, no overflow), pairwise into int32.
  static int32x4_t qdot16(int32x4_t acc, int8x16_t w, int8x16_t x) {
    int16x8_t p = vmull_s8(vget_low_s8(w), vget_low_s8(x));
    p = vmlal_s8(p, vget_high_s8(w), vget_high_s8(x));
    return vpadalq_s16(acc, p);
  }
  using QAcc = float32x4_t;
  static QAcc qzero() { return vdupq_n_f32(0.0f); }
  static float qreduce(QAcc a) { return vaddvq_f32(a); }
  template <Index kBlockBytes>
  static void qdot4(const std::uint8_t* const* r, Index at, const BlockQ8_0* x, QAcc* acc) {
    const int8x16_t x0 = vld1q_s8(x->qs), x1 = vld1q_s8(x->qs + 16);
    const float dx = half_bits_to_float(x->d);
    for (int k = 0; k < 4; ++k) {
      const std::uint8_t* block = r[k] + at;
      int8x16_t lo, hi;
      if constexpr (kBlockBytes == kQ8_0Bytes) {
        lo = vld1q_s8(reinterpret_cast<const std::int8_t*>(block + 2));
        hi = vld1q_s8(reinterpret_cast<const std::int8_t*>(block + 18));
      } else {
        const uint8x16_t q = vld1q_u8(block + 2);
        lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(15))), vdupq_n_s8(8));
        hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), vdupq_n_s8(8));
      }
      std::uint16_t d;
      std::memcpy(&d, block, 2);
      const int32x4_t s = qdot16(qdot16(vdupq_n_s32(0), lo, x0), hi, x1);
      acc[k] = vfmaq_n_f32(acc[k], vcvtq_f32_s32(s), half_bits_to_float(d) * dx);
    }
  }
};

#include <kvattn/kernels/generic_inl.hpp>
#include <kvattn/kernels/generic_quant_inl.hpp>
#include <kvattn/kernels/generic_table_inl.hpp>

#undef KVATTN_KERNEL_INTEGER

}  // namespace kvattn::kernels::neon
