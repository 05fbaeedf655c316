// The kernels, written once against the vector vocabulary `V` of a target.
//
// No include guard, on purpose: a target header includes this file inside
// its own namespace (kvattn::kernels::<target>), after defining `struct V`
// and with its instruction set enabled for every function defined here, so
// each target gets its own compiled copy (see kernels/README.md... the
// design note in docs/kernels.md). It includes nothing itself.
//
// V provides (all static; F holds kLanes floats):
//   F zero(), set1(float), loadu(const float*); void storeu(float*, F)
//   F load(const S*) for S = float, bfloat16, half, int8: kLanes values widened
//   F fma(a, b, c) = a*b + c;  add, sub, mul, div;  max(a, b), min(a, b)
//     (return b when either is NaN, as x86 does; NEON returns NaN)
//   F abs(F), round(F) (to nearest even), pow2(F n) = 2^n for integral n in [-126, 127]
//   void reduce(const F* a, int n, float* out): out[i] = the sum of a[i]'s
//     lanes in the target's one fixed order, for n <= kTileAcc vectors
//   void keep(F&): keep a value in a register (no load folded into each use)
//   void prefetch(const void*) (into L1), prefetch_l2(const void*)
//   kTileAcc: accumulator vectors a register tile may hold
//   kGemmRows1 (rows per tile for one vector), kGemmRows x kGemmCols (more)
//   kIntegerDot: whether the int8 integer kernels exist; if so also
//     I16 (2*kLanes int16), I32 (kLanes int32), izero(),
//     load_i8_i16(const int8_t*), load_i16(const int16_t*),
//     dot_pairs(I32 acc, I16 a, I16 b): acc_i + a_2i b_2i + a_2i+1 b_2i+1,
//     interleave_i8(a, b): the kLanes pairs (a[d], b[d]) as I16,
//     broadcast_pair(const int16_t*), to_float(I32),
//     reduce_i32(const I32* a, int n, int32_t* out) (exact),
//     store_i16(int16_t*, F integral), store_pairs_i16(int16_t*, F a, F b)
//     (2*kLanes int16: a_i, b_i interleaved; values in [0, 32767])
//   kHintEvery: inner steps (feature vectors of a score tile, rows of a
//     value tile) between two groups of prefetch hints; a power of two

using F = typename V::F;
inline constexpr int L = V::kLanes;
inline constexpr int kAcc = V::kTileAcc;

// ---------------------------------------------------------------------------
// Loads and stores of a partial vector (n < kLanes values; the rest zero).
// ---------------------------------------------------------------------------

template <class S>
KVATTN_KERNEL_INLINE F load_tail(const S* p, Index n) {
  alignas(64) S buf[L] = {};  // zeros (bfloat16 and half value-initialize to +0)
  std::memcpy(static_cast<void*>(buf), p, size_t(n) * sizeof(S));
  return V::load(buf);
}

KVATTN_KERNEL_INLINE void store_tail(float* p, F x, Index n) {
  alignas(64) float buf[L];
  V::storeu(buf, x);
  std::memcpy(p, buf, size_t(n) * sizeof(float));
}

// ---------------------------------------------------------------------------
// exp(x), vector form (Cephes' single-precision method): x = n ln2 + r with
// |r| <= ln2/2, exp(r) by a degree-6 polynomial, times 2^n. Inputs are
// clamped to [-87, 88] (results from 1.6e-38 to 1.65e38); NaN stays NaN.
// ---------------------------------------------------------------------------

KVATTN_KERNEL_INLINE F vexp(F x) {
  x = V::min(V::set1(88.0f), V::max(V::set1(-87.0f), x));  // NaN: the second operand
  const F n = V::round(V::mul(x, V::set1(1.44269504088896341f)));
  F r = V::fma(n, V::set1(-0.693359375f), x);  // ln2 in two parts: exact product n * hi
  r = V::fma(n, V::set1(2.12194440e-4f), r);
  F p = V::set1(1.9875691500e-4f);
  p = V::fma(p, r, V::set1(1.3981999507e-3f));
  p = V::fma(p, r, V::set1(8.3334519073e-3f));
  p = V::fma(p, r, V::set1(4.1665795894e-2f));
  p = V::fma(p, r, V::set1(1.6666665459e-1f));
  p = V::fma(p, r, V::set1(5.0000001201e-1f));
  p = V::fma(p, V::mul(r, r), V::add(r, V::set1(1.0f)));
  return V::mul(p, V::pow2(n));
}

