#pragma once
/// \file
/// Attention kernels over cached keys and values.
///
/// For a query q_r and cached keys k_0..k_{n-1} and values v_0..v_{n-1}:
///
///   s_j   = scale * q_r . k_j
///   p     = softmax(s)
///   out_r = sum_j p_j v_j
///
/// Heads are slices of a row: query head h is q[h*head_dim, (h+1)*head_dim).
/// Query head h reads KV head h / group_size, group_size = n_heads / n_kv_heads
/// (n_heads % n_kv_heads == 0). The group_size query heads that share a KV head
/// are contiguous in q and are processed together, so each cached key and value
/// row is read once per step rather than once per query head.
///
/// A Cache provides n_kv_heads(), head_dim(), size(), key_rows(h, first, n,
/// buf) / value_rows(...) returning rows in the compute type, and, for the
/// vectorized decode path, StorageType, key_data(h) / value_data(h) (rows as
/// stored) and key_scale_data(h) / value_scale_data(h) (int8 row scales or
/// nullptr). KVCache provides all of them, for every storage type. Kernels do
/// not own memory and check shapes with eigen_assert only; the layer checks
/// them before calling.

#include <kvattn/detail/scratch.hpp>
#include <kvattn/ops/group_kernels.hpp>
#include <kvattn/ops/softmax.hpp>
#include <kvattn/types.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

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

/// For scores [n x group] (position-major): m = column maxima, scores =
/// exp(scores - m) per column, l = column sums after.
template <class T>
void softmax_parts(T* scores, Eigen::Index n, Eigen::Index group, T* m, T* l) {
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> S(scores, n, group);
  Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>> M(m, group), L(l, group);
  M = S.colwise().maxCoeff();
  S.rowwise() -= M;
  S = S.exp();
  L = S.colwise().sum();
}

}  // namespace detail

