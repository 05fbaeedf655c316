// The kernels of generic_inl.hpp, continued: one decode item.
// Included by generic_inl.hpp only (no include guard: it compiles inside a
// target's namespace and instruction-set region, once per target).

// ---------------------------------------------------------------------------
// One decode item (ChunkTask): gather the chunk's row pointers from its
// spans, then keys and values stream through in tiles of as many bytes as
// 16 fp32 rows (16-bit storage: 32 rows, int8: 64), each tile read once for
// the whole group, with the tile 16 fp32 rows' worth ahead prefetched (in
// the order rows are consumed: keys, values, then the next chunk's keys).
// ---------------------------------------------------------------------------

inline constexpr Index kTileBytesRows = 16;  // fp32 rows per tile; other storage: same bytes

/// The chunk's row sequence as hints see it: keys [0, n), values [n, 2n),
/// then the next chunk's first keys [2n, total). A range of rows inside one
/// span whose rows lie back to back (stride head_dim, whole cache lines) is
/// hinted from one cursor; any other range row by row.
template <class S>
struct RowSequence {
  const S* const* rows;
  Index n, total, hd;
  const KVSpan<S>* spans;  // the chunk's, n rows in all
  Index n_spans;
  const KVSpan<S>* next;  // the next chunk's first span (total - 2n rows of it)

  /// Hints for the rows [a, a + count) of the sequence.
  Prefetch<S> at(Index a, Index count) const {
    Prefetch<S> p;
    if (a >= total) return p;
    p.rows = rows + a;
    p.count = std::min(count, total - a);
    p.row_lines = (hd * Index(sizeof(S)) + 63) / 64;
    if (hd * Index(sizeof(S)) % 64 != 0) return p;
    // A dense range: one row from the span's base pointer, `first` rows in.
    const auto dense = [&](const S* const* base, Index first) {
      p.row_lines = (first + p.count) * hd * Index(sizeof(S)) / 64;
      p.line = first * hd * Index(sizeof(S)) / 64;
      p.rows = base;
      p.count = 1;
    };
    if (a >= 2 * n) {
      if (next->stride == hd) dense(&next->k, a - 2 * n);
      return p;
    }
    const bool values = a >= n;
    Index begin = values ? n : 0;
    for (Index i = 0; i < n_spans; begin += spans[i].rows, ++i) {
      if (a < begin + spans[i].rows) {
        if (spans[i].stride == hd && a + p.count <= begin + spans[i].rows) {
          dense(values ? &spans[i].v : &spans[i].k, a - begin);
        }
        break;
      }
    }
    return p;
  }
};

template <class S>
void attend(const ChunkTask<S>& t) {
  const Index g = t.g, hd = t.hd, n = t.n;
  const ChunkScratchLayout at(g, hd);
  char* base = static_cast<char*>(t.scratch);
  float* scores = reinterpret_cast<float*>(base + at.scores);    // [n x g]
  const S** rows = reinterpret_cast<const S**>(base + at.rows);  // keys [n], values [n], next
  const bool scaled = t.spans[0].k_scales != nullptr;
  // Row scales: the span's own when there is one span, else gathered. (A
  // gathering loop at the start of every chunk waits on the scales' cold
  // lines one after another; the kernels' reads overlap them with work.)
  const float* k_scales = t.spans[0].k_scales;
  const float* v_scales = t.spans[0].v_scales;
  float* k_gather = reinterpret_cast<float*>(base + at.scales);  // [n]
  float* v_gather = k_gather + kDecodeChunk;                     // [n]
  if (scaled && t.n_spans > 1) {
    k_scales = k_gather;
    v_scales = v_gather;
  }
  Index j = 0;
  for (Index i = 0; i < t.n_spans; ++i) {
    const KVSpan<S>& sp = t.spans[i];
    for (Index r = 0; r < sp.rows; ++r, ++j) {
      rows[j] = sp.k + r * sp.stride;
      rows[n + j] = sp.v + r * sp.stride;
      if (scaled && t.n_spans > 1) {
        k_gather[j] = sp.k_scales[r];
        v_gather[j] = sp.v_scales[r];
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
  const RowSequence<S> seq{rows, n, total, hd, t.spans, t.n_spans, &t.next};
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
                      seq.at(j0 + ahead, tile)};
        head_blocks(g, op);
      }
      softmax_parts(scores, n, g, t.m, t.l);
      const float ws = quantize_weights(scores, n, g, v_scales, w16);
      for (Index j0 = 0; j0 < n; j0 += tile) {  // j0 even: pair j0/2
        AccumulateI8Op op{w16 + j0 * g,           g,  hd,    vrow + j0,
                          std::min(tile, n - j0), ws, t.acc, seq.at(n + j0 + ahead, tile)};
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
                   seq.at(j0 + ahead, tile)};
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
                       seq.at(n + j0 + ahead, tile)};
    head_blocks(g, op);
  }
}
