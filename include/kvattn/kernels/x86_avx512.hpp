#pragma once
/// \file
/// The x86 AVX-512 targets (Skylake-SP and later, Zen 4 and later):
///   avx512      F, BW, VL, DQ: 16-lane float vectors, 32 registers;
///               bfloat16 and half widened in registers, int8 rows in the
///               integer domain by vpmaddwd.
///   avx512vnni  the same plus AVX512_VNNI (Cascade Lake and later, Zen 4):
///               int8 rows by vpdpwssd (int16 pair dot products with the add
///               fused). bfloat16 rows are widened here too: vdpbf16ps would
///               need the query and weights split in two bf16 halves to keep
///               float accuracy, two instructions per pair of products, and
///               measured slower (docs/kernels.md).
/// Compiled into every x86 build whatever its flags (function-level target
/// attributes); used only where the CPU has them. The intrinsics avoided
/// here (256 -> 512-bit casts, extracts with an undefined pass-through) make
/// GCC 12 warn about its own headers in the user's build.

#include <kvattn/kernels/common.hpp>
#include <kvattn/kernels/x86_avx2.hpp>

#include <immintrin.h>

// GCC 12 reports its own AVX-512 intrinsics (their undefined pass-through
// operands) as maybe-uninitialized wherever they are inlined: false
// positives, silenced for the kernels below only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#if defined(__clang__)
#pragma clang attribute push(                                                    \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))), \
    apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
KVATTN_KERNEL_OPTIMIZE
#endif

