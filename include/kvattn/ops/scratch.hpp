#pragma once
/// \file
/// AttentionScratch: the memory the attention kernels work in, grown on
/// demand and reused, so steady-state decoding allocates nothing. Every
/// buffer's layout is stated here; the decode kernels' per-item layout is
/// kernels::ChunkScratchLayout.

#include <kvattn/detail/scratch.hpp>
#include <kvattn/kernels/types.hpp>
#include <kvattn/types.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace kvattn {
namespace detail {

/// Threads an OpenMP parallel region may use (1 without OpenMP).
inline int max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_index() {
#if defined(_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}

}  // namespace detail

namespace ops {

using kernels::kDecodeChunk;

/// Rows per tile of the portable (Eigen) decode path, which decodes rows
/// stored as another type than T into a buffer first.
inline constexpr Eigen::Index kDecodeTile = 16;

/// Spans (runs of contiguous cached rows) one decode item may cover: a chunk
/// of kDecodeChunk positions over blocks of at least 16 positions.
inline constexpr Eigen::Index kMaxSpans = kDecodeChunk / 16 + 1;

template <class T>
struct AttentionScratch {
  // Prefill (attend_causal with more than one token), per KV head and tile:
  Vector<T> q;             // [tile_rows x head_dim]  gathered query heads of one group
  Vector<T> scores;        // [tile_rows x n_ctx]
  Vector<T> out;           // [tile_rows x head_dim]
  Vector<T> keys, values;  // [n_ctx x head_dim] decoded or gathered rows
  // Decode (attend_decode):
  Vector<T> partial;  // [items][group][head_dim + 2]: acc, then m, then l
  Eigen::Matrix<unsigned char, Eigen::Dynamic, 1> thread;  // [threads][per_thread_bytes]
  std::vector<Eigen::Index> item_begin;  // [batch + 1]: first item of each sequence
  int threads = 0;                       // threads `thread` is sized for
  Eigen::Index thread_stride = 0;        // bytes per thread

  /// Query tokens processed together in attend_causal (bounds the score buffer).
  static constexpr Eigen::Index tile_tokens = 32;

  /// For attend_causal of n_new > 1 tokens against n_ctx positions.
  /// `gathered`: the cache's rows are not T rows in one piece (another
  /// storage type, or blocks). May throw std::bad_alloc; the buffers stay
  /// valid (their contents are scratch).
  void reserve_prefill(Eigen::Index n_new, Eigen::Index n_ctx, Eigen::Index group,
                       Eigen::Index head_dim, bool gathered) {
    const Eigen::Index rows = std::min(n_new, tile_tokens) * group;
    detail::grow(q, rows * head_dim);
    detail::grow(scores, rows * n_ctx);
    detail::grow(out, rows * head_dim);
    if (gathered) {
      detail::grow(keys, n_ctx * head_dim);
      detail::grow(values, n_ctx * head_dim);
    }
  }

  /// For attend_decode of one sequence against up to max_ctx positions.
  void reserve_decode(Eigen::Index max_ctx, Eigen::Index n_kv_heads, Eigen::Index group,
                      Eigen::Index head_dim) {
    reserve_decode_items(n_kv_heads * chunks(max_ctx), group, head_dim, 1);
  }

  /// For attend_decode_batch: `items` (KV head, chunk) items in all, over
  /// `batch` sequences.
  void reserve_decode_items(Eigen::Index items, Eigen::Index group, Eigen::Index head_dim,
                            Eigen::Index batch) {
    const int t = std::max(1, detail::max_threads());
    const Eigen::Index per = per_thread_bytes(group, head_dim);
    detail::grow(partial, items * group * (head_dim + 2));
    if (thread_stride < per || thread.size() < Eigen::Index(t) * per + 64) {
      const Eigen::Index stride = std::max(per, thread_stride);
      decltype(thread) bigger(Eigen::Index(std::max(t, threads)) * stride + 64);
      thread.swap(bigger);
      thread_stride = stride;
    }
    threads = int((thread.size() - 64) / thread_stride);
    if (item_begin.size() < size_t(batch + 1)) item_begin.resize(size_t(batch + 1));
  }

  static Eigen::Index chunks(Eigen::Index n_ctx) {
    return (n_ctx + kDecodeChunk - 1) / kDecodeChunk;
  }

  /// Per thread: the kernels' chunk scratch, the item's spans, then the
  /// portable path's scores [kDecodeChunk x group] and decoded tile
  /// [kDecodeTile x head_dim] (in T).
  static Eigen::Index per_thread_bytes(Eigen::Index group, Eigen::Index head_dim) {
    const auto up = [](Eigen::Index b) { return (b + 63) / 64 * 64; };
    return up(kernels::chunk_scratch_bytes(group, head_dim)) +
           up(2 * kMaxSpans * Eigen::Index(sizeof(kernels::KVSpan<double, double>))) +
           up((group * kDecodeChunk + kDecodeTile * head_dim) * Eigen::Index(sizeof(T)));
  }

  /// Thread t's bytes, 64-byte aligned.
  unsigned char* thread_bytes(int t) {
    const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(thread.data());
    return reinterpret_cast<unsigned char*>((base + 63) / 64 * 64) +
           Eigen::Index(t) * thread_stride;
  }
};

}  // namespace ops
}  // namespace kvattn
