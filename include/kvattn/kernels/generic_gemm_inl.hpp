// The kernels of generic_inl.hpp, continued: matrix times a few vectors, and the SwiGLU gate.
// Included by generic_inl.hpp only (no include guard: it compiles inside a
// target's namespace and instruction-set region, once per target).

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
