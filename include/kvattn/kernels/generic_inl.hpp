// The kernels, written once against the vector vocabulary `V` of a target.
//
// No include guard, on purpose: a target header includes this file inside
// its own namespace (kvattn::kernels::<target>), after defining `struct V`
// and with its instruction set enabled for every function defined here, so
// each target gets its own compiled copy (docs/kernels.md). It includes
// only its own parts: generic_int8_inl.hpp, generic_decode_inl.hpp and
// generic_gemm_inl.hpp.
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
//   void prefetch(const void*) (into L1), prefetch_l2(const void*),
//     prefetch_row(const void*) (the decode kernels' hint for a cache row line)
//   kTileAcc: accumulator vectors a register tile may hold
//   kGemmRows1 (rows per tile for one vector), kGemmRows x kGemmCols (more)
//   kIntegerDot: whether the int8 integer kernels exist; if so also
//     I16 (2*kLanes int16), I32 (kLanes int32), izero(),
//     load_i8_i16(const int8_t*), load_i16(const int16_t*),
//     dot_pairs(I32 acc, I16 a, I16 b): acc_i + a_2i b_2i + a_2i+1 b_2i+1,
//     interleave_i8(a, b): the kLanes pairs (a[d], b[d]) as I16,
//     interleave2_i8(a, b, I16 x[2]): the same for 2*kLanes values, in an order of
//       the target's choosing that pairs_order(I32& x0, I32& x1) undoes on the two
//       accumulators of their dot products (x1: the upper kLanes),
//     broadcast_pair(const int16_t*), to_float(I32),
//     for rows of g values (g a power of two, 2 g <= kLanes):
//     expand_rows(const float* f, g): lane i = f[i / g] (reads kLanes / g values),
//     split_rows(F x0, F x1, g, F& even, F& odd): the even and the odd rows of x0, x1,
//     scaled_sums_i32(const I32* a, int n, const float* f, float* out):
//       out[i] = float(the exact sum of a[i]'s lanes) * f[i],
//     store_i16(int16_t*, F integral), store_pairs_i16(int16_t*, F a, F b)
//     (2*kLanes int16: a_i, b_i interleaved; values in [0, 32767])
//   kHintEvery: inner steps (feature vectors of a score tile, rows of a
//     value tile) between two groups of prefetch hints; a power of two.
//     (int8 score tiles in the integer domain hint once per tile.)
//     The kernels test the step in their one loop (a nested loop of
//     kHintEvery steps was slower; docs/kernels.md).

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
  // The cursor: line `line` of row `row`. A dense run of rows (back to back,
  // in order) is given as one row that starts `line` lines in, so that one
  // loop serves both.
  Index row = 0, line = 0, per_part = 0;

  void split(Index parts) {  // parts <= 0: all at the first part
    const Index total = count * row_lines - line;
    per_part = parts > 0 ? (total + parts - 1) / parts : total;
  }
  /// The next group of per_part lines, row by row (kernels call it once
  /// every kHintEvery inner steps, at the start of each block of steps).
  KVATTN_KERNEL_INLINE void part() {
    for (Index left = per_part; left > 0 && row < count;) {
      const char* p = reinterpret_cast<const char*>(rows[row]) + 64 * line;
      const Index take = std::min(left, row_lines - line);
      for (Index c = 0; c < take; ++c) V::prefetch_row(p + 64 * c);
      left -= take;
      line += take;
      if (line == row_lines) {
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
    if (d / L % V::kHintEvery == 0) pf.part();
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
    if (j % V::kHintEvery == 0) pf.part();
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

// In this order (each uses the ones before it):
#include <kvattn/kernels/generic_int8_inl.hpp>

#include <kvattn/kernels/generic_decode_inl.hpp>

#include <kvattn/kernels/generic_gemm_inl.hpp>
