
// The quantized-weight matrix-vector product of one target, written once
// against its V (no include guard: included by each target header inside
// its namespace and instruction-set region, after generic_inl.hpp). V
// supplies a float accumulator QAcc and, for 4 rows' blocks at byte offset
// `at` of rows r[0..4) and one activation block x:
//   V::qdot4<kBlockBytes>(r, at, x, acc):
//     acc[k] += to_float(lanes of the int32 dot of the codes) * (d(w_k) * d(x)),
//   V::qreduce(acc) -> float: the sum of an accumulator's lanes.
// The codes' dot is exact; each lane then takes one multiply-add per block.

/// How far ahead in each row the loop hints the next bytes into cache (the
/// hardware prefetchers alone left a 4-row loop well short of bandwidth;
/// docs/kernels.md).
inline constexpr Index kQuantAhead = 1024;

/// QGemvFn for weights in blocks of kBlockBytes (Q8_0 or Q4_0).
template <Index kBlockBytes>
void gemv_q(const std::uint8_t* w, Index row_bytes, Index rows, const BlockQ8_0* x, Index n_blocks,
            float* y) {
  static_assert(kBlockBytes == kQ8_0Bytes || kBlockBytes == kQ4_0Bytes, "Q8_0 or Q4_0");
  for (Index i0 = 0; i0 < rows; i0 += 4) {
    const Index nr = std::min<Index>(4, rows - i0);
    const std::uint8_t* r[4];
    for (Index k = 0; k < 4; ++k) r[k] = w + (i0 + std::min(k, nr - 1)) * row_bytes;
    typename V::QAcc acc[4] = {V::qzero(), V::qzero(), V::qzero(), V::qzero()};
    const Index used = n_blocks * kBlockBytes;  // bytes of a row the loop reads
    for (Index b = 0; b < n_blocks; ++b) {
      const Index at = b * kBlockBytes;
      if (b % 2 == 0) {  // about one hint per cache line and row, kQuantAhead bytes ahead
        const Index ahead = at + kQuantAhead;
        if (ahead < used) {
          KVATTN_UNROLL
          for (Index k = 0; k < 4; ++k) V::prefetch(r[k] + ahead);
        } else {
          // Near a row's end, the same place in the next 4 rows instead, so
          // that every stream runs on into the next group; never past `rows`
          // (a group with a next group has all 4 rows, r[k] row i0 + k).
          const Index col = std::min(ahead - used, used - 1);
          KVATTN_UNROLL
          for (Index k = 0; k < 4; ++k) {
            if (i0 + k + 4 < rows) V::prefetch(r[k] + 4 * row_bytes + col);
          }
        }
      }
      V::template qdot4<kBlockBytes>(r, at, x + b, acc);
    }
    float sums[4];  // every accumulator reduced by a constant index, so they stay in registers
    KVATTN_UNROLL
    for (int k = 0; k < 4; ++k) sums[k] = V::qreduce(acc[k]);
    for (Index k = 0; k < nr; ++k) y[i0 + k] = sums[k];
  }
}
