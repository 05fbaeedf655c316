// The kernels of generic_inl.hpp, continued: int8 rows in the integer domain.
// Included by generic_inl.hpp only (no include guard: it compiles inside a
// target's namespace and instruction-set region, once per target).

// ---------------------------------------------------------------------------
// int8 rows in the integer domain (targets with kIntegerDot): each query
// head is rounded to int16 once per chunk with its own scale (|error| <=
// max|q_r| / 65534 per element), dotted exactly with the int8 key codes in
// int32 (pairs of int16 products per instruction), scaled back per (row,
// head); the softmax weights times the value row scales are rounded to int16
// with one scale per chunk and two rows are interleaved so that one
// instruction adds both rows' products. int32 sums stay exact up to head_dim
// 512 (scores: hd * 127 * 32767 < 2^31, the lanes' reduction included;
// larger head dims take the float path) and 256 rows per call (values).
// ---------------------------------------------------------------------------

inline constexpr Index kMaxIntegerHeadDim = 512;  // hd * 127 * 32767 < 2^31: the lanes' sum too

/// Whether the integer kernels take this head_dim on this target.
inline bool integer_head_dim(Index hd) {
  return V::kIntegerDot && hd % (2 * L) == 0 && hd <= kMaxIntegerHeadDim;
}

/// Largest |x[i]| of n values, and whether all are finite.
inline float abs_max(const float* x, Index n, bool& finite) {
  F mx = V::zero(), bad = V::zero();
  const Index full = n - n % L;
  for (Index d = 0; d < full; d += L) {
    const F v = V::loadu(x + d);
    mx = V::max(mx, V::abs(v));
    bad = V::add(bad, V::mul(v, V::zero()));  // 0 for finite values, NaN otherwise
  }
  alignas(64) float lanes[2 * L];
  V::storeu(lanes, mx);
  V::storeu(lanes + L, bad);
  float amax = 0.0f, flag = 0.0f;
  for (int i = 0; i < L; ++i) {
    amax = std::max(amax, lanes[i]);
    flag += lanes[L + i];
  }
  for (Index d = full; d < n; ++d) {
    amax = std::max(amax, std::fabs(x[d]));
    flag += x[d] * 0.0f;
  }
  finite = flag == 0.0f;
  return amax;
}

#if defined(KVATTN_KERNEL_INTEGER)

/// q16[r*hd + d] = round(q[r*hd + d] / qs[r]), qs[r] = max_d |q[r*hd + d]| / 32767
/// (a zero head: qs 0, codes 0; a head with a NaN or infinity: qs NaN, so
/// its scores are NaN as a float dot product's would be).
inline void quantize_query(const float* q, Index g, Index hd, std::int16_t* q16, float* qs) {
  for (Index r = 0; r < g; ++r) {
    const float* x = q + r * hd;
    bool finite = true;
    const float amax = abs_max(x, hd, finite);
    const float inv = finite && amax > 0.0f ? 32767.0f / amax : 0.0f;
    qs[r] = finite ? amax / 32767.0f : std::numeric_limits<float>::quiet_NaN();
    for (Index d = 0; d < hd; d += L) {
      V::store_i16(q16 + r * hd + d, V::round(V::mul(V::loadu(x + d), V::set1(inv))));
    }
  }
}

/// int16 code of a weight in [0, 32767] (0 for NaN: its l is NaN anyway).
KVATTN_KERNEL_INLINE std::int16_t weight_code(float x) {
  const float r = round_even(x);
  return r >= 0.0f && r <= 32767.0f ? static_cast<std::int16_t>(r) : std::int16_t(0);
}