namespace kvattn::kernels::avx512 {

inline constexpr const char* kName = "avx512";
#define KVATTN_KERNEL_INTEGER 1

/// The upper 256 bits of a (without an undefined pass-through operand).
KVATTN_KERNEL_INLINE __m256 upper(__m512 a) {
  return _mm512_castps512_ps256(_mm512_shuffle_f32x4(a, a, 0xEE));
}
KVATTN_KERNEL_INLINE __m256i upper(__m512i a) {
  return _mm512_castsi512_si256(_mm512_shuffle_i32x4(a, a, 0xEE));
}

struct V {
  static constexpr int kLanes = 16;
  static constexpr int kTileAcc = 16;
  static constexpr int kGemmRows1 = 8, kGemmRows = 4, kGemmCols = 4;
  static constexpr bool kIntegerDot = true;
  static constexpr int kHintEvery = 1;
  using F = __m512;
  using I16 = __m512i;  // 32 int16
  using I32 = __m512i;  // 16 int32

  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float x) { return _mm512_set1_ps(x); }
  static F loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void storeu(float* p, F x) { _mm512_storeu_ps(p, x); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F load(const Eigen::bfloat16* p) {  // bfloat16 is the top half of a float
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static F load(const Eigen::half* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static F load(const std::int8_t* p) {  // unscaled codes
    return _mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F min(F a, F b) { return _mm512_min_ps(a, b); }
  static F abs(F a) {
    return _mm512_castsi512_ps(
        _mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7fffffff)));
  }
  static F round(F a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static F pow2(F n) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
  }
  /// Lane order: l_i + l_{i+8} first, then the AVX2 target's order on those 8.
  static void reduce(const F* a, int n, float* out) {
    if (n == 1) {
      out[0] = avx2::sum1(_mm256_add_ps(_mm512_castps512_ps256(a[0]), upper(a[0])));
      return;
    }
    for (int i0 = 0; i0 < n; i0 += 8) {
      __m256 b[8];
      for (int i = 0; i < 8; ++i) {
        b[i] = i0 + i < n ? _mm256_add_ps(_mm512_castps512_ps256(a[i0 + i]), upper(a[i0 + i]))
                          : _mm256_setzero_ps();
      }
      const __m256 sums = avx2::sum8(b);
      if (n - i0 >= 8) {
        _mm256_storeu_ps(out + i0, sums);
      } else {
        alignas(32) float all[8];
        _mm256_store_ps(all, sums);
        for (int i = 0; i0 + i < n; ++i) out[i0 + i] = all[i];
      }
    }
  }
  static void keep(F& v) { __asm__("" : "+v"(v)); }
  static void prefetch(const void* p) {  // volatile: see the AVX2 target
    __asm__ volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
  }
  static void prefetch_l2(const void* p) {
    __asm__ volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p)));
  }
  // Into L2: hints into L1 waited on the line fill buffers (docs/kernels.md).
  static void prefetch_row(const void* p) { prefetch_l2(p); }

  // int8 rows in the integer domain.
  static I32 izero() { return _mm512_setzero_si512(); }
  static I16 load_i8_i16(const std::int8_t* p) {
    return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static I16 load_i16(const std::int16_t* p) { return _mm512_loadu_si512(p); }
  static I32 dot_pairs(I32 acc, I16 a, I16 b) {
    return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
  }
  static I16 interleave_i8(const std::int8_t* a, const std::int8_t* b) {
    const __m128i ra = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a));
    const __m128i rb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
    const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi8(ra, rb)),
                                                 _mm_unpackhi_epi8(ra, rb), 1);
    return _mm512_cvtepi8_epi16(both);
  }
  // Pair order: x[0] lane 4k + m holds element 8k + m, x[1] lane 4k + m
  // element 8k + 4 + m (k, m < 4): two widenings and two in-lane unpacks,
  // half the shuffles of interleaving first; pairs_order undoes it.
  static void interleave2_i8(const std::int8_t* a, const std::int8_t* b, I16* x) {
    const __m512i wa = load_i8_i16(a), wb = load_i8_i16(b);
    x[0] = _mm512_unpacklo_epi16(wa, wb);
    x[1] = _mm512_unpackhi_epi16(wa, wb);
  }
  static void pairs_order(I32& x0, I32& x1) {
    const __m512i lo = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i hi =
        _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    const __m512i n0 = _mm512_permutex2var_epi32(x0, lo, x1);
    x1 = _mm512_permutex2var_epi32(x0, hi, x1);
    x0 = n0;
  }
  static I16 broadcast_pair(const std::int16_t* w) {
    std::int32_t both;
    std::memcpy(&both, w, sizeof both);
    return _mm512_set1_epi32(both);
  }
  static F to_float(I32 a) { return _mm512_cvtepi32_ps(a); }
  // Rows of g values, g a power of two <= 8 (quantize_weights).
  static __m512i lane_index() {
    return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  }
  static F expand_rows(const float* f, Index g) {  // lane i: f[i / g]; reads 16 / g values
    if (g == 1) return _mm512_loadu_ps(f);
    const __m128i shift = _mm_cvtsi32_si128(__builtin_ctzll(std::uint64_t(g)));
    const __m512 some = _mm512_maskz_loadu_ps(__mmask16((1u << (16 / g)) - 1), f);
    return _mm512_permutexvar_ps(_mm512_srl_epi32(lane_index(), shift), some);
  }
  static void split_rows(F x0, F x1, Index g, F& even, F& odd) {
    // Lane i of `even`: element i % g of row 2 (i / g) of x0 then x1, i.e. i + (i / g) g.
    const __m128i shift = _mm_cvtsi32_si128(__builtin_ctzll(std::uint64_t(g)));
    const __m512i i = lane_index();
    const __m512i idx = _mm512_add_epi32(i, _mm512_sll_epi32(_mm512_srl_epi32(i, shift), shift));
    even = _mm512_permutex2var_ps(x0, idx, x1);
    odd = _mm512_permutex2var_ps(x0, _mm512_add_epi32(idx, _mm512_set1_epi32(int(g))), x1);
  }
  /// Lane i: the sum of a[i]'s lanes, for 16 vectors (a tree of in-lane
  /// unpacks, then 128-bit lane shuffles: 30 shuffles in all).
  static __m512i isum16(const I32* a) {
    __m512i b[8], c[4], d[2];
    for (int i = 0; i < 8; ++i) {
      b[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2 * i], a[2 * i + 1]),
                              _mm512_unpackhi_epi32(a[2 * i], a[2 * i + 1]));
    }
    for (int i = 0; i < 4; ++i) {
      c[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(b[2 * i], b[2 * i + 1]),
                              _mm512_unpackhi_epi64(b[2 * i], b[2 * i + 1]));
    }
    for (int i = 0; i < 2; ++i) {
      d[i] = _mm512_add_epi32(_mm512_shuffle_i32x4(c[2 * i], c[2 * i + 1], 0x88),
                              _mm512_shuffle_i32x4(c[2 * i], c[2 * i + 1], 0xDD));
    }
    return _mm512_add_epi32(_mm512_shuffle_i32x4(d[0], d[1], 0x88),
                            _mm512_shuffle_i32x4(d[0], d[1], 0xDD));
  }
  static void scaled_sums_i32(const I32* a, int n, const float* f, float* out) {
    if (n == 16) {
      _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_cvtepi32_ps(isum16(a)), _mm512_loadu_ps(f)));
      return;
    }
    for (int i0 = 0; i0 < n; i0 += 8) {
      __m256i b[8];
      for (int i = 0; i < 8; ++i) {
        b[i] = i0 + i < n ? _mm256_add_epi32(_mm512_castsi512_si256(a[i0 + i]), upper(a[i0 + i]))
                          : _mm256_setzero_si256();
      }
      const __m256 sums = _mm256_cvtepi32_ps(avx2::isum8(b));
      if (n - i0 >= 8) {
        _mm256_storeu_ps(out + i0, _mm256_mul_ps(sums, _mm256_loadu_ps(f + i0)));
      } else {
        alignas(32) float all[8];
        _mm256_store_ps(all, sums);
        for (int i = 0; i0 + i < n; ++i) out[i0 + i] = all[i] * f[i0 + i];
      }
    }
  }
  static void store_i16(std::int16_t* out, F x) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                        _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(x)));
  }
  static void store_pairs_i16(std::int16_t* out, F a, F b) {
    const __m512i ia = _mm512_cvtps_epi32(a), ib = _mm512_cvtps_epi32(b);
    _mm512_storeu_si512(out, _mm512_mask_blend_epi16(0xAAAAAAAAu, ia, _mm512_slli_epi32(ib, 16)));
  }
  // Quantized blocks: 32 codes fill a 256-bit vector (AVX2's, with VL).
  using QAcc = __m256;
  static QAcc qzero() { return _mm256_setzero_ps(); }
  static float qreduce(QAcc a) { return avx2::sum1(a); }
  template <Index kBlockBytes>
  static void qdot4(const std::uint8_t* const* r, Index at, const BlockQ8_0* x, QAcc* acc) {
    avx2::qdot4<kBlockBytes>(r, at, x, acc, avx2::qdot32);
  }
};

