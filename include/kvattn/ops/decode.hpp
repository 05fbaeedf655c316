#pragma once
/// \file
/// Decode attention: one new query token per sequence against its cache,
/// for one sequence or a batch of them.
///
/// For query head r of KV head h and the sequence's cached keys k_j and
/// values v_j (j < n_ctx):  out_r = sum_j softmax_j(scale * q_r . k_j) v_j.
///
/// Work is split into (sequence, KV head, chunk of kDecodeChunk positions)
/// items, run on OpenMP threads when there is enough of it; each item
/// streams its keys and values once for the g = n_heads / n_kv_heads query
/// heads that share them (kernels::ChunkTask for float, an Eigen form for
/// other compute types) and yields (acc, m, l) per query head; a sequence's
/// items are merged with the log-sum-exp rule in chunk order:
///   M = max_c m_c,  L = sum_c l_c e^(m_c - M),  out = sum_c acc_c e^(m_c - M) / L
/// Chunk boundaries depend on positions only, so with float compute (the
/// kernels) a result is bitwise the same for any thread count and, in a
/// batch, whatever the other sequences; other compute types agree to
/// rounding (Eigen's products).
///
/// A Cache provides n_kv_heads(), head_dim(), StorageType and
///   spans(h, first, n, Span* out, max_out) -> count: positions [first,
///   first+n) of KV head h as runs of contiguous rows (kernels::KVSpan<S, T>),
///   at most max_out of them.
/// KVCache yields one run, a paged cache one per block.

#include <kvattn/cache/storage.hpp>
#include <kvattn/kernels/kernels.hpp>
#include <kvattn/ops/scratch.hpp>
#include <kvattn/types.hpp>

#include <algorithm>
#include <cmath>
#include <type_traits>