namespace ops {

/// S = scale * Q K^T.
///   Q: [n_q x head_dim], K: [n_k x head_dim], S: [n_q x n_k].
template <class T>
void attention_scores(const Eigen::Ref<const RowMatrix<T>>& q,
                      const Eigen::Ref<const RowMatrix<T>>& k, T scale,
                      Eigen::Ref<RowMatrix<T>> s) {
  eigen_assert(q.cols() == k.cols() && s.rows() == q.rows() && s.cols() == k.rows());
  s.noalias() = scale * (q * k.transpose());
}

/// Cached positions per split-KV chunk of a decode step. Fixed, not derived
/// from the thread count, so the result is the same with any number of threads.
inline constexpr Eigen::Index kDecodeChunk = 256;

/// Cached rows per tile: what one call of the group kernels reads (decoded
/// into a small buffer first on the portable path when the cache stores
/// another type than T). The vectorized path reads the same bytes per tile:
/// 2x the rows for 16-bit storage, 4x for int8.
inline constexpr Eigen::Index kDecodeTile = 16;

/// How many rows ahead of the tile being computed the decode kernel
/// prefetches (measured on the benchmark machine: no prefetch lost about a
/// third of the fp32 bandwidth; 16 and 32 rows were within noise).
inline constexpr Eigen::Index kDecodePrefetchRows = 16;

/// Partial attention of a group of query heads over one chunk of the cache,
/// in softmax-merge form:
///   m_r   = max_j s_rj,   s_rj = scale * q_r . k_j,   j in [first, first+n)
///   l_r   = sum_j exp(s_rj - m_r)
///   acc_r = sum_j exp(s_rj - m_r) v_j
///   q:      [group x head_dim] of KV head h     n in [1, kDecodeChunk]
///   scores: [n x group] scratch     tile: [kDecodeTile * head_dim + group] scratch
///   codes:  [group * (head_dim + kDecodeChunk)] scratch (int8 storage)
///   acc:    [group x head_dim]; m, l: [group]
/// Keys, then values, stream through in tiles of kDecodeTile rows, each read
/// from memory once for the whole group (group_kernels.hpp). With AVX2/FMA,
/// float compute and head_dim % 8 == 0, the kernels read the cache as stored
/// and the tile kDecodePrefetchRows ahead is prefetched while one is
/// computed; int8 rows with head_dim % 16 == 0 take the integer kernels
/// (queries and softmax weights quantized to int16 in `codes`). Otherwise
/// rows are decoded into `tile` and multiplied by Eigen.
template <class T, class Cache>
void attend_chunk(const T* q, Eigen::Index group, const Cache& cache, Eigen::Index h,
                  Eigen::Index first, Eigen::Index n, T scale, T* scores, T* tile,
                  std::int16_t* codes, T* acc, T* m, T* l) {
  const Eigen::Index hd = cache.head_dim();
  eigen_assert(group >= 1 && n >= 1 && n <= kDecodeChunk);
  Eigen::Map<RowMatrix<T>> O(acc, group, hd);
  (void)codes;  // used by the int8 integer kernels only
#if defined(KVATTN_GROUP_KERNELS_AVX2)
  if constexpr (std::is_same<T, float>::value) {
    if (hd % 8 == 0) {  // read the cache as stored, widening in registers
      using Storage = typename Cache::StorageType;
      const Storage* k = cache.key_data(h) + first * hd;
      const Storage* v = cache.value_data(h) + first * hd;
      const T* k_scales = cache.key_scale_data(h);
      const T* v_scales = cache.value_scale_data(h);
      // Rows per kernel call: as many bytes as kDecodeTile fp32 rows (16-bit
      // storage 2x, int8 4x the rows: fewer per-tile reductions and stores).
      constexpr Eigen::Index per_float =
          std::max<Eigen::Index>(1, 4 / Eigen::Index(sizeof(Storage)));
      constexpr Eigen::Index tile_rows = kDecodeTile * per_float;
      // Prefetch the tile kDecodePrefetchRows fp32 rows' worth ahead, in the
      // order rows are consumed: keys, values, then the keys of the head's
      // next chunk; never past the cached rows. a: rows into that sequence.
      const Eigen::Index row_bytes = hd * Eigen::Index(sizeof(Storage));
      auto ahead = [&](Eigen::Index a) {
        simd::Prefetch pf;
        a += kDecodePrefetchRows * per_float;
        const Storage* base = a < 2 * n && a >= n ? v : k;
        const Eigen::Index row = a < n ? a : a - n;  // rows after `first` in base
        const Eigen::Index rows = std::min(tile_rows, cache.size() - (first + row));
        if (rows <= 0) return pf;
        pf.p = reinterpret_cast<const char*>(base + row * hd);
        pf.bytes = rows * row_bytes;
        return pf;
      };
      if constexpr (std::is_same<Storage, std::int8_t>::value) {
        if (simd::integer_head_dim(hd)) {       // int8 in the integer domain
          float* qs = tile + kDecodeTile * hd;  // [group], after the portable path's tile
          simd::quantize_query(q, group, hd, codes, qs);
          for (Eigen::Index j = 0; j < n; j += tile_rows) {
            simd::group_scores_i8(codes, qs, group, hd, k + j * hd, k_scales + first + j,
                                  std::min(tile_rows, n - j), scale, scores + j * group, ahead(j));
          }
          simd::softmax_parts(scores, n, group, m, l);
          std::int16_t* w16 = codes + group * hd;
          const float ws = simd::quantize_weights(scores, n, group, v_scales + first, w16);
          O.setZero();
          for (Eigen::Index j = 0; j < n; j += tile_rows) {  // j even: pair j/2
            simd::group_accumulate_i8(w16 + j * group, group, hd, v + j * hd,
                                      std::min(tile_rows, n - j), ws, acc, ahead(n + j));
          }
          return;
        }
      }
      for (Eigen::Index j = 0; j < n; j += tile_rows) {
        simd::group_scores(q, group, hd, k + j * hd,
                           k_scales != nullptr ? k_scales + first + j : nullptr,
                           std::min(tile_rows, n - j), scale, scores + j * group, ahead(j));
      }
      simd::softmax_parts(scores, n, group, m, l);
      if (v_scales != nullptr) {  // int8: fold each value row's scale into its weights
        Eigen::Map<Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> P(scores, n,
                                                                                       group);
        P.colwise() *= Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(v_scales + first, n);
      }
      O.setZero();
      for (Eigen::Index j = 0; j < n; j += tile_rows) {
        simd::group_accumulate(scores + j * group, group, hd, v + j * hd,
                               std::min(tile_rows, n - j), acc, ahead(n + j));
      }
      return;
    }
  }
#endif
  for (Eigen::Index j = 0; j < n; j += kDecodeTile) {
    const Eigen::Index rows = std::min(kDecodeTile, n - j);
    group_scores(q, group, hd, cache.key_rows(h, first + j, rows, tile), rows, scale,
                 scores + j * group);
  }
  detail::softmax_parts(scores, n, group, m, l);
  O.setZero();
  for (Eigen::Index j = 0; j < n; j += kDecodeTile) {
    const Eigen::Index rows = std::min(kDecodeTile, n - j);
    group_accumulate(scores + j * group, group, hd, cache.value_rows(h, first + j, rows, tile),
                     rows, acc);
  }
}

/// Scratch memory of the attention kernels, grown on demand and reused.
template <class T>
struct AttentionScratch {
  // Prefill (attend_causal with more than one token), per KV head and tile:
  Vector<T> q;             // [tile_rows x head_dim]  gathered query heads of one group
  Vector<T> scores;        // [tile_rows x n_ctx]
  Vector<T> out;           // [tile_rows x head_dim]
  Vector<T> keys, values;  // [n_ctx x head_dim] decoded rows (reduced storage only)
  // Decode (attend_decode):
  Vector<T> partial;  // [n_kv_heads * n_chunks][group][head_dim + 2]: acc, m, l
  Vector<T> thread;   // [threads][per_thread]: scores, then a decoded tile
  Eigen::Matrix<std::int16_t, Eigen::Dynamic, 1> codes;  // [threads][per_thread_codes]
  int threads = 0;  // threads `thread` and `codes` are sized for

