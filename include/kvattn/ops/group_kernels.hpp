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
/// agree to rounding. int8 rows with head_dim % 16 == 0 have integer forms
/// (group_scores_i8, group_accumulate_i8, below) whose only extra error is the
/// int16 rounding of the queries and of the softmax weights.

#include <kvattn/ops/simd.hpp>
#include <kvattn/types.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(KVATTN_SIMD_AVX2)
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

// The integer tiles are inlined into their row loops (a call per tile of two
// rows cost about 5% of the int8 step: prologue, spills, zeroing).
#if defined(__GNUC__)
#define KVATTN_TILE_INLINE __attribute__((always_inline)) inline
#else
#define KVATTN_TILE_INLINE inline
#endif

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

/// Stores a finished R x H tile of dot products (float lanes acc[r*H + h])
/// as s[r*g + h] = f[r*H + h] * acc.
template <int R, int H>
inline void store_scores(const __m256* acc, const float* f, Eigen::Index g, float* s) {
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
    for (int r = 0; r < R; ++r) {
      kv[r] = load8(k + r * hd + d);
      if constexpr (H > 1) keep_in_register(kv[r]);  // else one use: a folded load is best
    }
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
  store_scores<R, H>(acc, f, g, s);
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
    for (int e = 0; e < D; ++e) {
      x[e] = load8(v + j * hd + 8 * e);
      if constexpr (H > 1) keep_in_register(x[e]);
    }
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

// ---------------------------------------------------------------------------
// int8 storage in the integer domain. A float FMA does 8 multiply-adds; a
// vpmaddwd does 16 (int16 x int16 pairs summed into int32) at the same issue
// rate, and the int8 -> int16 widening is one instruction per 16 values
// instead of two per 8 (int8 -> int32 -> float). So with int8 rows:
//   scores: each query head is quantized once per chunk to int16 with its own
//           scale (|error| <= half a step = max|q_r| / 65534 per element,
//           far below the int8 key's own rounding), dotted with the widened
//           key codes in int32, and scaled back to float per (row, head);
//   values: the softmax weights times the value row scales are quantized to
//           int16 with one scale per chunk (quantize_weights), and two rows
//           are interleaved so that one vpmaddwd adds both rows' products.
// Exact int32 arithmetic: |code| <= 128 and |int16| <= 32767, so a lane adds
// at most 2 * 128 * 32767 per vpmaddwd: scores stay exact up to head_dim
// 4096 (kMaxIntegerHeadDim), values up to kMaxIntegerRows rows per call.
// ---------------------------------------------------------------------------

inline constexpr Eigen::Index kMaxIntegerHeadDim = 4096;
inline constexpr Eigen::Index kMaxIntegerRows = 256;

/// Whether the int8 integer kernels handle this head_dim.
inline bool integer_head_dim(Eigen::Index hd) { return hd % 16 == 0 && hd <= kMaxIntegerHeadDim; }

/// Rounds 8 floats (|x| <= 32767) to nearest even and narrows them to int16.
inline __m128i round_to_i16(__m256 x) {
  const __m256i i = _mm256_cvtps_epi32(x);
  return _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
}

/// q16[r*hd + d] = round(q[r*hd + d] / qs[r]),  qs[r] = max_d |q[r*hd + d]| / 32767
/// (a zero head has qs = 0 and zero codes).  hd % 16 == 0.
inline void quantize_query(const float* q, Eigen::Index g, Eigen::Index hd, std::int16_t* q16,
                           float* qs) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (Eigen::Index r = 0; r < g; ++r) {
    const float* x = q + r * hd;
    __m256 mx = _mm256_setzero_ps();
    for (Eigen::Index d = 0; d < hd; d += 8) {
      mx = _mm256_max_ps(mx, _mm256_and_ps(_mm256_loadu_ps(x + d), abs_mask));
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, mx);
    const float amax = *std::max_element(lanes, lanes + 8);
    // A NaN or infinite query has no scale: inv = 0 gives zero codes, and qs
    // = amax carries the NaN or infinity into the scores, as a float dot would.
    const float inv =
        amax > 0.0f && amax <= std::numeric_limits<float>::max() ? 32767.0f / amax : 0.0f;
    qs[r] = amax / 32767.0f;
    const __m256 iv = _mm256_set1_ps(inv);
    for (Eigen::Index d = 0; d < hd; d += 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q16 + r * hd + d),
                       round_to_i16(_mm256_mul_ps(_mm256_loadu_ps(x + d), iv)));
    }
  }
}

