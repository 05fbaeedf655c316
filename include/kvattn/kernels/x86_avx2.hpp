#pragma once
/// \file
/// The x86 AVX2 + FMA + F16C target (Haswell and later, every Zen): 8-lane
/// float vectors, bfloat16 and half widened in registers, int8 rows in the
/// integer domain by vpmaddwd. Compiled into every x86 build whatever its
/// flags (function-level target attributes); used only where the CPU has it.

#include <kvattn/kernels/common.hpp>

#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
KVATTN_KERNEL_OPTIMIZE
#endif

namespace kvattn::kernels::avx2 {

inline constexpr const char* kName = "avx2";
#define KVATTN_KERNEL_INTEGER 1

/// The 8 sums of a[0..8), each in the order ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)).
KVATTN_KERNEL_INLINE __m256 sum8(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]);
  const __m256 t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]);
  const __m256 t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1);
  const __m256 u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/// One sum in the same order as sum8's lanes.
KVATTN_KERNEL_INLINE float sum1(__m256 a) {
  const __m256 t = _mm256_hadd_ps(a, a);
  const __m256 u = _mm256_hadd_ps(t, t);
  return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1)));
}

KVATTN_KERNEL_INLINE __m256i isum8(const __m256i* a) {
  const __m256i t0 = _mm256_hadd_epi32(a[0], a[1]);
  const __m256i t1 = _mm256_hadd_epi32(a[2], a[3]);
  const __m256i t2 = _mm256_hadd_epi32(a[4], a[5]);
  const __m256i t3 = _mm256_hadd_epi32(a[6], a[7]);
  const __m256i u0 = _mm256_hadd_epi32(t0, t1);
  const __m256i u1 = _mm256_hadd_epi32(t2, t3);
  return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),
                          _mm256_permute2x128_si256(u0, u1, 0x31));
}

/// The 8 int32 partial sums of the products of 32 int8 codes: w in
/// [-128, 127], x in [-127, 127] (|w| as unsigned bytes times x with w's
/// sign: vpmaddubsw's int16 pairs cannot saturate, at most 2 * 128 * 127).
KVATTN_KERNEL_INLINE __m256i qdot32(__m256i w, __m256i x) {
  const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

/// A Q8_0 block's 32 codes.
KVATTN_KERNEL_INLINE __m256i q8_0_codes(const std::uint8_t* block) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 2));
}

/// A block's scale d (its first 2 bytes, a half): converted from memory
/// with the next 6 bytes as don't-care lanes (one instruction, where a
/// 16-bit load into a vector takes an insert without AVX512-FP16).
KVATTN_KERNEL_INLINE float block_scale(const std::uint8_t* block) {
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(block))));
}

/// A Q4_0 block's 16 bytes of nibbles, loaded once: pinned to a register,
/// or GCC at -O2 (generic tuning) folds the load into both of its uses.
KVATTN_KERNEL_INLINE __m128i q4_0_bytes(const std::uint8_t* block) {
  __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 2));
  __asm__("" : "+x"(b));
  return b;
}

/// A Q4_0 block's 32 codes (low nibbles first, then high), minus 8.
KVATTN_KERNEL_INLINE __m256i q4_0_codes(const std::uint8_t* block) {
  const __m128i b = q4_0_bytes(block);
  const __m128i m = _mm_set1_epi8(15);
  const __m256i n = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
  return _mm256_sub_epi8(n, _mm256_set1_epi8(8));
}

/// The codes of block `at` of 4 rows, dotted with x's by Dot (8 int32
/// lanes each), multiply-added into acc[k] with d(w_k) * d(x).
template <Index kBlockBytes, class Dot>
KVATTN_KERNEL_INLINE void qdot4(const std::uint8_t* const* r, Index at, const BlockQ8_0* x,
                                __m256* acc, Dot dot) {
  const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x->qs));
  const float dx = _cvtsh_ss(x->d);
  KVATTN_UNROLL
  for (int k = 0; k < 4; ++k) {
    const std::uint8_t* block = r[k] + at;
    const __m256i codes = kBlockBytes == kQ8_0Bytes ? q8_0_codes(block) : q4_0_codes(block);
    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot(codes, xq)),
                             _mm256_set1_ps(block_scale(block) * dx), acc[k]);
  }
}