/// Weights for the integer value sum, from softmax numerators p [n x g] and
/// value row scales vs [n]:  p[j*g + r] * vs[j] ~ ws * c,  c in [0, 32767],
/// ws = max_j vs[j] / 32767 (returned; NaN when a scale is not finite).
/// Codes of rows 2i and 2i+1 for head r are adjacent at w16[2*g*i + 2*r] (a
/// missing last odd row has code 0).
inline float quantize_weights(const float* p, Index n, Index g, const float* vs,
                              std::int16_t* w16) {
  bool finite = true;
  const float vmax = abs_max(vs, n, finite);
  const float ws = finite ? vmax / 32767.0f : std::numeric_limits<float>::quiet_NaN();
  const float inv = finite && vmax > 0.0f ? 32767.0f / vmax : 0.0f;
  Index j = 0;
  if (2 * g <= L && (g & (g - 1)) == 0) {  // 2 L / g rows per step, even and odd rows split
    const Index step = 2 * L / g;
    for (; j + step <= n; j += step) {
      const float* p0 = p + j * g;
      const F x0 = V::mul(V::loadu(p0), V::mul(V::expand_rows(vs + j, g), V::set1(inv)));
      const F x1 =
          V::mul(V::loadu(p0 + L), V::mul(V::expand_rows(vs + j + L / g, g), V::set1(inv)));
      F even, odd;
      V::split_rows(x0, x1, g, even, odd);
      V::store_pairs_i16(w16 + j * g, V::round(even), V::round(odd));
    }
  }
  for (; j < n; j += 2) {
    const float f0 = vs[j] * inv, f1 = j + 1 < n ? vs[j + 1] * inv : 0.0f;
    const float* p0 = p + j * g;
    const float* p1 = j + 1 < n ? p0 + g : p0;  // times f1 = 0 when missing
    std::int16_t* out = w16 + j * g;            // pair j/2 starts at 2*g*(j/2)
    Index r = 0;
    for (; r + L <= g; r += L) {
      V::store_pairs_i16(out + 2 * r, V::round(V::mul(V::loadu(p0 + r), V::set1(f0))),
                         V::round(V::mul(V::loadu(p1 + r), V::set1(f1))));
    }
    for (; r < g; ++r) {
      out[2 * r] = weight_code(p0[r] * f0);
      out[2 * r + 1] = weight_code(p1[r] * f1);
    }
  }
  return ws;
}

template <int R, int H>
KVATTN_KERNEL_INLINE void scores_tile_i8(const std::int16_t* q16, [[maybe_unused]] const float* qs,
                                         [[maybe_unused]] const float* qt, Index g, Index hd,
                                         const std::int8_t* const* k, const float* c, float scale,
                                         float* s, Prefetch<std::int8_t>& pf) {
  typename V::I32 acc[R * H];
  KVATTN_UNROLL
  for (int i = 0; i < R * H; ++i) acc[i] = V::izero();
  pf.part();  // the tile's hints, before its loop (inside, they cost registers)
  for (Index d = 0; d < hd; d += 2 * L) {
    typename V::I16 kv[R];
    KVATTN_UNROLL
    for (int r = 0; r < R; ++r) kv[r] = V::load_i8_i16(k[r] + d);
    KVATTN_UNROLL
    for (int h = 0; h < H; ++h) {
      const typename V::I16 qv = V::load_i16(q16 + h * hd + d);
      KVATTN_UNROLL
      for (int r = 0; r < R; ++r) acc[r * H + h] = V::dot_pairs(acc[r * H + h], kv[r], qv);
    }
  }
  alignas(64) float f[R * H];
  if constexpr (R * H == L && 2 * H <= L) {  // scale * c[r] * qs[h] in one vector
    V::storeu(f, V::mul(V::mul(V::expand_rows(c, H), V::set1(scale)), V::loadu(qt)));
  } else {
    KVATTN_UNROLL
    for (int r = 0; r < R; ++r) {
      KVATTN_UNROLL
      for (int h = 0; h < H; ++h) f[r * H + h] = scale * c[r] * qs[h];
    }
  }
  if (H == g) {  // the tile's scores are R whole rows of s, one run of R * H
    V::scaled_sums_i32(acc, R * H, f, s);
    return;
  }
  float out[R * H];
  V::scaled_sums_i32(acc, R * H, f, out);
  KVATTN_UNROLL
  for (int r = 0; r < R; ++r) {
    KVATTN_UNROLL
    for (int h = 0; h < H; ++h) s[r * g + h] = out[r * H + h];
  }
}

struct ScoresI8Op {
  const std::int16_t* q16;
  const float* qs;
  Index g, hd;
  const std::int8_t* const* k;
  const float* c;
  Index n;
  float scale;
  float* s;
  Prefetch<std::int8_t> pf;

  template <int H>
  void run(Index r) {
    constexpr int R = kAcc / H > 0 ? kAcc / H : 1;
    Prefetch<std::int8_t> hints = r == 0 ? pf : Prefetch<std::int8_t>{}, none;
    hints.split(n / R);           // one group of hints per tile
    alignas(64) float qt[R * H];  // qt[i * H + h] = qs[r + h]
    for (int i = 0; i < R * H; ++i) qt[i] = qs[r + i % H];
    Index j = 0;
    for (; j + R <= n; j += R) {
      scores_tile_i8<R, H>(q16 + r * hd, qs + r, qt, g, hd, k + j, c + j, scale, s + j * g + r,
                           hints);
    }
    for (; j < n; ++j) {
      scores_tile_i8<1, H>(q16 + r * hd, qs + r, qt, g, hd, k + j, c + j, scale, s + j * g + r,
                           none);
    }
  }
};