/// Weights for the integer value accumulation, from softmax numerators p
/// [n x g] (position-major, each in [0, 1]) and the value row scales vs[n]:
///   w[j*g + r] = p[j*g + r] * vs[j] ~ ws * c,  c = round(w / ws) in [0, 32767],
///   ws = max_j vs[j] / 32767 (returned).
/// Codes are stored in row pairs, c of rows 2i and 2i+1 for head r adjacent at
/// w16[2*g*i + 2*r] (a missing last odd row has code 0), so one 32-bit
/// broadcast feeds both rows to vpmaddwd. Each code is off by at most half a
/// step, max_j vs[j] / 65534 (plus float rounding of the product, ~3 ulp of
/// 32767).
inline float quantize_weights(const float* p, Eigen::Index n, Eigen::Index g, const float* vs,
                              std::int16_t* w16) {
  const float vmax = std::max(0.0f, Eigen::Map<const Eigen::ArrayXf>(vs, n).maxCoeff());
  const float ws = vmax / 32767.0f;
  const float inv =
      vmax > 0.0f && vmax <= std::numeric_limits<float>::max() ? 32767.0f / vmax : 0.0f;
  for (Eigen::Index j = 0; j < n; j += 2) {
    const float f0 = vs[j] * inv, f1 = j + 1 < n ? vs[j + 1] * inv : 0.0f;
    const float* p0 = p + j * g;
    const float* p1 = j + 1 < n ? p0 + g : p0;  // times f1 = 0 when missing
    std::int16_t* out = w16 + j * g;            // pair j/2 starts at 2*g*(j/2)
    Eigen::Index r = 0;
    for (; r + 8 <= g; r += 8) {
      const __m256i a =
          _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p0 + r), _mm256_set1_ps(f0)));
      const __m256i b =
          _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p1 + r), _mm256_set1_ps(f1)));
      // a's code in the low 16 bits of each 32-bit lane, b's in the high
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2 * r),
                          _mm256_blend_epi16(a, _mm256_slli_epi32(b, 16), 0xAA));
    }
    for (; r + 4 <= g; r += 4) {
      const __m128i a = _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(p0 + r), _mm_set1_ps(f0)));
      const __m128i b = _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(p1 + r), _mm_set1_ps(f1)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * r),
                       _mm_blend_epi16(a, _mm_slli_epi32(b, 16), 0xAA));
    }
    for (; r < g; ++r) {  // round to nearest even, as the vector lanes do
      out[2 * r] = static_cast<std::int16_t>(_mm_cvtss_si32(_mm_set_ss(p0[r] * f0)));
      out[2 * r + 1] = static_cast<std::int16_t>(_mm_cvtss_si32(_mm_set_ss(p1[r] * f1)));
    }
  }
  return ws;
}

/// s[r*g + h] = scale * c_r * qs_h * (q16_h . k_r) for R int8 rows and H heads.
template <int R, int H>
KVATTN_TILE_INLINE void scores_tile_i8(const std::int16_t* q16, const float* qs, Eigen::Index g,
                                       Eigen::Index hd, const std::int8_t* k, const float* c,
                                       float scale, float* s) {
  __m256i acc[R * H];
  KVATTN_UNROLL
  for (int i = 0; i < R * H; ++i) acc[i] = _mm256_setzero_si256();
  for (Eigen::Index d = 0; d < hd; d += 16) {
    __m256i kv[R];
    KVATTN_UNROLL
    for (int r = 0; r < R; ++r) {
      kv[r] =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(k + r * hd + d)));
    }
    KVATTN_UNROLL
    for (int h = 0; h < H; ++h) {
      // Loaded once per row (folded into vpmaddwd): the tile's 8 int32
      // accumulators, R key vectors and the products already take the
      // 16 registers.
      const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q16 + h * hd + d));
      KVATTN_UNROLL
      for (int r = 0; r < R; ++r) {
        acc[r * H + h] = _mm256_add_epi32(acc[r * H + h], _mm256_madd_epi16(kv[r], qv));
      }
    }
  }
  __m256 facc[R * H];
  alignas(32) float f[8];
  KVATTN_UNROLL
  for (int r = 0; r < R; ++r) {
    KVATTN_UNROLL
    for (int h = 0; h < H; ++h) {
      facc[r * H + h] = _mm256_cvtepi32_ps(acc[r * H + h]);
      f[r * H + h] = scale * c[r] * qs[h];
    }
  }
  store_scores<R, H>(facc, f, g, s);
}