/// The same function on one value (lane 0 of the vector form).
inline float exp1(float x) {
  alignas(64) float out[L];
  V::storeu(out, vexp(V::set1(x)));
  return out[0];
}

/// Round to nearest even without the rounding-mode or libm: exact for |x| < 2^22.
KVATTN_KERNEL_INLINE float round_even(float x) { return (x + 12582912.0f) - 12582912.0f; }

// ---------------------------------------------------------------------------
// Prefetch hints for a list of rows, spread over the iterations of a loop
// (one burst of hints would stall on the few misses a core can track, then
// leave memory idle while it computes).
// ---------------------------------------------------------------------------

template <class S>
struct Prefetch {
  const S* const* rows = nullptr;
  Index count = 0;      // rows to hint
  Index row_lines = 0;  // 64-byte lines per row
  Index per_part = 0, row = 0, line = 0;

  void split(Index parts) {  // parts <= 0: all at the first part
    const Index total = count * row_lines;
    per_part = parts > 0 ? (total + parts - 1) / parts : total;
  }
  /// Step i of a kernel's inner loop: a group of hints every kHintEvery steps.
  KVATTN_KERNEL_INLINE void step(Index i) {
    if ((i & (V::kHintEvery - 1)) == 0) part();
  }
  KVATTN_KERNEL_INLINE void part() {
    for (Index c = 0; c < per_part && row < count; ++c) {
      V::prefetch(reinterpret_cast<const char*>(rows[row]) + 64 * line);
      if (++line == row_lines) {
        line = 0;
        ++row;
      }
    }
  }
};

/// Groups of hints a loop of `steps` inner steps issues.
KVATTN_KERNEL_INLINE Index hint_groups(Index steps) {
  return (steps + V::kHintEvery - 1) / V::kHintEvery;
}

/// Runs op.run<H>(r) over the query heads [0, g) in blocks of H = 16 (when
/// the target has the registers), 8, 4, 2, 1 heads starting at head r.
template <class Op>
KVATTN_KERNEL_INLINE void head_blocks(Index g, Op& op) {
  Index r = 0;
  if constexpr (kAcc >= 16) {
    for (; r + 16 <= g; r += 16) op.template run<16>(r);
  }
  for (; r + 8 <= g; r += 8) op.template run<8>(r);
  if (r + 4 <= g) {
    op.template run<4>(r);
    r += 4;
  }
  if (r + 2 <= g) {
    op.template run<2>(r);
    r += 2;
  }
  if (r < g) op.template run<1>(r);
}

// ---------------------------------------------------------------------------
// Scores:  s[j*g + h] = scale * c_j * q_h . k_j   (c_j = 1 without scales)
// A tile of R rows x H heads keeps R*H accumulators; every lane of a
// (row, head) dot product adds its features in order and the lanes are
// reduced in the target's fixed order, so a score does not depend on the
// tile it was computed in (nor on how the rows were split into spans).
// ---------------------------------------------------------------------------

template <int R, int H, class S>
KVATTN_KERNEL_INLINE void scores_tile(const float* q, Index g, Index hd, const S* const* k,
                                      const float* c, float scale, float* s, Prefetch<S>& pf) {
  F acc[R * H];
  KVATTN_UNROLL
  for (int i = 0; i < R * H; ++i) acc[i] = V::zero();
  const Index full = hd - hd % L;
  for (Index d = 0; d < full; d += L) {
    pf.step(d / L);
    F kv[R];
    KVATTN_UNROLL
    for (int r = 0; r < R; ++r) {
      // keep() on a local, not on the array element: an element whose address
      // is taken makes GCC store the array on every iteration.
      F loaded = V::load(k[r] + d);
      if constexpr (H > 1) V::keep(loaded);  // else one use: a folded load is best
      kv[r] = loaded;
    }
    KVATTN_UNROLL
    for (int h = 0; h < H; ++h) {
      F qv = V::loadu(q + h * hd + d);
      V::keep(qv);
      KVATTN_UNROLL
      for (int r = 0; r < R; ++r) acc[r * H + h] = V::fma(kv[r], qv, acc[r * H + h]);
    }
  }
  if (full < hd) {
    KVATTN_UNROLL
    for (int h = 0; h < H; ++h) {
      const F qv = load_tail(q + h * hd + full, hd - full);
      KVATTN_UNROLL
      for (int r = 0; r < R; ++r) {
        acc[r * H + h] = V::fma(load_tail(k[r] + full, hd - full), qv, acc[r * H + h]);
      }
    }
  }
  float sums[R * H];
  V::reduce(acc, R * H, sums);
  KVATTN_UNROLL
  for (int r = 0; r < R; ++r) {
    const float f = c != nullptr ? scale * c[r] : scale;
    KVATTN_UNROLL
    for (int h = 0; h < H; ++h) s[r * g + h] = sums[r * H + h] * f;
  }
}

