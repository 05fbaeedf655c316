#pragma once
/// \file
/// Views of one layer of a PagedKVCache:
///   PagedLayer      what MultiHeadAttention takes in place of a KVCache
///                   (cache.layer(l)): the layer's rows of every sequence;
///   PagedSeqView    one sequence's first n positions of that layer, in the
///                   shape the attention kernels read (ops/decode.hpp,
///                   ops/attention.hpp): runs of rows per block, or rows
///                   gathered into a buffer for prefill.

#include <kvattn/cache/paged_kv_cache.hpp>
#include <kvattn/cache/storage.hpp>
#include <kvattn/error.hpp>
#include <kvattn/kernels/types.hpp>
#include <kvattn/types.hpp>

#include <algorithm>

namespace kvattn {

/// Positions [0, size()) of one sequence in one layer, for the kernels.
template <class T, class Storage>
class PagedSeqView {
 public:
  using Scalar = T;
  using StorageType = Storage;

  PagedSeqView(const PagedKVCache<T, Storage>& cache, Eigen::Index layer, SeqId seq,
               Eigen::Index size)
      : cache_(&cache), layer_(layer), seq_(seq), size_(size) {}

  Eigen::Index n_kv_heads() const { return cache_->n_kv_heads(); }
  Eigen::Index head_dim() const { return cache_->head_dim(); }
  Eigen::Index size() const { return size_; }

  /// Positions [first, first+n) of KV head h as runs of rows, one per block.
  template <class Span>
  Eigen::Index spans(Eigen::Index h, Eigen::Index first, Eigen::Index n, Span* out,
                     Eigen::Index max_out) const {
    eigen_assert(first >= 0 && first + n <= size_);
    return cache_->spans(seq_, layer_, h, first, n, out, max_out);
  }

  /// Rows [first, first+n) of head h's keys in T, [n x head_dim] row-major,
  /// gathered from the blocks into buf (n*head_dim elements).
  const T* key_rows(Eigen::Index h, Eigen::Index first, Eigen::Index n, T* buf) const {
    return gather(h, first, n, buf, true);
  }
  /// The same for values.
  const T* value_rows(Eigen::Index h, Eigen::Index first, Eigen::Index n, T* buf) const {
    return gather(h, first, n, buf, false);
  }

 private:
  const T* gather(Eigen::Index h, Eigen::Index first, Eigen::Index n, T* buf, bool keys) const {
    const Eigen::Index hd = head_dim();
    kernels::KVSpan<Storage, T> span;
    for (Eigen::Index p = first; p < first + n; p += span.rows) {
      spans(h, p, first + n - p, &span, 1);
      const Storage* rows = keys ? span.k : span.v;
      const T* scales = keys ? span.k_scales : span.v_scales;
      T* dst = buf + (p - first) * hd;
      if constexpr (std::is_same<Storage, T>::value) {
        (void)scales;
        std::copy(rows, rows + span.rows * hd, dst);
      } else {
        detail::decode_rows<T, Storage>(rows, scales, span.rows, hd, dst);
      }
    }
    return buf;
  }

  const PagedKVCache<T, Storage>* cache_;
  Eigen::Index layer_;
  SeqId seq_;
  Eigen::Index size_;
};

/// Layer l of a PagedKVCache: what MultiHeadAttention's paged forward and
/// step_batch take. A cheap handle (a pointer and an index), valid while the
/// cache lives.
template <class T, class Storage>
class PagedLayer {
 public:
  using Scalar = T;
  using StorageType = Storage;

  /// Throws std::out_of_range for a layer the cache does not have.
  PagedLayer(PagedKVCache<T, Storage>& cache, Eigen::Index layer) : cache_(&cache), layer_(layer) {
    if (layer < 0 || layer >= cache.n_layers()) {
      throw std::out_of_range(
          detail::concat("PagedKVCache::layer: layer = ", layer,
                         ", expected 0 <= layer < n_layers = ", cache.n_layers()));
    }
  }

  PagedKVCache<T, Storage>& cache() const { return *cache_; }
  Eigen::Index index() const { return layer_; }
  Eigen::Index n_kv_heads() const { return cache_->n_kv_heads(); }
  Eigen::Index head_dim() const { return cache_->head_dim(); }
  Eigen::Index kv_dim() const { return n_kv_heads() * head_dim(); }

  /// Tokens this layer holds for `seq`.
  Eigen::Index size(SeqId seq) const { return cache_->layer_length(seq, layer_); }

  /// The first n positions of `seq` in this layer, for the kernels.
  PagedSeqView<T, Storage> view(SeqId seq, Eigen::Index n) const {
    return PagedSeqView<T, Storage>(*cache_, layer_, seq, n);
  }

  /// Appends n tokens to this layer of `seq`: k, v [n x n_kv_heads*head_dim].
  /// Blocks are allocated (or copied, where shared) as needed. Throws
  /// std::invalid_argument (shapes, unknown seq) or std::length_error (pool
  /// exhausted), changing nothing.
  void append(SeqId seq, const Eigen::Ref<const RowMatrix<T>>& k,
              const Eigen::Ref<const RowMatrix<T>>& v) const {
    constexpr const char* fn = "PagedLayer::append";
    detail::check_cols(fn, "k", k.cols(), "n_kv_heads*head_dim", kv_dim());
    detail::check_cols(fn, "v", v.cols(), "n_kv_heads*head_dim", kv_dim());
    if (k.rows() != v.rows()) {
      throw std::invalid_argument(
          detail::concat(fn, ": v has ", v.rows(), " rows, expected the rows of k = ", k.rows()));
    }
    const Eigen::Index first = size(seq), end = first + k.rows();
    PagedUndo undo;
    cache_->prepare(&seq, &first, &end, 1, undo);
    cache_->write_rows(seq, layer_, first, k, v);
  }

 private:
  PagedKVCache<T, Storage>* cache_;
  Eigen::Index layer_;
};

template <class T, class Storage>
PagedLayer<T, Storage> PagedKVCache<T, Storage>::layer(Eigen::Index l) {
  return PagedLayer<T, Storage>(*this, l);
}

}  // namespace kvattn