namespace kvattn {
namespace ops {

/// Portable form.  q: [g x hd]  k: [n x hd] (row stride ks)  s: [n x g]:
///   s[j*g + r] = scale q_r . k_j
template <class T>
void group_scores(const T* q, Eigen::Index g, Eigen::Index hd, const T* k, Eigen::Index ks,
                  Eigen::Index n, T scale, T* s) {
  using Strided = Eigen::Map<const RowMatrix<T>, 0, Eigen::OuterStride<>>;
  Eigen::Map<RowMatrix<T>> S(s, n, g);
  S.noalias() = Strided(k, n, hd, Eigen::OuterStride<>(ks)) *
                Eigen::Map<const RowMatrix<T>>(q, g, hd).transpose();
  S *= scale;
}

/// Portable form.  p: [n x g]  v: [n x hd] (row stride vs)  o: [g x hd]:
///   o[r*hd + d] += sum_j p[j*g + r] v_j[d]
template <class T>
void group_accumulate(const T* p, Eigen::Index g, Eigen::Index hd, const T* v, Eigen::Index vs,
                      Eigen::Index n, T* o) {
  using Strided = Eigen::Map<const RowMatrix<T>, 0, Eigen::OuterStride<>>;
  Eigen::Map<RowMatrix<T>> O(o, g, hd);
  O.noalias() += Eigen::Map<const RowMatrix<T>>(p, n, g).transpose() *
                 Strided(v, n, hd, Eigen::OuterStride<>(vs));
}

namespace detail {

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

/// Rows [r, r + count) of a span's keys (or values) in T: the rows
/// themselves when stored as T, else decoded into tile [count x hd]. Sets
/// *stride to the result's row stride.
template <class T, class S>
const T* rows_as_t(const S* rows, const T* scales, Eigen::Index stride, Eigen::Index count,
                   Eigen::Index hd, T* tile, Eigen::Index* out_stride) {
  if constexpr (std::is_same<S, T>::value) {
    (void)scales;
    (void)tile;
    (void)hd;
    *out_stride = stride;
    return rows;
  } else {
    for (Eigen::Index i = 0; i < count; ++i) {
      kvattn::detail::decode_rows<T, S>(rows + i * stride, scales != nullptr ? scales + i : nullptr,
                                        1, hd, tile + i * hd);
    }
    *out_stride = hd;
    return tile;
  }
}

/// One item in the portable form (any compute type T), kDecodeTile rows at a time.
///   q: [g x hd]  scores: [kDecodeChunk x g]  tile: [kDecodeTile x hd]
///   acc: [g x hd], m, l: [g] (written)
template <class T, class S>
void attend_chunk_eigen(const T* q, Eigen::Index g, Eigen::Index hd,
                        const kernels::KVSpan<S, T>* spans, Eigen::Index n_spans, Eigen::Index n,
                        T scale, T* scores, T* tile, T* acc, T* m, T* l) {
  Eigen::Index j = 0;
  for (Eigen::Index i = 0; i < n_spans; ++i) {
    const kernels::KVSpan<S, T>& sp = spans[i];
    for (Eigen::Index r = 0; r < sp.rows; r += kDecodeTile) {
      const Eigen::Index count = std::min(kDecodeTile, sp.rows - r);
      Eigen::Index stride = 0;
      const T* k = rows_as_t<T, S>(sp.k + r * sp.stride, sp.k_scales ? sp.k_scales + r : nullptr,
                                   sp.stride, count, hd, tile, &stride);
      group_scores(q, g, hd, k, stride, count, scale, scores + j * g);
      j += count;
    }
  }
  softmax_parts(scores, n, g, m, l);
  Eigen::Map<RowMatrix<T>>(acc, g, hd).setZero();
  j = 0;
  for (Eigen::Index i = 0; i < n_spans; ++i) {
    const kernels::KVSpan<S, T>& sp = spans[i];
    for (Eigen::Index r = 0; r < sp.rows; r += kDecodeTile) {
      const Eigen::Index count = std::min(kDecodeTile, sp.rows - r);
      Eigen::Index stride = 0;
      const T* v = rows_as_t<T, S>(sp.v + r * sp.stride, sp.v_scales ? sp.v_scales + r : nullptr,
                                   sp.stride, count, hd, tile, &stride);
      group_accumulate(scores + j * g, g, hd, v, stride, count, acc);
      j += count;
    }
  }
}

/// Runs item `item` of the batch: (sequence s, KV head h, chunk c).
template <class T, class Seq>
void run_decode_item(const Seq* seqs, Eigen::Index batch, Eigen::Index item, Eigen::Index n_heads,
                     T scale, AttentionScratch<T>& scratch, int thread) {
  using Storage = typename Seq::CacheType::StorageType;
  using Span = kernels::KVSpan<Storage, T>;
  const std::vector<Eigen::Index>& begin = scratch.item_begin;
  const Eigen::Index s =
      Eigen::Index(std::upper_bound(begin.begin(), begin.begin() + batch + 1, item) -
                   begin.begin()) -
      1;
  const Seq& seq = seqs[s];
  const auto& cache = *seq.cache;
  const Eigen::Index hd = cache.head_dim(), n_kv = cache.n_kv_heads(), g = n_heads / n_kv;
  const Eigen::Index chunks = AttentionScratch<T>::chunks(seq.n_ctx);
  const Eigen::Index local = item - begin[size_t(s)];
  const Eigen::Index h = local / chunks, c = local % chunks;
  const Eigen::Index first = c * kDecodeChunk, n = std::min(kDecodeChunk, seq.n_ctx - first);
  eigen_assert(thread >= 0 && thread < scratch.threads);
  unsigned char* bytes = scratch.thread_bytes(thread);
  const auto up = [](Eigen::Index b) { return (b + 63) / 64 * 64; };
  void* chunk_scratch = bytes;
  Span* spans = reinterpret_cast<Span*>(bytes + up(kernels::chunk_scratch_bytes(g, hd)));
  T* eigen_area = reinterpret_cast<T*>(
      reinterpret_cast<unsigned char*>(spans) +
      up(2 * kMaxSpans * Eigen::Index(sizeof(kernels::KVSpan<double, double>))));
  const Eigen::Index n_spans = cache.spans(h, first, n, spans, kMaxSpans);
  T* acc = scratch.partial.data() + item * g * (hd + 2);  // [g x hd], then m [g], then l [g]
  if constexpr (std::is_same<T, float>::value) {
    kernels::ChunkTask<Storage> t;
    t.q = seq.q + h * g * hd;
    t.g = g;
    t.hd = hd;
    t.spans = spans;
    t.n_spans = n_spans;
    t.n = n;
    if (first + n < seq.n_ctx) cache.spans(h, first + n, seq.n_ctx - first - n, &t.next, 1);
    t.scale = scale;
    t.acc = acc;
    t.m = acc + g * hd;
    t.l = acc + g * hd + g;
    t.scratch = chunk_scratch;
    kernels::active().attend(t);
  } else {
    attend_chunk_eigen<T, Storage>(seq.q + h * g * hd, g, hd, spans, n_spans, n, scale, eigen_area,
                                   eigen_area + g * kDecodeChunk, acc, acc + g * hd,
                                   acc + g * hd + g);
  }
}

/// Merges the items of sequence s into its output, in chunk order.
template <class T, class Seq>
void merge_decode_items(const Seq& seq, Eigen::Index first_item, Eigen::Index n_heads,
                        const AttentionScratch<T>& scratch) {
  const Eigen::Index hd = seq.cache->head_dim(), n_kv = seq.cache->n_kv_heads(), g = n_heads / n_kv;
  const Eigen::Index chunks = AttentionScratch<T>::chunks(seq.n_ctx);
  const Eigen::Index stride = g * (hd + 2);
  for (Eigen::Index h = 0; h < n_kv; ++h) {
    const T* head_items = scratch.partial.data() + (first_item + h * chunks) * stride;
    for (Eigen::Index r = 0; r < g; ++r) {
      Eigen::Map<Vector<T>> o(seq.out + (h * g + r) * hd, hd);
      T m = head_items[g * hd + r];
      for (Eigen::Index c = 1; c < chunks; ++c)
        m = std::max(m, head_items[c * stride + g * hd + r]);
      T l = T(0);
      o.setZero();
      for (Eigen::Index c = 0; c < chunks; ++c) {
        const T* it = head_items + c * stride;
        const T w = std::exp(it[g * hd + r] - m);
        l += w * it[g * hd + g + r];
        o += w * Eigen::Map<const Vector<T>>(it + r * hd, hd);
      }
      o *= T(1) / l;
    }
  }
}

}  // namespace detail

/// One sequence of a batched decode step: its cache, its query
/// [n_heads*head_dim] at position n_ctx - 1, attending the first n_ctx cached
/// positions, and where its output [n_heads*head_dim] goes.
template <class T, class Cache>
struct DecodeSeq {
  using CacheType = Cache;
  const Cache* cache = nullptr;
  const T* q = nullptr;
  Eigen::Index n_ctx = 0;
  T* out = nullptr;
};

/// Decode attention for a batch of sequences (each n_ctx >= 1, the same
/// n_heads and cache shape). scratch: reserve_decode_items(total items,
/// group, head_dim, batch) first, items = sum over sequences of
/// n_kv_heads * ceil(n_ctx / kDecodeChunk).
template <class T, class Cache>
void attend_decode_batch(const DecodeSeq<T, Cache>* seqs, Eigen::Index batch, Eigen::Index n_heads,
                         T scale, AttentionScratch<T>& scratch) {
  if (batch == 0) return;
  const Eigen::Index n_kv = seqs[0].cache->n_kv_heads(), hd = seqs[0].cache->head_dim();
  Eigen::Index items = 0, positions = 0;
  for (Eigen::Index s = 0; s < batch; ++s) {
    eigen_assert(seqs[s].n_ctx >= 1 && seqs[s].cache->n_kv_heads() == n_kv);
    scratch.item_begin[size_t(s)] = items;
    items += n_kv * AttentionScratch<T>::chunks(seqs[s].n_ctx);
    positions += seqs[s].n_ctx;
  }
  scratch.item_begin[size_t(batch)] = items;
  eigen_assert(scratch.partial.size() >= items * (n_heads / n_kv) * (hd + 2) &&
               scratch.threads >= 1 && Eigen::Index(scratch.item_begin.size()) > batch);
  using Storage = typename Cache::StorageType;
  if constexpr (std::is_same<T, float>::value)
    (void)kernels::active();  // any error, before the threads
#if defined(_OPENMP)
  // Threads pay off once the step reads more than about 1 MiB of cache; a
  // smaller step runs inline (entering a parallel region costs microseconds).
  const int threads = std::min(scratch.threads, kvattn::detail::max_threads());
  if (threads > 1 && items > 1 &&
      positions * hd * n_kv * 2 * Eigen::Index(sizeof(Storage)) >= (Eigen::Index(1) << 20)) {
    if (batch == 1) {
#pragma omp parallel for schedule(static) num_threads(threads)
      for (Eigen::Index item = 0; item < items; ++item) {
        detail::run_decode_item<T>(seqs, batch, item, n_heads, scale, scratch,
                                   kvattn::detail::thread_index());
      }
    } else {  // uneven lengths: threads take the next item as they finish
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
      for (Eigen::Index item = 0; item < items; ++item) {
        detail::run_decode_item<T>(seqs, batch, item, n_heads, scale, scratch,
                                   kvattn::detail::thread_index());
      }
    }
  } else {
    for (Eigen::Index item = 0; item < items; ++item) {
      detail::run_decode_item<T>(seqs, batch, item, n_heads, scale, scratch, 0);
    }
  }
#else
  (void)sizeof(Storage);
  (void)positions;
  (void)hd;
  for (Eigen::Index item = 0; item < items; ++item) {
    detail::run_decode_item<T>(seqs, batch, item, n_heads, scale, scratch, 0);
  }
#endif
  for (Eigen::Index s = 0; s < batch; ++s) {
    detail::merge_decode_items<T>(seqs[s], scratch.item_begin[size_t(s)], n_heads, scratch);
  }
}

/// One decode step of one sequence: q [n_heads*head_dim] at position
/// n_ctx - 1 against the first n_ctx cached positions; out [n_heads*head_dim].
/// scratch: reserve_decode(>= n_ctx, n_kv_heads, group, head_dim) first.
template <class T, class Cache>
void attend_decode(const T* q, const Cache& cache, Eigen::Index n_ctx, Eigen::Index n_heads,
                   T scale, T* out, AttentionScratch<T>& scratch) {
  const DecodeSeq<T, Cache> seq{&cache, q, n_ctx, out};
  attend_decode_batch<T>(&seq, 1, n_heads, scale, scratch);
}

}  // namespace ops
}  // namespace kvattn