template <class S>
struct ScoresOp {
  const float* q;
  Index g, hd;
  const S* const* k;
  const float* c;
  Index n;
  float scale;
  float* s;
  Prefetch<S> pf;

  template <int H>
  void run(Index r) {
    constexpr int R = kAcc / H > 0 ? kAcc / H : 1;
    Prefetch<S> hints = r == 0 ? pf : Prefetch<S>{}, none;
    hints.split(n / R * hint_groups(hd / L));
    Index j = 0;
    for (; j + R <= n; j += R) {
      scores_tile<R, H>(q + r * hd, g, hd, k + j, c != nullptr ? c + j : nullptr, scale,
                        s + j * g + r, hints);
    }
    for (; j < n; ++j) {
      scores_tile<1, H>(q + r * hd, g, hd, k + j, c != nullptr ? c + j : nullptr, scale,
                        s + j * g + r, none);
    }
  }
};

// ---------------------------------------------------------------------------
// Softmax parts of scores s [n x g] (position-major), per head r:
//   m_r = max_j s[j*g + r],  s[j*g + r] = exp(s[j*g + r] - m_r),  l_r = sum_j s[j*g + r].
// The flat array repeats its head pattern every P = lcm(g, kLanes) floats,
// so P/kLanes vectors hold lane-wise maxima and sums of whole periods (the
// last, partial period zero-padded), folded into heads at the end. Groups
// with P > 16 vectors take a scalar loop with the same exp.
// ---------------------------------------------------------------------------

inline void softmax_parts(float* s, Index n, Index g, float* m, float* l) {
  constexpr Index kMaxVecs = 16;
  Index p = L;
  while (p % g != 0) p += L;
  const Index vecs = p / L;
  if (vecs > kMaxVecs) {
    for (Index r = 0; r < g; ++r) {
      float mx = -std::numeric_limits<float>::infinity();
      for (Index j = 0; j < n; ++j) mx = std::max(mx, s[j * g + r]);
      float sum = 0.0f;
      for (Index j = 0; j < n; ++j) sum += (s[j * g + r] = exp1(s[j * g + r] - mx));
      m[r] = mx;
      l[r] = sum;
    }
    return;
  }
  const Index total = n * g, whole = total / p * p, tail = total - whole;
  alignas(64) float buf[kMaxVecs * L];
  F acc[kMaxVecs];

  for (Index v = 0; v < vecs; ++v) acc[v] = V::set1(-std::numeric_limits<float>::infinity());
  for (Index i = 0; i < whole; i += p) {
    for (Index v = 0; v < vecs; ++v) acc[v] = V::max(acc[v], V::loadu(s + i + v * L));
  }
  if (tail > 0) {
    std::fill(buf, buf + p, -std::numeric_limits<float>::infinity());
    std::memcpy(buf, s + whole, size_t(tail) * sizeof(float));
    for (Index v = 0; v < vecs; ++v) acc[v] = V::max(acc[v], V::loadu(buf + v * L));
  }
  for (Index v = 0; v < vecs; ++v) V::storeu(buf + v * L, acc[v]);
  for (Index r = 0; r < g; ++r) {
    float mx = buf[r];
    for (Index i = r + g; i < p; i += g) mx = std::max(mx, buf[i]);
    m[r] = mx;
  }

  F shift[kMaxVecs];
  for (Index i = 0; i < p; ++i) buf[i] = m[i % g];
  for (Index v = 0; v < vecs; ++v) {
    shift[v] = V::loadu(buf + v * L);
    acc[v] = V::zero();
  }
  for (Index i = 0; i < whole; i += p) {  // subtract, exponentiate, store, sum: one pass
    for (Index v = 0; v < vecs; ++v) {
      const F e = vexp(V::sub(V::loadu(s + i + v * L), shift[v]));
      V::storeu(s + i + v * L, e);
      acc[v] = V::add(acc[v], e);
    }
  }
  if (tail > 0) {
    std::fill(buf, buf + p, 0.0f);
    std::memcpy(buf, s + whole, size_t(tail) * sizeof(float));
    for (Index v = 0; v < vecs; ++v)
      V::storeu(buf + v * L, vexp(V::sub(V::loadu(buf + v * L), shift[v])));
    std::memcpy(s + whole, buf, size_t(tail) * sizeof(float));
    std::fill(buf + tail, buf + p, 0.0f);
    for (Index v = 0; v < vecs; ++v) acc[v] = V::add(acc[v], V::loadu(buf + v * L));
  }
  for (Index v = 0; v < vecs; ++v) V::storeu(buf + v * L, acc[v]);
  for (Index r = 0; r < g; ++r) {
    float sum = buf[r];
    for (Index i = r + g; i < p; i += g) sum += buf[i];
    l[r] = sum;
  }
}

