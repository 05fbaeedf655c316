#pragma once
/// \file
/// The two inner loops of a decode step, for the g query heads that share
/// one KV head, over n cached rows:
///
///   group_scores:     s[j*g + r]   = scale * c_j * q_r . k_j        r < g, j < n
///   group_accumulate: o[r*hd + d] += sum_j p[j*g + r] v_j[d]         r < g, d < hd
///
/// Scores are stored position-major ([n x g] row-major), so the scores of a
/// few rows for the whole group are one contiguous vector. Each key and value
/// row is read from memory once for the whole group.
///
/// Portable form (any T, rows already decoded to T, c_j = 1): Eigen matrix
/// products. AVX2/FMA/F16C form (namespace simd, float compute, head_dim a
/// multiple of 8): reads the rows as stored (float, bfloat16, half or int8,
/// where c_j is the row's scale; int8 value scales are folded into p by the
/// caller), widens each 8-element vector in a register, and keeps an 8-vector
/// register tile of accumulators:
///   scores:     R rows x H heads (2 x 4, 1 x 8, 4 x 2 or 8 x 1 by group size),
///               one loaded key vector feeding H FMAs, reduced together at the
///               end of the rows and stored as one vector;
///   accumulate: H heads x D vectors of the row (D = 8 / H) over all n rows,
///               one widened value vector feeding H FMAs.
/// Both do the same float operations up to summation order, so the two forms
/// agree to rounding.

#include <kvattn/types.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define KVATTN_GROUP_KERNELS_AVX2 1
#endif

namespace kvattn {
namespace ops {

/// Portable form.  q: [g x hd]  k: [n x hd]  s: [n x g]
template <class T>
void group_scores(const T* q, Eigen::Index g, Eigen::Index hd, const T* k, Eigen::Index n, T scale,
                  T* s) {
  using Rows = Eigen::Map<const RowMatrix<T>>;
  Eigen::Map<RowMatrix<T>> S(s, n, g);
  S.noalias() = Rows(k, n, hd) * Rows(q, g, hd).transpose();
  S *= scale;
}

/// Portable form.  p: [n x g]  v: [n x hd]  o: [g x hd], accumulated into
template <class T>
void group_accumulate(const T* p, Eigen::Index g, Eigen::Index hd, const T* v, Eigen::Index n,
                      T* o) {
  using Rows = Eigen::Map<const RowMatrix<T>>;
  Eigen::Map<RowMatrix<T>> O(o, g, hd);
  O.noalias() += Rows(p, n, g).transpose() * Rows(v, n, hd);
}

#if defined(KVATTN_GROUP_KERNELS_AVX2)
namespace simd {

// Fixed-trip loops over the accumulator tile are unrolled completely so that
// the tile lives in registers (GCC otherwise keeps a stack copy of the array
// and stores it on every iteration).
#define KVATTN_UNROLL _Pragma("GCC unroll 16")

/// A byte range to hint into cache while a kernel works, spread evenly over
/// its iterations (one burst of hints would stall on the few misses a core
/// can track, then leave memory idle while it computes).
struct Prefetch {
  const char* p = nullptr;
  Eigen::Index bytes = 0;

  /// Splits the range into `parts` parts; part(i) then issues part i.
  void split(Eigen::Index parts) {
    lines_ = (bytes + 63) / 64;
    per_part_ = parts > 0 ? (lines_ + parts - 1) / parts : lines_;
  }
  void part(Eigen::Index i) const {
#if defined(__GNUC__)
    const Eigen::Index end = std::min(lines_, (i + 1) * per_part_);
    for (Eigen::Index c = i * per_part_; c < end; ++c) __builtin_prefetch(p + 64 * c, 0, 3);
#else
    (void)i;
#endif
  }

