#pragma once
/// \file
/// Vector building blocks shared by the kernels that read reduced-precision
/// data as stored (the decode attention kernels of group_kernels.hpp and the
/// matrix-vector product of linear.hpp): widening loads of 8 elements of
/// float, bfloat16, half or int8 into 8 floats, and horizontal sums.
/// KVATTN_SIMD_AVX2 is defined when the compiler targets AVX2, FMA and F16C
/// (e.g. -march=native on x86-64 since 2013); every user has a portable path.

#include <kvattn/types.hpp>

#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define KVATTN_SIMD_AVX2 1
#endif

#if defined(KVATTN_SIMD_AVX2)
namespace kvattn::ops::simd {

/// Makes the compiler load v once into a register instead of folding the
/// load into every FMA that uses it (one load per use: the load ports, not
/// the FMA units, would then bound the kernel).
inline void keep_in_register(__m256& v) {
#if defined(__GNUC__)
  __asm__("" : "+x"(v));
#else
  (void)v;
#endif
}

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const Eigen::bfloat16* p) {  // bfloat16 is the top half of a float
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline __m256 load8(const Eigen::half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m256 load8(const std::int8_t* p) {  // unscaled: the caller applies the row scale
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}

/// The 8 horizontal sums of a[0..8), in order, as one vector.
inline __m256 sum8(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]);
  const __m256 t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]);
  const __m256 t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1);  // sums of a0..a3: low half + high half
  const __m256 u1 = _mm256_hadd_ps(t2, t3);  // sums of a4..a7
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

inline float sum1(__m256 a) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 d = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(d, _mm_movehdup_ps(d)));
}

}  // namespace kvattn::ops::simd
#endif