struct V {
  static constexpr int kLanes = 8;
  static constexpr int kTileAcc = 8;
  static constexpr int kGemmRows1 = 8, kGemmRows = 4, kGemmCols = 2;
  static constexpr bool kIntegerDot = true;
  static constexpr int kHintEvery = 16;
  using F = __m256;
  using I16 = __m256i;  // 16 int16
  using I32 = __m256i;  // 8 int32

  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float x) { return _mm256_set1_ps(x); }
  static F loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void storeu(float* p, F x) { _mm256_storeu_ps(p, x); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F load(const Eigen::bfloat16* p) {  // bfloat16 is the top half of a float
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static F load(const Eigen::half* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static F load(const std::int8_t* p) {  // unscaled codes
    return _mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F div(F a, F b) { return _mm256_div_ps(a, b); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F min(F a, F b) { return _mm256_min_ps(a, b); }
  static F abs(F a) { return _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))); }
  static F round(F a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F pow2(F n) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  }
  static void reduce(const F* a, int n, float* out) {
    if (n == 8) {
      _mm256_storeu_ps(out, sum8(a));
    } else if (n == 1) {
      out[0] = sum1(a[0]);
    } else {
      __m256 b[8];
      for (int i = 0; i < 8; ++i) b[i] = i < n ? a[i] : _mm256_setzero_ps();
      alignas(32) float all[8];
      _mm256_store_ps(all, sum8(b));
      for (int i = 0; i < n; ++i) out[i] = all[i];
    }
  }
  static void keep(F& v) { __asm__("" : "+x"(v)); }
  // A volatile asm: GCC deletes a loop whose only effect is _mm_prefetch or
  // __builtin_prefetch once its cursor state is dead (clang keeps it).
  static void prefetch(const void* p) {
    __asm__ volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
  }
  static void prefetch_l2(const void* p) {
    __asm__ volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p)));
  }
  static void prefetch_row(const void* p) { prefetch(p); }

  // int8 rows in the integer domain.
  static I32 izero() { return _mm256_setzero_si256(); }
  static I16 load_i8_i16(const std::int8_t* p) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static I16 load_i16(const std::int16_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static I32 dot_pairs(I32 acc, I16 a, I16 b) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
  }
  static I16 interleave_i8(const std::int8_t* a, const std::int8_t* b) {
    const __m128i ra = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(a));
    const __m128i rb = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b));
    return _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(ra, rb));
  }
  static void interleave2_i8(const std::int8_t* a, const std::int8_t* b, I16* x) {
    const __m128i ra = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a));
    const __m128i rb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
    x[0] = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(ra, rb));
    x[1] = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(ra, rb));
  }
  static void pairs_order(I32&, I32&) {}  // interleave2_i8's pairs are in order
  static I16 broadcast_pair(const std::int16_t* w) {
    std::int32_t both;
    std::memcpy(&both, w, sizeof both);
    return _mm256_set1_epi32(both);
  }
  static F to_float(I32 a) { return _mm256_cvtepi32_ps(a); }
  // Rows of g values, g a power of two <= 4 (quantize_weights).
  static F expand_rows(const float* f, Index g) {  // lane i: f[i / g]; reads 8 / g values
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    if (g == 1) return _mm256_loadu_ps(f);
    const __m256i take = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(8 / g)), lane);
    const __m128i shift = _mm_cvtsi32_si128(__builtin_ctzll(std::uint64_t(g)));
    return _mm256_permutevar8x32_ps(_mm256_maskload_ps(f, take), _mm256_srl_epi32(lane, shift));
  }
  static void split_rows(F x0, F x1, Index g, F& even, F& odd) {
    // Within each vector: the even rows' values to the low half, the odd rows' to the high.
    const __m128i shift = _mm_cvtsi32_si128(__builtin_ctzll(std::uint64_t(g)));
    const __m256i i = _mm256_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3);
    const __m256i idx =
        _mm256_add_epi32(_mm256_add_epi32(i, _mm256_sll_epi32(_mm256_srl_epi32(i, shift), shift)),
                         _mm256_setr_epi32(0, 0, 0, 0, int(g), int(g), int(g), int(g)));
    const F y0 = _mm256_permutevar8x32_ps(x0, idx), y1 = _mm256_permutevar8x32_ps(x1, idx);
    even = _mm256_permute2f128_ps(y0, y1, 0x20);
    odd = _mm256_permute2f128_ps(y0, y1, 0x31);
  }
  static void scaled_sums_i32(const I32* a, int n, const float* f, float* out) {
    if (n == 8) {
      _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_cvtepi32_ps(isum8(a)), _mm256_loadu_ps(f)));
      return;
    }
    __m256i b[8];
    for (int i = 0; i < 8; ++i) b[i] = i < n ? a[i] : _mm256_setzero_si256();
    alignas(32) float all[8];
    _mm256_store_ps(all, _mm256_cvtepi32_ps(isum8(b)));
    for (int i = 0; i < n; ++i) out[i] = all[i] * f[i];
  }
  static void store_i16(std::int16_t* out, F x) {
    const __m256i i = _mm256_cvtps_epi32(x);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out),
                     _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1)));
  }
  static void store_pairs_i16(std::int16_t* out, F a, F b) {
    const __m256i ia = _mm256_cvtps_epi32(a), ib = _mm256_cvtps_epi32(b);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                        _mm256_blend_epi16(ia, _mm256_slli_epi32(ib, 16), 0xAA));
  }
  using QAcc = __m256;
  static QAcc qzero() { return _mm256_setzero_ps(); }
  static float qreduce(QAcc a) { return sum1(a); }
  template <Index kBlockBytes>
  static void qdot4(const std::uint8_t* const* r, Index at, const BlockQ8_0* x, QAcc* acc) {
    avx2::qdot4<kBlockBytes>(r, at, x, acc, qdot32);
  }
};

#include <kvattn/kernels/generic_inl.hpp>
#include <kvattn/kernels/generic_quant_inl.hpp>

#undef KVATTN_KERNEL_INTEGER

}  // namespace kvattn::kernels::avx2

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

namespace kvattn::kernels::avx2 {
#include <kvattn/kernels/generic_table_inl.hpp>
}  // namespace kvattn::kernels::avx2