template <int H>
inline void scores_heads_i8(const std::int16_t* q16, const float* qs, Eigen::Index g,
                            Eigen::Index hd, const std::int8_t* k, const float* c, Eigen::Index n,
                            float scale, float* s, Prefetch pf) {
  constexpr int R = 8 / H;
  pf.split(n / R);
  Eigen::Index j = 0;
  for (Eigen::Index i = 0; j + R <= n; j += R, ++i) {
    pf.part(i);
    scores_tile_i8<R, H>(q16, qs, g, hd, k + j * hd, c + j, scale, s + j * g);
  }
  for (; j < n; ++j) scores_tile_i8<1, H>(q16, qs, g, hd, k + j * hd, c + j, scale, s + j * g);
}

/// Two int8 rows a, b of 8*D values interleaved and widened: x[e] holds
/// (a[8e], b[8e], ..., a[8e+7], b[8e+7]) as int16.
template <int D>
inline void interleave_rows(const std::int8_t* a, const std::int8_t* b, __m256i* x) {
  if constexpr (D % 2 == 0) {
    for (int e = 0; e < D; e += 2) {
      const __m128i ra = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + 8 * e));
      const __m128i rb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 8 * e));
      x[e] = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(ra, rb));
      x[e + 1] = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(ra, rb));
    }
  } else {
    for (int e = 0; e < D; ++e) {
      const __m128i ra = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(a + 8 * e));
      const __m128i rb = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 8 * e));
      x[e] = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(ra, rb));
    }
  }
}

/// acc[h*D + e] += w_h . x[e] for the pair codes of H heads at wp.
template <int H, int D>
inline void accumulate_pair(const std::int16_t* wp, const __m256i* x, __m256i* acc) {
  KVATTN_UNROLL
  for (int h = 0; h < H; ++h) {
    std::int32_t both;
    std::memcpy(&both, wp + 2 * h, sizeof both);
    const __m256i w = _mm256_set1_epi32(both);
    KVATTN_UNROLL
    for (int e = 0; e < D; ++e) {
      acc[h * D + e] = _mm256_add_epi32(acc[h * D + e], _mm256_madd_epi16(x[e], w));
    }
  }
}

/// o[h*hd + 8e + i] += ws * sum_{j<n} w_jh v_j[8e + i] for H heads and D
/// vectors of 8 values, int8 rows v and weight codes w16 in row pairs
/// (quantize_weights; w16 points at the pair of row 0, n counts rows).
template <int H, int D>
KVATTN_TILE_INLINE void accumulate_tile_i8(const std::int16_t* w16, Eigen::Index g, Eigen::Index hd,
                                           const std::int8_t* v, Eigen::Index n, float ws,
                                           float* o) {
  __m256i acc[H * D];
  KVATTN_UNROLL
  for (int i = 0; i < H * D; ++i) acc[i] = _mm256_setzero_si256();
  Eigen::Index j = 0;
  for (; j + 2 <= n; j += 2) {
    __m256i x[D];
    interleave_rows<D>(v + j * hd, v + (j + 1) * hd, x);
    accumulate_pair<H, D>(w16 + j * g, x, acc);
  }
  if (j < n) {  // an odd last row, paired with a row of zeros (its code is 0 too)
    alignas(16) static constexpr std::int8_t zeros[64] = {};
    __m256i x[D];
    interleave_rows<D>(v + j * hd, zeros, x);
    accumulate_pair<H, D>(w16 + j * g, x, acc);
  }
  const __m256 scale = _mm256_set1_ps(ws);
  KVATTN_UNROLL
  for (int h = 0; h < H; ++h) {
    KVATTN_UNROLL
    for (int e = 0; e < D; ++e) {
      float* out = o + h * hd + 8 * e;
      _mm256_storeu_ps(
          out, _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[h * D + e]), scale, _mm256_loadu_ps(out)));
    }
  }
}

