// The quantized-weight matrix-vector product of one target, written once
// against its V (no include guard: included by each target header inside
// its namespace and instruction-set region, after generic_inl.hpp). V
// supplies, for 4 rows' blocks w[0..4) (block pointers as stored) and one
// activation block x:
//   V::qdot4_q8_0(w, x, acc), V::qdot4_q4_0(w, x, acc):
//     acc[k] += float(w_k . x) * (d(w_k) * d(x)), k < 4,
// the dot product of the codes in int32 (exact), then two float products.

/// QGemvFn for weights in blocks of kBlockBytes (Q8_0 or Q4_0).
template <Index kBlockBytes>
void gemv_q(const std::uint8_t* w, Index row_bytes, Index rows, const BlockQ8_0* x, Index n_blocks,
            float* y) {
  static_assert(kBlockBytes == kQ8_0Bytes || kBlockBytes == kQ4_0Bytes, "Q8_0 or Q4_0");
  auto block4 = [](const std::uint8_t* const* b, const BlockQ8_0* xb, float* acc) {
    if constexpr (kBlockBytes == kQ8_0Bytes) {
      V::qdot4_q8_0(b, xb, acc);
    } else {
      V::qdot4_q4_0(b, xb, acc);
    }
  };
  for (Index i0 = 0; i0 < rows; i0 += 4) {
    const Index nr = std::min<Index>(4, rows - i0);
    const std::uint8_t* row[4];
    for (Index k = 0; k < 4; ++k) row[k] = w + (i0 + std::min(k, nr - 1)) * row_bytes;
    alignas(16) float acc[4][4] = {};  // [block % 4][row]
    const std::uint8_t* b[4];
    Index j = 0;
    for (; j + 4 <= n_blocks; j += 4) {
      KVATTN_UNROLL
      for (int part = 0; part < 4; ++part) {
        for (int k = 0; k < 4; ++k) b[k] = row[k] + (j + part) * kBlockBytes;
        block4(b, x + j + part, acc[part]);
      }
    }
    for (; j < n_blocks; ++j) {
      for (int k = 0; k < 4; ++k) b[k] = row[k] + j * kBlockBytes;
      block4(b, x + j, acc[j % 4]);
    }
    for (Index k = 0; k < nr; ++k) y[i0 + k] = (acc[0][k] + acc[1][k]) + (acc[2][k] + acc[3][k]);
  }
}