template <int H, int D>
KVATTN_KERNEL_INLINE void accumulate_pair(const std::int16_t* wp, const typename V::I16* x,
                                          typename V::I32* acc) {
  KVATTN_UNROLL
  for (int h = 0; h < H; ++h) {
    const typename V::I16 w = V::broadcast_pair(wp + 2 * h);
    KVATTN_UNROLL
    for (int e = 0; e < D; ++e) acc[h * D + e] = V::dot_pairs(acc[h * D + e], x[e], w);
  }
}

/// x[e] = the pairs (a[e*L + i], b[e*L + i]) for D vectors (two per load where D is even).
template <int D>
KVATTN_KERNEL_INLINE void interleave_rows(const std::int8_t* a, const std::int8_t* b,
                                          typename V::I16* x) {
  if constexpr (D % 2 == 0) {
    KVATTN_UNROLL
    for (int e = 0; e < D; e += 2) V::interleave2_i8(a + e * L, b + e * L, x + e);
  } else {
    KVATTN_UNROLL
    for (int e = 0; e < D; ++e) x[e] = V::interleave_i8(a + e * L, b + e * L);
  }
}

template <int H, int D>
KVATTN_KERNEL_INLINE void accumulate_tile_i8(const std::int16_t* w16, Index g, Index hd,
                                             const std::int8_t* const* v, Index n, Index d,
                                             float ws, float* o, Prefetch<std::int8_t>& pf) {
  alignas(64) static constexpr std::int8_t zeros[kAcc * L] = {};  // D * L <= kAcc * L bytes
  typename V::I32 acc[H * D];
  KVATTN_UNROLL
  for (int i = 0; i < H * D; ++i) acc[i] = V::izero();
  const Index pairs_end = n - n % 2;
  Index j = 0;
  for (; j < pairs_end; j += 2) {  // a group of hints every kHintEvery row pairs
    if (j / 2 % V::kHintEvery == 0) pf.part();
    typename V::I16 x[D];
    interleave_rows<D>(v[j] + d, v[j + 1] + d, x);
    accumulate_pair<H, D>(w16 + j * g, x, acc);
  }
  if (j < n) {  // an odd last row, paired with a row of zeros (its code is 0 too)
    typename V::I16 x[D];
    interleave_rows<D>(v[j] + d, zeros, x);
    accumulate_pair<H, D>(w16 + j * g, x, acc);
  }
  if constexpr (D % 2 == 0) {  // interleave2_i8's pair order, undone
    KVATTN_UNROLL
    for (int h = 0; h < H; ++h) {
      KVATTN_UNROLL
      for (int e = 0; e < D; e += 2) V::pairs_order(acc[h * D + e], acc[h * D + e + 1]);
    }
  }
  const F scale = V::set1(ws);
  KVATTN_UNROLL
  for (int h = 0; h < H; ++h) {
    KVATTN_UNROLL
    for (int e = 0; e < D; ++e) {
      float* out = o + h * hd + d + e * L;
      V::storeu(out, V::fma(V::to_float(acc[h * D + e]), scale, V::loadu(out)));
    }
  }
}

struct AccumulateI8Op {
  const std::int16_t* w16;
  Index g, hd;
  const std::int8_t* const* v;
  Index n;
  float ws;
  float* o;
  Prefetch<std::int8_t> pf;

  template <int H>
  void run(Index r) {
    constexpr int D = kAcc / H > 0 ? kAcc / H : 1;
    Prefetch<std::int8_t> hints = r == 0 ? pf : Prefetch<std::int8_t>{};
    hints.split(hint_groups(n / 2) * (hd / (D * L) + (hd % (D * L)) / L));
    float* out = o + r * hd;
    Index d = 0;
    for (; d + D * L <= hd; d += D * L) {
      accumulate_tile_i8<H, D>(w16 + 2 * r, g, hd, v, n, d, ws, out, hints);
    }
    for (; d < hd; d += L) accumulate_tile_i8<H, 1>(w16 + 2 * r, g, hd, v, n, d, ws, out, hints);
  }
};

#endif  // KVATTN_KERNEL_INTEGER