 private:
  Eigen::Index lines_ = 0, per_part_ = 0;
};

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

/// s[r*g + h] = scale * c_r * q_h . k_r for R rows and H heads (c == nullptr: 1).
template <int R, int H, class S>
inline void scores_tile(const float* q, Eigen::Index g, Eigen::Index hd, const S* k, const float* c,
                        float scale, float* s) {
  __m256 acc[R * H];
  KVATTN_UNROLL
  for (int i = 0; i < R * H; ++i) acc[i] = _mm256_setzero_ps();
  for (Eigen::Index d = 0; d < hd; d += 8) {
    __m256 kv[R];
    KVATTN_UNROLL
    for (int r = 0; r < R; ++r) kv[r] = load8(k + r * hd + d);
    KVATTN_UNROLL
    for (int h = 0; h < H; ++h) {
      __m256 qv = _mm256_loadu_ps(q + h * hd + d);
      keep_in_register(qv);
      KVATTN_UNROLL
      for (int r = 0; r < R; ++r) acc[r * H + h] = _mm256_fmadd_ps(kv[r], qv, acc[r * H + h]);
    }
  }
  alignas(32) float f[8];  // per-lane factor: lane r*H + h holds row r's
  KVATTN_UNROLL
  for (int r = 0; r < R; ++r) {
    KVATTN_UNROLL
    for (int h = 0; h < H; ++h) f[r * H + h] = c != nullptr ? scale * c[r] : scale;
  }
  if constexpr (R * H == 8) {
    const __m256 out = _mm256_mul_ps(sum8(acc), _mm256_load_ps(f));
    if (H == g) {  // the tile is R whole rows of s: one store
      _mm256_storeu_ps(s, out);
    } else {
      alignas(32) float o[8];
      _mm256_store_ps(o, out);
      KVATTN_UNROLL
      for (int r = 0; r < R; ++r) {
        KVATTN_UNROLL
        for (int h = 0; h < H; ++h) s[r * g + h] = o[r * H + h];
      }
    }
  } else {
    KVATTN_UNROLL
    for (int r = 0; r < R; ++r) {
      KVATTN_UNROLL
      for (int h = 0; h < H; ++h) s[r * g + h] = f[r * H + h] * sum1(acc[r * H + h]);
    }
  }
}

/// H heads starting at q (and at column 0 of s), all n rows.
template <int H, class S>
inline void scores_heads(const float* q, Eigen::Index g, Eigen::Index hd, const S* k,
                         const float* c, Eigen::Index n, float scale, float* s, Prefetch pf) {
  constexpr int R = 8 / H;
  pf.split(n / R);
  Eigen::Index j = 0;
  for (Eigen::Index i = 0; j + R <= n; j += R, ++i) {
    pf.part(i);
    scores_tile<R, H>(q, g, hd, k + j * hd, c != nullptr ? c + j : nullptr, scale, s + j * g);
  }
  for (; j < n; ++j) {
    scores_tile<1, H>(q, g, hd, k + j * hd, c != nullptr ? c + j : nullptr, scale, s + j * g);
  }
}

/// o[h*hd + 8e + i] += sum_{j<n} p[j*g + h] v[j*hd + 8e + i] for H heads, D vectors.
template <int H, int D, class S>
inline void accumulate_tile(const float* p, Eigen::Index g, Eigen::Index hd, const S* v,
                            Eigen::Index n, float* o) {
  __m256 acc[H * D];
  KVATTN_UNROLL
  for (int i = 0; i < H * D; ++i) acc[i] = _mm256_setzero_ps();
  for (Eigen::Index j = 0; j < n; ++j) {
    __m256 x[D];
    KVATTN_UNROLL
    for (int e = 0; e < D; ++e) x[e] = load8(v + j * hd + 8 * e);
    KVATTN_UNROLL
    for (int h = 0; h < H; ++h) {
      const __m256 w = _mm256_broadcast_ss(p + j * g + h);
      KVATTN_UNROLL
      for (int e = 0; e < D; ++e) acc[h * D + e] = _mm256_fmadd_ps(w, x[e], acc[h * D + e]);
    }
  }
  KVATTN_UNROLL
  for (int h = 0; h < H; ++h) {
    KVATTN_UNROLL
    for (int e = 0; e < D; ++e) {
      float* out = o + h * hd + 8 * e;
      _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), acc[h * D + e]));
    }
  }
}

/// H heads starting at p's column 0 and o's row 0, the whole row.
template <int H, class S>
inline void accumulate_heads(const float* p, Eigen::Index g, Eigen::Index hd, const S* v,
                             Eigen::Index n, float* o, Prefetch pf) {
  constexpr int D = 8 / H;
  pf.split(hd / (8 * D));
  Eigen::Index d = 0;
  for (Eigen::Index i = 0; d + 8 * D <= hd; d += 8 * D, ++i) {
    pf.part(i);
    accumulate_tile<H, D>(p, g, hd, v + d, n, o + d);
  }
  for (; d < hd; d += 8) accumulate_tile<H, 1>(p, g, hd, v + d, n, o + d);
}

#undef KVATTN_UNROLL