  /// Query tokens processed together in attend_causal (bounds the score buffer).
  static constexpr Eigen::Index tile_tokens = 32;

  /// For attend_causal of n_new > 1 tokens against n_ctx positions.
  /// `decoded`: the cache stores another type than T. May throw
  /// std::bad_alloc; the buffers stay valid (their contents are scratch).
  void reserve_prefill(Eigen::Index n_new, Eigen::Index n_ctx, Eigen::Index group,
                       Eigen::Index head_dim, bool decoded) {
    const Eigen::Index rows = std::min(n_new, tile_tokens) * group;
    detail::grow(q, rows * head_dim);
    detail::grow(scores, rows * n_ctx);
    detail::grow(out, rows * head_dim);
    if (decoded) {
      detail::grow(keys, n_ctx * head_dim);
      detail::grow(values, n_ctx * head_dim);
    }
  }

  /// For attend_decode against up to max_ctx positions.
  void reserve_decode(Eigen::Index max_ctx, Eigen::Index n_kv_heads, Eigen::Index group,
                      Eigen::Index head_dim) {
    const Eigen::Index chunks = (max_ctx + kDecodeChunk - 1) / kDecodeChunk;
    const int t = std::max(1, detail::max_threads());
    detail::grow(partial, n_kv_heads * chunks * group * (head_dim + 2));
    detail::grow(thread, Eigen::Index(t) * per_thread(group, head_dim));
    detail::grow(codes, Eigen::Index(t) * per_thread_codes(group, head_dim));
    threads = std::max(threads, int(std::min(thread.size() / per_thread(group, head_dim),
                                             codes.size() / per_thread_codes(group, head_dim))));
  }