// ---------------------------------------------------------------------------
// Weighted sum of values:  o[h*hd + d] += sum_j p[j*g + h] v_j[d]
// A tile keeps H heads x D vectors of o in registers over all rows of the
// call, starting from o's values: each element is one multiply-add chain
// over the rows in order, whatever the tiling or the split into calls.
// ---------------------------------------------------------------------------

template <int H, int D, class S>
KVATTN_KERNEL_INLINE void accumulate_tile(const float* p, Index g, Index hd, const S* const* v,
                                          Index n, Index d, float* o, Prefetch<S>& pf) {
  F acc[H * D];
  KVATTN_UNROLL
  for (int h = 0; h < H; ++h) {
    KVATTN_UNROLL
    for (int e = 0; e < D; ++e) acc[h * D + e] = V::loadu(o + h * hd + d + e * L);
  }
  for (Index j = 0; j < n; ++j) {
    pf.step(j);
    F x[D];
    KVATTN_UNROLL
    for (int e = 0; e < D; ++e) {
      F loaded = V::load(v[j] + d + e * L);
      if constexpr (H > 1) V::keep(loaded);
      x[e] = loaded;
    }
    KVATTN_UNROLL
    for (int h = 0; h < H; ++h) {
      const F w = V::set1(p[j * g + h]);
      KVATTN_UNROLL
      for (int e = 0; e < D; ++e) acc[h * D + e] = V::fma(w, x[e], acc[h * D + e]);
    }
  }
  KVATTN_UNROLL
  for (int h = 0; h < H; ++h) {
    KVATTN_UNROLL
    for (int e = 0; e < D; ++e) V::storeu(o + h * hd + d + e * L, acc[h * D + e]);
  }
}

/// The last hd % kLanes columns (rem of them, at column d).
template <int H, class S>
void accumulate_tail(const float* p, Index g, Index hd, const S* const* v, Index n, Index d,
                     Index rem, float* o) {
  F acc[H];
  for (int h = 0; h < H; ++h) acc[h] = load_tail(o + h * hd + d, rem);
  for (Index j = 0; j < n; ++j) {
    const F x = load_tail(v[j] + d, rem);
    for (int h = 0; h < H; ++h) acc[h] = V::fma(V::set1(p[j * g + h]), x, acc[h]);
  }
  for (int h = 0; h < H; ++h) store_tail(o + h * hd + d, acc[h], rem);
}

template <class S>
struct AccumulateOp {
  const float* p;
  Index g, hd;
  const S* const* v;
  Index n;
  float* o;
  Prefetch<S> pf;