template <int H>
inline void accumulate_heads_i8(const std::int16_t* w16, Eigen::Index g, Eigen::Index hd,
                                const std::int8_t* v, Eigen::Index n, float ws, float* o,
                                Prefetch pf) {
  constexpr int D = 8 / H;
  pf.split(hd / (8 * D));
  Eigen::Index d = 0;
  for (Eigen::Index i = 0; d + 8 * D <= hd; d += 8 * D, ++i) {
    pf.part(i);
    accumulate_tile_i8<H, D>(w16, g, hd, v + d, n, ws, o + d);
  }
  for (; d < hd; d += 8) accumulate_tile_i8<H, 1>(w16, g, hd, v + d, n, ws, o + d);
}

#undef KVATTN_UNROLL
#undef KVATTN_TILE_INLINE

/// Integer form of group_scores for int8 keys:
///   s[j*g + r] = scale * c_j * qs_r * (q16_r . k_j)   (quantize_query gives q16, qs)
inline void group_scores_i8(const std::int16_t* q16, const float* qs, Eigen::Index g,
                            Eigen::Index hd, const std::int8_t* k, const float* c, Eigen::Index n,
                            float scale, float* s, const Prefetch& pf = {}) {
  eigen_assert(integer_head_dim(hd));
  const Prefetch none;
  Eigen::Index r = 0;
  for (; r + 8 <= g; r += 8) {
    scores_heads_i8<8>(q16 + r * hd, qs + r, g, hd, k, c, n, scale, s + r, r == 0 ? pf : none);
  }
  if (r + 4 <= g) {
    scores_heads_i8<4>(q16 + r * hd, qs + r, g, hd, k, c, n, scale, s + r, r == 0 ? pf : none);
    r += 4;
  }
  if (r + 2 <= g) {
    scores_heads_i8<2>(q16 + r * hd, qs + r, g, hd, k, c, n, scale, s + r, r == 0 ? pf : none);
    r += 2;
  }
  if (r < g) {
    scores_heads_i8<1>(q16 + r * hd, qs + r, g, hd, k, c, n, scale, s + r, r == 0 ? pf : none);
  }
}

/// Integer form of group_accumulate for int8 values:
///   o[r*hd + d] += ws * sum_j w16_jr v_j[d]   (quantize_weights gives w16, ws)
/// w16 points at the pair of row 0; n <= kMaxIntegerRows rows.
inline void group_accumulate_i8(const std::int16_t* w16, Eigen::Index g, Eigen::Index hd,
                                const std::int8_t* v, Eigen::Index n, float ws, float* o,
                                const Prefetch& pf = {}) {
  eigen_assert(integer_head_dim(hd) && n <= kMaxIntegerRows);
  const Prefetch none;
  Eigen::Index r = 0;
  for (; r + 8 <= g; r += 8) {
    accumulate_heads_i8<8>(w16 + 2 * r, g, hd, v, n, ws, o + r * hd, r == 0 ? pf : none);
  }
  if (r + 4 <= g) {
    accumulate_heads_i8<4>(w16 + 2 * r, g, hd, v, n, ws, o + r * hd, r == 0 ? pf : none);
    r += 4;
  }
  if (r + 2 <= g) {
    accumulate_heads_i8<2>(w16 + 2 * r, g, hd, v, n, ws, o + r * hd, r == 0 ? pf : none);
    r += 2;
  }
  if (r < g) accumulate_heads_i8<1>(w16 + 2 * r, g, hd, v, n, ws, o + r * hd, r == 0 ? pf : none);
}

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