/// Softmax parts of scores s [n x g] (position-major), per head r:
///   m_r = max_j s[j*g + r],  s[j*g + r] = exp(s[j*g + r] - m_r),  l_r = sum_j s[j*g + r].
/// The flat array repeats its head pattern every P = lcm(g, 8) floats, so
/// P/8 vector registers hold lane-wise maxima (and sums) of whole periods;
/// lanes are folded into heads at the end. Groups with P > 64 (g > 8 and not
/// a multiple of 8) take a scalar loop.
inline void softmax_parts(float* s, Eigen::Index n, Eigen::Index g, float* m, float* l) {
  Eigen::Index p = 8;
  while (p % g != 0) p += 8;  // lcm(g, 8)
  const Eigen::Index total = n * g;
  const Eigen::Index whole = p <= 64 ? total / p * p : 0;  // floats in whole periods
  const Eigen::Index vecs = p / 8;
  float* const tail = s + whole;  // starts at head 0, like `lane`
  const Eigen::Index tail_size = total - whole;
  alignas(32) float lane[64];
  // Head r's values in lane[0, p) and in the tail are every g-th from r;
  // each head is folded in a register and stored once.
  const auto fold = [g](const float* x, Eigen::Index size, Eigen::Index r, float acc, auto op) {
    for (Eigen::Index i = r; i < size; i += g) acc = op(acc, x[i]);
    return acc;
  };
  const auto max = [](float a, float b) { return std::max(a, b); };
  const auto plus = [](float a, float b) { return a + b; };

  if (whole > 0) {
    __m256 mx[8];
    for (Eigen::Index v = 0; v < vecs; ++v) mx[v] = _mm256_loadu_ps(s + 8 * v);
    for (Eigen::Index i = p; i < whole; i += p) {
      for (Eigen::Index v = 0; v < vecs; ++v) {
        mx[v] = _mm256_max_ps(mx[v], _mm256_loadu_ps(s + i + 8 * v));
      }
    }
    for (Eigen::Index v = 0; v < vecs; ++v) _mm256_store_ps(lane + 8 * v, mx[v]);
  }
  for (Eigen::Index r = 0; r < g; ++r) {
    float x = -std::numeric_limits<float>::infinity();
    if (whole > 0) x = fold(lane, p, r, x, max);
    m[r] = fold(tail, tail_size, r, x, max);
  }

  if (whole > 0) {  // one pass: subtract the maxima, exponentiate, store, sum
    for (Eigen::Index r = 0; r < g; ++r) {
      for (Eigen::Index i = r; i < p; i += g) lane[i] = m[r];
    }
    __m256 shift[8], sum[8];
    for (Eigen::Index v = 0; v < vecs; ++v) {
      shift[v] = _mm256_load_ps(lane + 8 * v);
      sum[v] = _mm256_setzero_ps();
    }
    for (Eigen::Index i = 0; i < whole; i += p) {
      for (Eigen::Index v = 0; v < vecs; ++v) {
        const __m256 e = Eigen::internal::pexp<Eigen::internal::Packet8f>(
            _mm256_sub_ps(_mm256_loadu_ps(s + i + 8 * v), shift[v]));
        _mm256_storeu_ps(s + i + 8 * v, e);
        sum[v] = _mm256_add_ps(sum[v], e);
      }
    }
    for (Eigen::Index v = 0; v < vecs; ++v) _mm256_store_ps(lane + 8 * v, sum[v]);
  }
  for (Eigen::Index r = 0; r < g; ++r) {
    for (Eigen::Index i = r; i < tail_size; i += g) tail[i] = std::exp(tail[i] - m[r]);
  }

  for (Eigen::Index r = 0; r < g; ++r) {
    float x = 0.0f;
    if (whole > 0) x = fold(lane, p, r, x, plus);
    l[r] = fold(tail, tail_size, r, x, plus);
  }
}

/// s[j*g + r] = scale * c_j * q_r . k_j   (c == nullptr: c_j = 1)
///   q: [g x hd] float   k: [n x hd] as stored   s: [n x g]   hd % 8 == 0
template <class S>
void group_scores(const float* q, Eigen::Index g, Eigen::Index hd, const S* k, const float* c,
                  Eigen::Index n, float scale, float* s, const Prefetch& pf = {}) {
  eigen_assert(hd % 8 == 0);
  const Prefetch none;
  Eigen::Index r = 0;
  for (; r + 8 <= g; r += 8) {
    scores_heads<8>(q + r * hd, g, hd, k, c, n, scale, s + r, r == 0 ? pf : none);
  }
  if (r + 4 <= g) {
    scores_heads<4>(q + r * hd, g, hd, k, c, n, scale, s + r, r == 0 ? pf : none);
    r += 4;
  }
  if (r + 2 <= g) {
    scores_heads<2>(q + r * hd, g, hd, k, c, n, scale, s + r, r == 0 ? pf : none);
    r += 2;
  }
  if (r < g) scores_heads<1>(q + r * hd, g, hd, k, c, n, scale, s + r, r == 0 ? pf : none);
}

/// o[r*hd + d] += sum_j p[j*g + r] v_j[d]
///   p: [n x g]   v: [n x hd] as stored (int8: row scales folded into p)
///   o: [g x hd]  hd % 8 == 0
template <class S>
void group_accumulate(const float* p, Eigen::Index g, Eigen::Index hd, const S* v, Eigen::Index n,
                      float* o, const Prefetch& pf = {}) {
  eigen_assert(hd % 8 == 0);
  const Prefetch none;
  Eigen::Index r = 0;
  for (; r + 8 <= g; r += 8) {
    accumulate_heads<8>(p + r, g, hd, v, n, o + r * hd, r == 0 ? pf : none);
  }
  if (r + 4 <= g) {
    accumulate_heads<4>(p + r, g, hd, v, n, o + r * hd, r == 0 ? pf : none);
    r += 4;
  }
  if (r + 2 <= g) {
    accumulate_heads<2>(p + r, g, hd, v, n, o + r * hd, r == 0 ? pf : none);
    r += 2;
  }
  if (r < g) accumulate_heads<1>(p + r, g, hd, v, n, o + r * hd, r == 0 ? pf : none);
}

}  // namespace simd
#endif

}  // namespace ops
}  // namespace kvattn