  template <int H>
  void run(Index r) {
    constexpr int D = kAcc / H > 0 ? kAcc / H : 1;
    const Index full = hd - hd % L;
    Prefetch<S> hints = r == 0 ? pf : Prefetch<S>{};
    hints.split(hint_groups(n) * (full / (D * L) + (full % (D * L)) / L));
    float* out = o + r * hd;
    Index d = 0;
    for (; d + D * L <= full; d += D * L) accumulate_tile<H, D>(p + r, g, hd, v, n, d, out, hints);
    for (; d < full; d += L) accumulate_tile<H, 1>(p + r, g, hd, v, n, d, out, hints);
    if (full < hd) accumulate_tail<H>(p + r, g, hd, v, n, d, hd - full, out);
  }
};

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
  for (Index j = 0; j < n; j += 2) {
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
KVATTN_KERNEL_INLINE void scores_tile_i8(const std::int16_t* q16, const float* qs, Index g,
                                         Index hd, const std::int8_t* const* k, const float* c,
                                         float scale, float* s, Prefetch<std::int8_t>& pf) {
  typename V::I32 acc[R * H];
  KVATTN_UNROLL
  for (int i = 0; i < R * H; ++i) acc[i] = V::izero();
  for (Index d = 0; d < hd; d += 2 * L) {
    pf.step(d / (2 * L));
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
  std::int32_t sums[R * H];
  V::reduce_i32(acc, R * H, sums);
  KVATTN_UNROLL
  for (int r = 0; r < R; ++r) {
    KVATTN_UNROLL
    for (int h = 0; h < H; ++h) s[r * g + h] = float(sums[r * H + h]) * (scale * c[r] * qs[h]);
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
    hints.split(n / R * hint_groups(hd / (2 * L)));
    Index j = 0;
    for (; j + R <= n; j += R) {
      scores_tile_i8<R, H>(q16 + r * hd, qs + r, g, hd, k + j, c + j, scale, s + j * g + r, hints);
    }
    for (; j < n; ++j) {
      scores_tile_i8<1, H>(q16 + r * hd, qs + r, g, hd, k + j, c + j, scale, s + j * g + r, none);
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

template <int H, int D>
KVATTN_KERNEL_INLINE void accumulate_tile_i8(const std::int16_t* w16, Index g, Index hd,
                                             const std::int8_t* const* v, Index n, Index d,
                                             float ws, float* o, Prefetch<std::int8_t>& pf) {
  alignas(64) static constexpr std::int8_t zeros[64] = {};
  typename V::I32 acc[H * D];
  KVATTN_UNROLL
  for (int i = 0; i < H * D; ++i) acc[i] = V::izero();
  Index j = 0;
  for (; j + 2 <= n; j += 2) {
    pf.step(j / 2);
    typename V::I16 x[D];
    KVATTN_UNROLL
    for (int e = 0; e < D; ++e) x[e] = V::interleave_i8(v[j] + d + e * L, v[j + 1] + d + e * L);
    accumulate_pair<H, D>(w16 + j * g, x, acc);
  }
  if (j < n) {  // an odd last row, paired with a row of zeros (its code is 0 too)
    typename V::I16 x[D];
    KVATTN_UNROLL
    for (int e = 0; e < D; ++e) x[e] = V::interleave_i8(v[j] + d + e * L, zeros);
    accumulate_pair<H, D>(w16 + j * g, x, acc);
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

// ---------------------------------------------------------------------------
// One decode item (ChunkTask): gather the chunk's row pointers from its
// spans, then keys and values stream through in tiles of as many bytes as
// 16 fp32 rows (16-bit storage: 32 rows, int8: 64), each tile read once for
// the whole group, with the tile 16 fp32 rows' worth ahead prefetched (in
// the order rows are consumed: keys, values, then the next chunk's keys).
// ---------------------------------------------------------------------------

inline constexpr Index kTileBytesRows = 16;  // fp32 rows per tile; other storage: same bytes

/// Hints for the rows [a, a + count) of the chunk's row sequence `rows` (size `total`).
template <class S>
Prefetch<S> prefetch_at(const S* const* rows, Index total, Index a, Index count, Index hd) {
  Prefetch<S> p;
  if (a < total) {
    p.rows = rows + a;
    p.count = std::min(count, total - a);
    p.row_lines = (hd * Index(sizeof(S)) + 63) / 64;
  }
  return p;
}

template <class S>
void attend(const ChunkTask<S>& t) {
  const Index g = t.g, hd = t.hd, n = t.n;
  const ChunkScratchLayout at(g, hd);
  char* base = static_cast<char*>(t.scratch);
  float* scores = reinterpret_cast<float*>(base + at.scores);    // [n x g]
  const S** rows = reinterpret_cast<const S**>(base + at.rows);  // keys [n], values [n], next
  float* k_scales = reinterpret_cast<float*>(base + at.scales);  // [n]
  float* v_scales = k_scales + kDecodeChunk;                     // [n]
  const bool scaled = t.spans[0].k_scales != nullptr;
  Index j = 0;
  for (Index i = 0; i < t.n_spans; ++i) {
    const KVSpan<S>& sp = t.spans[i];
    for (Index r = 0; r < sp.rows; ++r, ++j) {
      rows[j] = sp.k + r * sp.stride;
      rows[n + j] = sp.v + r * sp.stride;
      if (scaled) {
        k_scales[j] = sp.k_scales[r];
        v_scales[j] = sp.v_scales[r];
      }
    }
  }
  constexpr Index per_float = sizeof(S) >= 4 ? 1 : Index(4 / sizeof(S));
  constexpr Index tile = kTileBytesRows * per_float, ahead = kTileBytesRows * per_float;
  const Index next = std::min(t.next.rows, tile);
  for (Index r = 0; r < next; ++r) rows[2 * n + r] = t.next.k + r * t.next.stride;
  const Index total = 2 * n + next;
  const S* const* krow = rows;
  const S* const* vrow = rows + n;
  for (Index i = 0; i < g * hd; ++i) t.acc[i] = 0.0f;

#if defined(KVATTN_KERNEL_INTEGER)
  if constexpr (std::is_same<S, std::int8_t>::value) {
    if (integer_head_dim(hd)) {
      std::int16_t* q16 = reinterpret_cast<std::int16_t*>(base + at.q16);  // [g x hd]
      float* qs = reinterpret_cast<float*>(base + at.qs);                  // [g]
      std::int16_t* w16 = reinterpret_cast<std::int16_t*>(base + at.w16);  // row pairs
      quantize_query(t.q, g, hd, q16, qs);
      for (Index j0 = 0; j0 < n; j0 += tile) {
        ScoresI8Op op{q16,
                      qs,
                      g,
                      hd,
                      krow + j0,
                      k_scales + j0,
                      std::min(tile, n - j0),
                      t.scale,
                      scores + j0 * g,
                      prefetch_at(rows, total, j0 + ahead, tile, hd)};
        head_blocks(g, op);
      }
      softmax_parts(scores, n, g, t.m, t.l);
      const float ws = quantize_weights(scores, n, g, v_scales, w16);
      for (Index j0 = 0; j0 < n; j0 += tile) {  // j0 even: pair j0/2
        AccumulateI8Op op{
            w16 + j0 * g,           g,  hd,    vrow + j0,
            std::min(tile, n - j0), ws, t.acc, prefetch_at(rows, total, n + j0 + ahead, tile, hd)};
        head_blocks(g, op);
      }
      return;
    }
  }
#endif
  for (Index j0 = 0; j0 < n; j0 += tile) {
    ScoresOp<S> op{t.q,
                   g,
                   hd,
                   krow + j0,
                   scaled ? k_scales + j0 : nullptr,
                   std::min(tile, n - j0),
                   t.scale,
                   scores + j0 * g,
                   prefetch_at(rows, total, j0 + ahead, tile, hd)};
    head_blocks(g, op);
  }
  softmax_parts(scores, n, g, t.m, t.l);
  if (scaled) {  // int8: fold each value row's scale into its weights
    for (Index jj = 0; jj < n; ++jj) {
      for (Index r = 0; r < g; ++r) scores[jj * g + r] *= v_scales[jj];
    }
  }
  for (Index j0 = 0; j0 < n; j0 += tile) {
    AccumulateOp<S> op{scores + j0 * g,
                       g,
                       hd,
                       vrow + j0,
                       std::min(tile, n - j0),
                       t.acc,
                       prefetch_at(rows, total, n + j0 + ahead, tile, hd)};
    head_blocks(g, op);
  }
}

// ---------------------------------------------------------------------------
// Matrix times a few vectors: y[b*ys + i] = w_i . x_b. A tile of R rows x C
// vectors keeps R*C accumulators; a weight vector is widened once for the C
// products that use it. Every (row, vector) element is one lane-wise
// multiply-add chain over the columns and one reduction in the target's
// order, so its bits do not depend on the tile, the batch or the thread
// that computed it: a batch column equals the one-vector product.
// ---------------------------------------------------------------------------

/// Prefetch hints for the weight rows of the next block, one cache line
/// per inner step of the current block's tiles (into L2: they are used by
/// the next block, not the next instructions).
struct WeightHints {
  const char* row = nullptr;  // current row of the next block
  Index row_bytes = 0, stride = 0, rows = 0, line = 0;

  KVATTN_KERNEL_INLINE void step() {
    if (rows == 0) return;
    V::prefetch_l2(row + 64 * line);
    if (++line * 64 >= row_bytes) {
      line = 0;
      row += stride;
      --rows;
    }
  }
};

template <int R, int C, class W>
KVATTN_KERNEL_INLINE void gemm_tile(const W* w, Index ws, Index in, const float* x, Index xs,
                                    float* y, Index ys, WeightHints& hints) {
  F acc[R * C];
  KVATTN_UNROLL
  for (int i = 0; i < R * C; ++i) acc[i] = V::zero();
  const Index full = in - in % L;
  for (Index d = 0; d < full; d += L) {
    hints.step();
    F wv[R];
    KVATTN_UNROLL
    for (int r = 0; r < R; ++r) {
      F loaded = V::load(w + r * ws + d);
      if constexpr (C > 1) V::keep(loaded);
      wv[r] = loaded;
    }
    KVATTN_UNROLL
    for (int c = 0; c < C; ++c) {
      const F xv = V::loadu(x + c * xs + d);
      KVATTN_UNROLL
      for (int r = 0; r < R; ++r) acc[r * C + c] = V::fma(wv[r], xv, acc[r * C + c]);
    }
  }
  if (full < in) {
    KVATTN_UNROLL
    for (int r = 0; r < R; ++r) {
      const F wv = load_tail(w + r * ws + full, in - full);
      KVATTN_UNROLL
      for (int c = 0; c < C; ++c) {
        acc[r * C + c] = V::fma(wv, load_tail(x + c * xs + full, in - full), acc[r * C + c]);
      }
    }
  }
  float sums[R * C];
  V::reduce(acc, R * C, sums);
  KVATTN_UNROLL
  for (int r = 0; r < R; ++r) {
    KVATTN_UNROLL
    for (int c = 0; c < C; ++c) y[c * ys + r] = sums[r * C + c];
  }
}

/// Rows [0, rows) against C vectors, R rows at a time.
template <int R, int C, class W>
void gemm_rows(const W* w, Index ws, Index rows, Index in, const float* x, Index xs, float* y,
               Index ys, WeightHints& hints) {
  Index i = 0;
  for (; i + R <= rows; i += R) gemm_tile<R, C>(w + i * ws, ws, in, x, xs, y + i, ys, hints);
  for (; i < rows; ++i) gemm_tile<1, C>(w + i * ws, ws, in, x, xs, y + i, ys, hints);
}

/// A tile of R rows x C vectors over features [d0, d1) (d1 <= the last
/// full vector; `tail`: then the partial last vector too), its accumulators
/// kept between calls in acc (row r, vector c at acc + (r*kCols + c)*L).
template <int R, int C, class W>
KVATTN_KERNEL_INLINE void gemm_chunk(const W* w, Index ws, const float* x, Index xs, Index d0,
                                     Index d1, Index in, bool tail, float* acc, Index cols,
                                     WeightHints& hints) {
  F a[R * C];
  KVATTN_UNROLL
  for (int r = 0; r < R; ++r) {
    KVATTN_UNROLL
    for (int c = 0; c < C; ++c) a[r * C + c] = V::loadu(acc + (r * cols + c) * L);
  }
  for (Index d = d0; d < d1; d += L) {
    hints.step();
    F wv[R];
    KVATTN_UNROLL
    for (int r = 0; r < R; ++r) {
      F loaded = V::load(w + r * ws + d);
      if constexpr (C > 1) V::keep(loaded);
      wv[r] = loaded;
    }
    KVATTN_UNROLL
    for (int c = 0; c < C; ++c) {
      const F xv = V::loadu(x + c * xs + d);
      KVATTN_UNROLL
      for (int r = 0; r < R; ++r) a[r * C + c] = V::fma(wv[r], xv, a[r * C + c]);
    }
  }
  if (tail) {
    KVATTN_UNROLL
    for (int r = 0; r < R; ++r) {
      const F wv = load_tail(w + r * ws + d1, in - d1);
      KVATTN_UNROLL
      for (int c = 0; c < C; ++c) {
        a[r * C + c] = V::fma(wv, load_tail(x + c * xs + d1, in - d1), a[r * C + c]);
      }
    }
  }
  KVATTN_UNROLL
  for (int r = 0; r < R; ++r) {
    KVATTN_UNROLL
    for (int c = 0; c < C; ++c) V::storeu(acc + (r * cols + c) * L, a[r * C + c]);
  }
}

/// Several vectors: blocks of 16 rows x 16 vectors, the features in chunks
/// of 256 so that a chunk's weights and vectors (16 KB each in fp32) stay in
/// L1 while every tile of the block passes over them; the accumulators wait
/// in a buffer between chunks (stored and reloaded exactly, so each element
/// is the same multiply-add chain as in the one-vector product), and the
/// next row block's weights are hinted into L2 meanwhile.
template <class W>
void gemm_cols(const W* w, Index ws, Index rows, Index in, const float* x, Index xs, Index cols,
               float* y, Index ys) {
  constexpr Index kRows = 16, kCols = 16, kChunk = 256;
  constexpr int R = V::kGemmRows, C = V::kGemmCols;
  alignas(64) float acc[kRows * kCols * L];
  const Index full = in - in % L;
  for (Index c0 = 0; c0 < cols; c0 += kCols) {
    const Index nc = std::min(kCols, cols - c0);
    for (Index i0 = 0; i0 < rows; i0 += kRows) {
      const Index nr = std::min(kRows, rows - i0);
      std::fill(acc, acc + kRows * kCols * L, 0.0f);
      WeightHints hints;
      if (i0 + kRows < rows && c0 == 0) {
        hints.row = reinterpret_cast<const char*>(w + (i0 + kRows) * ws);
        hints.row_bytes = in * Index(sizeof(W));
        hints.stride = ws * Index(sizeof(W));
        hints.rows = std::min(kRows, rows - i0 - kRows);
      }
      for (Index d0 = 0;; d0 += kChunk) {
        const Index d1 = std::min(d0 + kChunk, full);
        const bool tail = d1 == full && full < in;
        const W* wb = w + i0 * ws;
        Index r = 0;
        for (; r + R <= nr; r += R) {
          Index c = 0;
          for (; c + C <= nc; c += C) {
            gemm_chunk<R, C>(wb + r * ws, ws, x + (c0 + c) * xs, xs, d0, d1, in, tail,
                             acc + (r * kCols + c) * L, kCols, hints);
          }
          for (; c < nc; ++c) {
            gemm_chunk<R, 1>(wb + r * ws, ws, x + (c0 + c) * xs, xs, d0, d1, in, tail,
                             acc + (r * kCols + c) * L, kCols, hints);
          }
        }
        for (; r < nr; ++r) {
          for (Index c = 0; c < nc; ++c) {
            gemm_chunk<1, 1>(wb + r * ws, ws, x + (c0 + c) * xs, xs, d0, d1, in, tail,
                             acc + (r * kCols + c) * L, kCols, hints);
          }
        }
        if (d1 == full) break;
      }
      for (Index r = 0; r < nr; ++r) {  // reduce each (row, vector) in the target's order
        F v[kCols];
        float sums[kCols];
        for (Index c = 0; c < nc; ++c) v[c] = V::loadu(acc + (r * kCols + c) * L);
        for (Index c = 0; c < nc; c += kAcc) {
          V::reduce(v + c, int(std::min<Index>(kAcc, nc - c)), sums + c);
        }
        for (Index c = 0; c < nc; ++c) y[(c0 + c) * ys + i0 + r] = sums[c];
      }
    }
  }
}

template <class W>
void gemm(const W* w, Index ws, Index rows, Index in, const float* x, Index xs, Index batch,
          float* y, Index ys) {
  if (batch == 1) {  // eight or more weight streams: the hardware prefetchers keep up
    WeightHints none;
    gemm_rows<V::kGemmRows1, 1>(w, ws, rows, in, x, xs, y, ys, none);
  } else {
    gemm_cols(w, ws, rows, in, x, xs, batch, y, ys);
  }
}

// ---------------------------------------------------------------------------
// a[i] = a[i] / (1 + exp(-a[i])) * b[i]: the SwiGLU gate, every element by
// the same vector code (a partial last vector included).
// ---------------------------------------------------------------------------

inline void silu_mul(float* a, const float* b, Index n) {
  const F one = V::set1(1.0f);
  Index i = 0;
  for (; i + L <= n; i += L) {
    const F x = V::loadu(a + i);
    const F sig = V::div(x, V::add(one, vexp(V::sub(V::zero(), x))));
    V::storeu(a + i, V::mul(sig, V::loadu(b + i)));
  }
  if (i < n) {
    const F x = load_tail(a + i, n - i);
    const F sig = V::div(x, V::add(one, vexp(V::sub(V::zero(), x))));
    store_tail(a + i, V::mul(sig, load_tail(b + i, n - i)), n - i);
  }
}
