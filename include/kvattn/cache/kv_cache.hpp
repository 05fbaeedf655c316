#pragma once
/// \file
/// KVCache: the keys and values of every token seen so far, for one layer.
///
/// Layout: each KV head owns one contiguous row-major block of
/// capacity x head_dim keys (and one of values), token t at row t:
///
///   keys:   [n_kv_heads][capacity][head_dim]
///   values: [n_kv_heads][capacity][head_dim]
///
/// so a decode step streams each head's first size() rows front to back. The
/// whole capacity is allocated once, at construction; append never allocates.

#include <kvattn/error.hpp>
#include <kvattn/types.hpp>

#include <limits>
#include <stdexcept>
#include <utility>

namespace kvattn {

template <class T>
class KVCache {
 public:
  using Scalar = T;
  /// Read-only view of one KV head: [size() x head_dim], row-major, contiguous.
  using View = Eigen::Map<const RowMatrix<T>>;

  /// Allocates capacity tokens for n_kv_heads heads of head_dim features, zeroed.
  /// Throws std::invalid_argument if a size is not positive and
  /// std::length_error if the total does not fit in memory indices.
  KVCache(Eigen::Index n_kv_heads, Eigen::Index head_dim, Eigen::Index capacity)
      : n_kv_heads_(n_kv_heads), head_dim_(head_dim), capacity_(capacity) {
    constexpr const char* fn = "KVCache";
    detail::check_arg(n_kv_heads > 0, fn, "n_kv_heads", n_kv_heads, "> 0");
    detail::check_arg(head_dim > 0, fn, "head_dim", head_dim, "> 0");
    detail::check_arg(capacity > 0, fn, "capacity", capacity, "> 0");
    const Eigen::Index limit =
        std::numeric_limits<Eigen::Index>::max() / static_cast<Eigen::Index>(sizeof(T));
    if (n_kv_heads > limit / head_dim || n_kv_heads * head_dim > limit / capacity) {
      throw std::length_error(detail::concat(fn, ": n_kv_heads*head_dim*capacity = ", n_kv_heads,
                                             "*", head_dim, "*", capacity, " is too large"));
    }
    k_.setZero(n_kv_heads * capacity * head_dim);
    v_.setZero(n_kv_heads * capacity * head_dim);
  }

  KVCache(KVCache&& other) noexcept { swap(other); }
  KVCache& operator=(KVCache&& other) noexcept {
    KVCache(std::move(other)).swap(*this);
    return *this;
  }
  /// Copying a cache copies every cached byte: ask for it with copy().
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;

  /// A deep copy (same capacity and contents).
  KVCache copy() const {
    KVCache c;
    c.n_kv_heads_ = n_kv_heads_;
    c.head_dim_ = head_dim_;
    c.capacity_ = capacity_;
    c.size_ = size_;
    c.k_ = k_;
    c.v_ = v_;
    return c;
  }

  void swap(KVCache& other) noexcept {
    std::swap(n_kv_heads_, other.n_kv_heads_);
    std::swap(head_dim_, other.head_dim_);
    std::swap(capacity_, other.capacity_);
    std::swap(size_, other.size_);
    k_.swap(other.k_);
    v_.swap(other.v_);
  }

  Eigen::Index size() const { return size_; }          ///< tokens cached
  Eigen::Index capacity() const { return capacity_; }  ///< tokens it can hold
  bool empty() const { return size_ == 0; }
  Eigen::Index n_kv_heads() const { return n_kv_heads_; }
  Eigen::Index head_dim() const { return head_dim_; }
  Eigen::Index kv_dim() const { return n_kv_heads_ * head_dim_; }  ///< width of a k or v row

  /// Appends n tokens. k, v: [n x n_kv_heads*head_dim], token per row, heads
  /// side by side (head h at columns [h*head_dim, (h+1)*head_dim)).
  /// Throws std::invalid_argument on a shape mismatch and std::length_error if
  /// size() + n > capacity(); in both cases the cache is unchanged.
  void append(const Eigen::Ref<const RowMatrix<T>>& k, const Eigen::Ref<const RowMatrix<T>>& v) {
    constexpr const char* fn = "KVCache::append";
    detail::check_cols(fn, "k", k.cols(), "n_kv_heads*head_dim", kv_dim());
    detail::check_cols(fn, "v", v.cols(), "n_kv_heads*head_dim", kv_dim());
    if (k.rows() != v.rows()) {
      throw std::invalid_argument(detail::concat(fn, ": v has ", v.rows(),
                                                 " rows, expected the rows of k = ", k.rows()));
    }
    check_room(fn, k.rows());
    const Eigen::Index n = k.rows();
    for (Eigen::Index h = 0; h < n_kv_heads_; ++h) {
      block(k_, h).middleRows(size_, n) = k.middleCols(h * head_dim_, head_dim_);
      block(v_, h).middleRows(size_, n) = v.middleCols(h * head_dim_, head_dim_);
    }
    size_ += n;
  }

  /// Keys of KV head h: [size() x head_dim]. Valid until the next append,
  /// truncate, clear or move. Throws std::out_of_range for a bad h.
  View keys(Eigen::Index h) const { return view(k_, h, "KVCache::keys"); }
  /// Values of KV head h: [size() x head_dim].
  View values(Eigen::Index h) const { return view(v_, h, "KVCache::values"); }

  /// Keeps the first n tokens (0 <= n <= size()), dropping the rest, as
  /// speculative decoding and editing need. Throws std::invalid_argument
  /// otherwise, leaving the cache unchanged.
  void truncate(Eigen::Index n) {
    if (n < 0 || n > size_) {
      throw std::invalid_argument(
          detail::concat("KVCache::truncate: n = ", n, ", expected 0 <= n <= size() = ", size_));
    }
    size_ = n;
  }

  /// Drops every token; capacity and memory stay.
  void clear() noexcept { size_ = 0; }

  /// Throws std::length_error unless n more tokens fit.
  void check_room(const char* fn, Eigen::Index n) const {
    if (n > capacity_ - size_) {
      throw std::length_error(detail::concat(fn, ": appending ", n, " tokens to ", size_,
                                             " cached exceeds capacity = ", capacity_));
    }
  }

 private:
  KVCache() = default;

  Eigen::Map<RowMatrix<T>> block(Vector<T>& data, Eigen::Index h) {
    return Eigen::Map<RowMatrix<T>>(data.data() + h * capacity_ * head_dim_, capacity_, head_dim_);
  }
  View view(const Vector<T>& data, Eigen::Index h, const char* fn) const {
    if (h < 0 || h >= n_kv_heads_) {
      throw std::out_of_range(
          detail::concat(fn, ": h = ", h, ", expected 0 <= h < n_kv_heads = ", n_kv_heads_));
    }
    return View(data.data() + h * capacity_ * head_dim_, size_, head_dim_);
  }

  Eigen::Index n_kv_heads_ = 0;
  Eigen::Index head_dim_ = 0;
  Eigen::Index capacity_ = 0;
  Eigen::Index size_ = 0;
  Vector<T> k_;  // [n_kv_heads][capacity][head_dim]
  Vector<T> v_;  // [n_kv_heads][capacity][head_dim]
};

}  // namespace kvattn