#include <kvattn/kernels/generic_inl.hpp>
#include <kvattn/kernels/generic_quant_inl.hpp>

#undef KVATTN_KERNEL_INTEGER

}  // namespace kvattn::kernels::avx512

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

namespace kvattn::kernels::avx512 {
#include <kvattn/kernels/generic_table_inl.hpp>
}  // namespace kvattn::kernels::avx512

#if defined(__clang__)
#pragma clang attribute push(                                                               \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c"))), \
    apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
KVATTN_KERNEL_OPTIMIZE
#endif

namespace kvattn::kernels::avx512vnni {

inline constexpr const char* kName = "avx512vnni";
#define KVATTN_KERNEL_INTEGER 1

/// avx2::qdot32 by vpdpbusd: |w| (unsigned) times x with w's sign, in int32.
KVATTN_KERNEL_INLINE __m256i qdot32(__m256i w, __m256i x) {
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w, w),
                             _mm256_sign_epi8(x, w));
}

/// Q4_0 rows by vpdpbusd on the unsigned codes c in [0, 15]: the dot of
/// (c - 8) and x is c . x - 8 sum(x), and the second term, the same for
/// every row, is computed once per activation block and taken as the
/// accumulator's start (exact in int32, no sign or offset work per row).
KVATTN_KERNEL_INLINE void q4_0_dot4(const std::uint8_t* const* r, Index at, const BlockQ8_0* x,
                                    __m256* acc) {
  const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x->qs));
  const __m256i zero = _mm256_setzero_si256();
  const __m256i minus_8x =
      _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, _mm256_set1_epi8(8), xq));
  const float dx = _cvtsh_ss(x->d);
  const __m128i m = _mm_set1_epi8(15);
  KVATTN_UNROLL
  for (int k = 0; k < 4; ++k) {
    const std::uint8_t* block = r[k] + at;
    const __m128i b = avx2::q4_0_bytes(block);
    const __m256i codes =
        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_dpbusd_epi32(minus_8x, codes, xq)),
                             _mm256_set1_ps(avx2::block_scale(block) * dx), acc[k]);
  }
}

struct V : avx512::V {
  static I32 dot_pairs(I32 acc, I16 a, I16 b) { return _mm512_dpwssd_epi32(acc, a, b); }
  template <Index kBlockBytes>
  static void qdot4(const std::uint8_t* const* r, Index at, const BlockQ8_0* x, QAcc* acc) {
    if constexpr (kBlockBytes == kQ4_0Bytes) {
      q4_0_dot4(r, at, x, acc);
    } else {
      avx2::qdot4<kBlockBytes>(r, at, x, acc, qdot32);
    }
  }
};

#include <kvattn/kernels/generic_inl.hpp>
#include <kvattn/kernels/generic_quant_inl.hpp>

#undef KVATTN_KERNEL_INTEGER

}  // namespace kvattn::kernels::avx512vnni

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

namespace kvattn::kernels::avx512vnni {
#include <kvattn/kernels/generic_table_inl.hpp>
}  // namespace kvattn::kernels::avx512vnni

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
