#pragma once
/// \file
/// What the kernels see: plain views of memory someone else owns. A kernel
/// never sees a cache object: a decode step hands it runs of cached rows
/// (pointer, rows, row stride, scales), so a contiguous KVCache (one run per
/// chunk) and a paged cache (one run per block) use the same kernels.

#include <Eigen/Core>

#include <cstdint>
#include <type_traits>

namespace kvattn::kernels {

using Index = Eigen::Index;

/// Cached positions per split-KV item of a decode step. Fixed, not derived
/// from the thread count or the batch, so a result never depends on either.
inline constexpr Index kDecodeChunk = 256;

/// A run of cached positions of one KV head, as stored: key row r at
/// k + r * stride, value row r at v + r * stride (head_dim values each); for
/// int8 storage k_scales[r] and v_scales[r] are the rows' scales (else null;
/// Scale is the compute type: float for the kernels).
template <class S, class Scale = float>
struct KVSpan {
  const S* k = nullptr;
  const S* v = nullptr;
  const Scale* k_scales = nullptr;
  const Scale* v_scales = nullptr;
  Index rows = 0;
  Index stride = 0;
};

/// One (KV head, chunk) item of a decode step, in softmax-merge form:
///   s_rj  = scale * q_r . k_j     r < g (the query heads of this KV head), j < n
///   m_r   = max_j s_rj
///   l_r   = sum_j exp(s_rj - m_r)
///   acc_r = sum_j exp(s_rj - m_r) v_j
/// The chunk's n positions (1 <= n <= kDecodeChunk) are the spans' rows in
/// order. `next` names the rows read after this item (the head's next
/// chunk), for prefetching only.
template <class S>
struct ChunkTask {
  const float* q = nullptr;  ///< [g x hd]
  Index g = 0, hd = 0;
  const KVSpan<S>* spans = nullptr;
  Index n_spans = 0;
  Index n = 0;  ///< rows in all spans
  KVSpan<S> next;
  float scale = 1.0f;
  float* acc = nullptr;     ///< [g x hd], written
  float* m = nullptr;       ///< [g], written
  float* l = nullptr;       ///< [g], written
  void* scratch = nullptr;  ///< chunk_scratch_bytes(g, hd), 64-byte aligned
};

/// Where a ChunkTask's kernel keeps its scratch: byte offsets into
/// ChunkTask::scratch (each 64-byte aligned) and the size in all.
struct ChunkScratchLayout {
  Index scores = 0;  ///< float [kDecodeChunk x g], position-major
  Index rows = 0;    ///< row pointers: keys [n], values [n], then the next chunk's first keys
  Index scales = 0;  ///< float key scales [kDecodeChunk], then value scales
  Index q16 = 0;     ///< int16 query codes [g x hd]
  Index qs = 0;      ///< float query code scales [g]
  Index w16 = 0;     ///< int16 weight codes in row pairs [kDecodeChunk + 2][g][2]
  Index bytes = 0;

  ChunkScratchLayout(Index g, Index hd) {
    scores = take(kDecodeChunk * g * 4);
    rows = take(3 * kDecodeChunk * Index(sizeof(void*)));
    scales = take(2 * kDecodeChunk * 4);
    q16 = take(g * hd * 2);
    qs = take(g * 4);
    w16 = take((kDecodeChunk + 2) * g * 2 * 2);
    bytes = at_;
  }

 private:
  Index take(Index size) {
    const Index offset = at_;
    at_ += (size + 63) / 64 * 64;
    return offset;
  }
  Index at_ = 0;
};

/// Bytes of scratch one ChunkTask needs.
inline Index chunk_scratch_bytes(Index g, Index hd) { return ChunkScratchLayout(g, hd).bytes; }

/// y[b * ys + i] = w_i . x_b for rows i < rows of W (row i at w + i * ws,
/// `in` values as stored) and vectors b < batch (x_b at x + b * xs, `in`
/// floats). Each element is computed in an order that depends only on `in`:
/// the same bits for any batch size and any split of the rows.
template <class W>
using GemmFn = void (*)(const W* w, Index ws, Index rows, Index in, const float* x, Index xs,
                        Index batch, float* y, Index ys);

/// llama.cpp's 32-value quantization blocks, as its files store them: an
/// IEEE half scale d, then the codes. Q8_0: value j = d * qs[j] (34 bytes).
/// Q4_0: value j = d * ((qs[j] & 15) - 8) for j < 16 and
/// d * ((qs[j - 16] >> 4) - 8) for j >= 16 (18 bytes).
inline constexpr Index kQuantBlock = 32;
inline constexpr Index kQ8_0Bytes = 34, kQ4_0Bytes = 18;

/// An activation vector's block in Q8_0. Codes must lie in [-127, 127]
/// (as quantize_q8_0 writes them): the x86 kernels take x's sign from the
/// weights' and a -128 would wrap.
struct BlockQ8_0 {
  std::uint16_t d = 0;  ///< IEEE half bits
  std::int8_t qs[kQuantBlock] = {};
};
static_assert(sizeof(BlockQ8_0) == kQ8_0Bytes, "Q8_0 blocks are 34 bytes");

/// y[i] = sum_b d(w_ib) d(x_b) (w_ib . x_b) for rows i < rows of quantized
/// weights (row i at w + i * row_bytes: n_blocks blocks as stored) and x
/// quantized to n_blocks Q8_0 blocks: the codes' dot products in int32
/// (exact), then per block one float multiply-add per vector lane of the
/// target, the lanes summed at the row's end. A row's result does not
/// depend on which rows are computed with it.
using QGemvFn = void (*)(const std::uint8_t* w, Index row_bytes, Index rows, const BlockQ8_0* x,
                         Index n_blocks, float* y);

/// The kernels of one target.
struct KernelTable {
  const char* name = "";
  void (*attend_f32)(const ChunkTask<float>&) = nullptr;
  void (*attend_bf16)(const ChunkTask<Eigen::bfloat16>&) = nullptr;
  void (*attend_f16)(const ChunkTask<Eigen::half>&) = nullptr;
  void (*attend_i8)(const ChunkTask<std::int8_t>&) = nullptr;
  GemmFn<float> gemm_f32 = nullptr;
  GemmFn<Eigen::bfloat16> gemm_bf16 = nullptr;
  GemmFn<Eigen::half> gemm_f16 = nullptr;
  QGemvFn gemv_q8_0 = nullptr;  ///< weights in Q8_0 blocks
  QGemvFn gemv_q4_0 = nullptr;  ///< weights in Q4_0 blocks
  /// a[i] = silu(a[i]) * b[i] = a[i] / (1 + exp(-a[i])) * b[i], i < n.
  void (*silu_mul)(float* a, const float* b, Index n) = nullptr;

  template <class S>
  void attend(const ChunkTask<S>& t) const {
    if constexpr (std::is_same<S, float>::value) {
      attend_f32(t);
    } else if constexpr (std::is_same<S, Eigen::bfloat16>::value) {
      attend_bf16(t);
    } else if constexpr (std::is_same<S, Eigen::half>::value) {
      attend_f16(t);
    } else {
      static_assert(std::is_same<S, std::int8_t>::value, "no kernel for this storage type");
      attend_i8(t);
    }
  }
  template <class W>
  GemmFn<W> gemm() const {
    if constexpr (std::is_same<W, float>::value) {
      return gemm_f32;
    } else if constexpr (std::is_same<W, Eigen::bfloat16>::value) {
      return gemm_bf16;
    } else {
      static_assert(std::is_same<W, Eigen::half>::value, "no kernel for this weight type");
      return gemm_f16;
    }
  }
};

}  // namespace kvattn::kernels