  // scores [kDecodeChunk x group] (position-major), then a decoded tile
  // [kDecodeTile x head_dim] and the query scales [group] of int8 storage.
  static Eigen::Index per_thread(Eigen::Index group, Eigen::Index head_dim) {
    return group * kDecodeChunk + kDecodeTile * head_dim + group;
  }
  // int8 storage: int16 query codes [group x head_dim], then weight codes
  // [kDecodeChunk x group].
  static Eigen::Index per_thread_codes(Eigen::Index group, Eigen::Index head_dim) {
    return group * (head_dim + kDecodeChunk);
  }
};

/// One decode step: a single query token at position n_ctx - 1 against the
/// first n_ctx cached positions.
///   q:   [n_heads*head_dim]    out: [n_heads*head_dim]
///   scratch: reserve_decode(>= n_ctx, ...) called for this cache's shape
///
/// Work is split into (KV head, chunk of kDecodeChunk positions) items, run
/// in parallel with OpenMP when available; each item streams its keys and
/// values once (attend_chunk) and yields (acc, m, l) per query head; items are merged
/// with the log-sum-exp rule in a fixed order:
///   M = max_c m_c,  L = sum_c l_c e^(m_c - M),  out = sum_c acc_c e^(m_c - M) / L
/// so the result is bitwise the same for any thread count.
template <class T, class Cache>
void attend_decode(const T* q, const Cache& cache, Eigen::Index n_ctx, Eigen::Index n_heads,
                   T scale, T* out, AttentionScratch<T>& scratch) {
  const Eigen::Index hd = cache.head_dim(), n_kv = cache.n_kv_heads(), g = n_heads / n_kv;
  const Eigen::Index chunks = (n_ctx + kDecodeChunk - 1) / kDecodeChunk;
  const Eigen::Index items = n_kv * chunks;
  const Eigen::Index stride = g * (hd + 2);  // one item's partial results
  const Eigen::Index per_thread = AttentionScratch<T>::per_thread(g, hd);
  const Eigen::Index per_thread_codes = AttentionScratch<T>::per_thread_codes(g, hd);
  eigen_assert(n_ctx >= 1 && n_ctx <= cache.size() && n_heads % n_kv == 0);
  eigen_assert(scratch.partial.size() >= items * stride && scratch.threads >= 1 &&
               scratch.thread.size() >= scratch.threads * per_thread &&
               scratch.codes.size() >= scratch.threads * per_thread_codes);
  T* partial = scratch.partial.data();
  T* thread_buffers = scratch.thread.data();
  auto run_item = [&](Eigen::Index item) {
    const Eigen::Index h = item / chunks, c = item % chunks;
    const Eigen::Index first = c * kDecodeChunk, n = std::min(kDecodeChunk, n_ctx - first);
    const int t = detail::thread_index();
    T* buf = thread_buffers + t * per_thread;
    T* acc = partial + item * stride;  // [g x hd], then m [g], then l [g]
    attend_chunk<T>(q + h * g * hd, g, cache, h, first, n, scale, buf, buf + g * kDecodeChunk,
                    scratch.codes.data() + t * per_thread_codes, acc, acc + g * hd,
                    acc + g * hd + g);
  };
#if defined(_OPENMP)
  // Threads pay off once the step reads more than about 1 MiB of cache; a
  // smaller step runs inline (entering a parallel region costs microseconds).
  const int threads = std::min(scratch.threads, detail::max_threads());
  if (threads > 1 && items > 1 &&
      n_ctx * hd * n_kv * 2 * Eigen::Index(sizeof(T)) >= (Eigen::Index(1) << 20)) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (Eigen::Index item = 0; item < items; ++item) run_item(item);
  } else {
    for (Eigen::Index item = 0; item < items; ++item) run_item(item);
  }
#else
  for (Eigen::Index item = 0; item < items; ++item) run_item(item);
#endif

  // Merge the chunks of each (KV head, query head) in chunk order.
  for (Eigen::Index h = 0; h < n_kv; ++h) {
    for (Eigen::Index r = 0; r < g; ++r) {
      Eigen::Map<Vector<T>> o(out + (h * g + r) * hd, hd);
      const T* first_item = partial + h * chunks * stride;
      T m = first_item[g * hd + r];
      for (Eigen::Index c = 1; c < chunks; ++c)
        m = std::max(m, first_item[c * stride + g * hd + r]);
      T l = T(0);
      o.setZero();
      for (Eigen::Index c = 0; c < chunks; ++c) {
        const T* item = first_item + c * stride;
        const T w = std::exp(item[g * hd + r] - m);
        l += w * item[g * hd + g + r];
        o += w * Eigen::Map<const Vector<T>>(item + r * hd, hd);
      }
      o *= T(1) / l;
    }
  }
}

/// Causal attention of n_new query tokens against a cache.
///   q:     [n_new x n_heads*head_dim]   token i is at absolute position first_pos + i
///   cache: holds at least first_pos + n_new tokens; token i attends positions 0..first_pos+i
///   out:   [n_new x n_heads*head_dim]
///   scratch: reserve_prefill(n_new, first_pos + n_new, ...) for n_new > 1,
///            reserve_decode(>= first_pos + 1, ...) for n_new == 1
/// One token takes attend_decode; more are processed per KV head in tiles of
/// AttentionScratch::tile_tokens tokens with matrix products and a causal mask.
template <class T, class Cache>
void attend_causal(const Eigen::Ref<const RowMatrix<T>>& q, const Cache& cache,
                   Eigen::Index first_pos, Eigen::Index n_heads, T scale,
                   Eigen::Ref<RowMatrix<T>> out, AttentionScratch<T>& scratch) {
  const Eigen::Index n_new = q.rows();
  const Eigen::Index hd = cache.head_dim();
  const Eigen::Index n_kv = cache.n_kv_heads();
  const Eigen::Index g = n_heads / n_kv;
  eigen_assert(n_heads % n_kv == 0 && q.cols() == n_heads * hd && out.rows() == n_new &&
               out.cols() == q.cols() && first_pos + n_new <= cache.size());
  if (n_new == 0) return;
  if (n_new == 1) {
    eigen_assert(out.outerStride() == out.cols() || out.rows() == 1);
    attend_decode<T>(q.data(), cache, first_pos + 1, n_heads, scale, out.data(), scratch);
    return;
  }

  const Eigen::Index total = first_pos + n_new;
  for (Eigen::Index h = 0; h < n_kv; ++h) {
    const Eigen::Map<const RowMatrix<T>> keys(cache.key_rows(h, 0, total, scratch.keys.data()),
                                              total, hd);
    const Eigen::Map<const RowMatrix<T>> values(
        cache.value_rows(h, 0, total, scratch.values.data()), total, hd);
    for (Eigen::Index i0 = 0; i0 < n_new; i0 += AttentionScratch<T>::tile_tokens) {
      const Eigen::Index i1 = std::min(n_new, i0 + AttentionScratch<T>::tile_tokens);
      const Eigen::Index rows = (i1 - i0) * g;    // row (i - i0)*g + r is token i, head h*g + r
      const Eigen::Index n_ctx = first_pos + i1;  // the tile's last token sees this many
      eigen_assert(scratch.scores.size() >= rows * n_ctx && scratch.q.size() >= rows * hd);
      Eigen::Map<RowMatrix<T>> Q(scratch.q.data(), rows, hd);
      Eigen::Map<RowMatrix<T>> S(scratch.scores.data(), rows, n_ctx);
      Eigen::Map<RowMatrix<T>> O(scratch.out.data(), rows, hd);
      for (Eigen::Index i = i0; i < i1; ++i) {
        for (Eigen::Index r = 0; r < g; ++r) {
          Q.row((i - i0) * g + r) = q.row(i).segment((h * g + r) * hd, hd);
        }
      }
      S.noalias() = scale * (Q * keys.topRows(n_ctx).transpose());
      for (Eigen::Index i = i0; i < i1; ++i) {
        const Eigen::Index visible = first_pos + i + 1;  // causal mask: positions 0..first_pos+i
        for (Eigen::Index r = 0; r < g; ++r) {
          T* row = &S((i - i0) * g + r, 0);
          softmax_inplace(row, visible);
          std::fill(row + visible, row + n_ctx, T(0));
        }
      }
      // O = P V over visible positions only (a masked 0 times a NaN or
      // infinite future value would still poison the sum): one product over
      // the positions every token of the tile sees, then each token's few
      // extra positions.
      const Eigen::Index common = first_pos + i0 + 1;
      O.noalias() = S.leftCols(common) * values.topRows(common);
      for (Eigen::Index i = i0 + 1; i < i1; ++i) {
        const Eigen::Index extra = first_pos + i + 1 - common;
        O.middleRows((i - i0) * g, g).noalias() +=
            S.block((i - i0) * g, common, g, extra) * values.middleRows(common, extra);
      }
      for (Eigen::Index i = i0; i < i1; ++i) {
        for (Eigen::Index r = 0; r < g; ++r) {
          out.row(i).segment((h * g + r) * hd, hd) = O.row((i - i0) * g + r);
        }
      }
    }
  }
}

}  // namespace ops
}  // namespace kvattn
