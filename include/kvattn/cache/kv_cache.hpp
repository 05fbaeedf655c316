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
/// Large caches ask the OS for transparent huge pages (detail/large_buffer.hpp).
///
/// T is the compute type (what append takes and attention computes in);
/// Storage is what the cache keeps (see cache/storage.hpp): T itself, or
/// Eigen::bfloat16 / Eigen::half / std::int8_t to read fewer bytes per step.

#include <kvattn/cache/storage.hpp>
#include <kvattn/detail/large_buffer.hpp>
#include <kvattn/error.hpp>
#include <kvattn/types.hpp>

#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <utility>

namespace kvattn {

template <class T, class Storage = T>
class KVCache {
 public:
  using Scalar = T;
  using StorageType = Storage;
  static constexpr bool is_quantized = StorageTraits<Storage>::is_quantized;
  /// Read-only view of one KV head as stored: [size() x head_dim], row-major, contiguous.
  using View = Eigen::Map<const RowMatrix<Storage>>;

  /// Allocates capacity tokens for n_kv_heads heads of head_dim features, zeroed.
  /// Throws std::invalid_argument if a size is not positive and
  /// std::length_error if the total does not fit in memory indices.
  KVCache(Eigen::Index n_kv_heads, Eigen::Index head_dim, Eigen::Index capacity)
      : n_kv_heads_(n_kv_heads), head_dim_(head_dim), capacity_(capacity) {
    constexpr const char* fn = "KVCache";
    detail::check_arg(n_kv_heads > 0, fn, "n_kv_heads", n_kv_heads, "> 0");
    detail::check_arg(head_dim > 0, fn, "head_dim", head_dim, "> 0");
    detail::check_arg(capacity > 0, fn, "capacity", capacity, "> 0");
    const Eigen::Index limit = std::numeric_limits<Eigen::Index>::max() /
                               static_cast<Eigen::Index>(sizeof(T) + sizeof(Storage));
    if (n_kv_heads > limit / head_dim || n_kv_heads * head_dim > limit / capacity) {
      throw std::length_error(detail::concat(fn, ": n_kv_heads*head_dim*capacity = ", n_kv_heads,
                                             "*", head_dim, "*", capacity, " is too large"));
    }
    k_ = Data(n_kv_heads * capacity * head_dim);
    v_ = Data(n_kv_heads * capacity * head_dim);
    if (is_quantized) {
      k_scale_.setZero(n_kv_heads * capacity);
      v_scale_.setZero(n_kv_heads * capacity);
    }
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
    c.k_scale_ = k_scale_;
    c.v_scale_ = v_scale_;
    return c;
  }

  void swap(KVCache& other) noexcept {
    std::swap(n_kv_heads_, other.n_kv_heads_);
    std::swap(head_dim_, other.head_dim_);
    std::swap(capacity_, other.capacity_);
    std::swap(size_, other.size_);
    k_.swap(other.k_);
    v_.swap(other.v_);
    k_scale_.swap(other.k_scale_);
    v_scale_.swap(other.v_scale_);
  }

  Eigen::Index size() const { return size_; }          ///< tokens cached
  Eigen::Index capacity() const { return capacity_; }  ///< tokens it can hold
  bool empty() const { return size_ == 0; }
  Eigen::Index n_kv_heads() const { return n_kv_heads_; }
  Eigen::Index head_dim() const { return head_dim_; }
  Eigen::Index kv_dim() const { return n_kv_heads_ * head_dim_; }  ///< width of a k or v row
  /// Bytes stored per cached token (keys, values and int8 scales of every head).
  Eigen::Index bytes_per_token() const {
    return 2 * n_kv_heads_ *
           (head_dim_ * Eigen::Index(sizeof(Storage)) +
            (is_quantized ? Eigen::Index(sizeof(T)) : 0));
  }

  /// Appends n tokens. k, v: [n x n_kv_heads*head_dim], token per row, heads
  /// side by side (head h at columns [h*head_dim, (h+1)*head_dim)).
  /// Throws std::invalid_argument on a shape mismatch and std::length_error if
  /// size() + n > capacity(); in both cases the cache is unchanged.
  void append(const Eigen::Ref<const RowMatrix<T>>& k, const Eigen::Ref<const RowMatrix<T>>& v) {
    constexpr const char* fn = "KVCache::append";
    detail::check_cols(fn, "k", k.cols(), "n_kv_heads*head_dim", kv_dim());
    detail::check_cols(fn, "v", v.cols(), "n_kv_heads*head_dim", kv_dim());
    if (k.rows() != v.rows()) {
      throw std::invalid_argument(
          detail::concat(fn, ": v has ", v.rows(), " rows, expected the rows of k = ", k.rows()));
    }
    check_room(fn, k.rows());
    const Eigen::Index n = k.rows();
    for (Eigen::Index h = 0; h < n_kv_heads_; ++h) {
      for (Eigen::Index i = 0; i < n; ++i) {
        const Eigen::Index row = h * capacity_ + size_ + i;  // token size_+i of head h
        detail::encode_row<T, Storage>(k.data() + i * k.outerStride() + h * head_dim_, head_dim_,
                                       k_.data() + row * head_dim_,
                                       is_quantized ? k_scale_.data() + row : nullptr);
        detail::encode_row<T, Storage>(v.data() + i * v.outerStride() + h * head_dim_, head_dim_,
                                       v_.data() + row * head_dim_,
                                       is_quantized ? v_scale_.data() + row : nullptr);
      }
    }
    size_ += n;
  }

  /// Keys of KV head h: [size() x head_dim]. Valid until the next append,
  /// truncate, clear or move. Throws std::out_of_range for a bad h.
  View keys(Eigen::Index h) const { return view(k_, h, "KVCache::keys"); }
  /// Values of KV head h: [size() x head_dim].
  View values(Eigen::Index h) const { return view(v_, h, "KVCache::values"); }

  /// int8 storage only: the scale of each cached key row of head h, [size()];
  /// key j reads back as keys(h).row(j) * key_scales(h)(j).
  Eigen::Map<const Vector<T>> key_scales(Eigen::Index h) const {
    return scales(k_scale_, h, "KVCache::key_scales");
  }
  /// int8 storage only: the scale of each cached value row of head h, [size()].
  Eigen::Map<const Vector<T>> value_scales(Eigen::Index h) const {
    return scales(v_scale_, h, "KVCache::value_scales");
  }

  /// Rows [first, first+n) of head h's keys in the compute type, row-major
  /// [n x head_dim]: a pointer into the cache when Storage is T, else the rows
  /// decoded into buf (n*head_dim elements). For kernels: checks with
  /// eigen_assert only.
  const T* key_rows(Eigen::Index h, Eigen::Index first, Eigen::Index n, T* buf) const {
    return rows(k_, k_scale_, h, first, n, buf);
  }
  /// The same for values.
  const T* value_rows(Eigen::Index h, Eigen::Index first, Eigen::Index n, T* buf) const {
    return rows(v_, v_scale_, h, first, n, buf);
  }

  /// For the decode kernels: positions [first, first+n) of KV head h as
  /// runs of contiguous rows (kernels::KVSpan<Storage, T>): one run here.
  /// Writes at most max_out runs and returns how many. Checks with
  /// eigen_assert only.
  template <class Span>
  Eigen::Index spans(Eigen::Index h, Eigen::Index first, Eigen::Index n, Span* out,
                     Eigen::Index max_out) const {
    eigen_assert(h >= 0 && h < n_kv_heads_ && first >= 0 && first + n <= size_);
    if (n <= 0 || max_out < 1) return 0;
    const Eigen::Index row = h * capacity_ + first;
    out[0].k = k_.data() + row * head_dim_;
    out[0].v = v_.data() + row * head_dim_;
    out[0].k_scales = is_quantized ? k_scale_.data() + row : nullptr;
    out[0].v_scales = is_quantized ? v_scale_.data() + row : nullptr;
    out[0].rows = n;
    out[0].stride = head_dim_;
    return 1;
  }

  /// For kernels: head h's stored keys / values, [capacity x head_dim]
  /// row-major (the first size() rows are valid), and for int8 storage their
  /// per-row scales [capacity] (nullptr for other storage types). Checks h
  /// with eigen_assert only.
  const Storage* key_data(Eigen::Index h) const noexcept { return raw(k_, h); }
  const Storage* value_data(Eigen::Index h) const noexcept { return raw(v_, h); }
  const T* key_scale_data(Eigen::Index h) const noexcept { return raw_scales(k_scale_, h); }
  const T* value_scale_data(Eigen::Index h) const noexcept { return raw_scales(v_scale_, h); }

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

  /// Replaces the contents with n tokens laid out as serialization.hpp's
  /// payload (keys of every head, values of every head, then int8 scales).
  /// For load(): the caller has checked n <= capacity() and the payload size.
  /// An empty payload (n == 0) may be a null pointer: nothing is copied.
  void restore_raw(Eigen::Index n, const char* payload) {
    eigen_assert(n >= 0 && n <= capacity_);
    size_ = 0;
    if (n == 0) return;  // memcpy from a null pointer is undefined even for 0 bytes
    const size_t row_bytes = size_t(n * head_dim_) * sizeof(Storage);
    for (Data* d : {&k_, &v_}) {
      for (Eigen::Index h = 0; h < n_kv_heads_; ++h) {
        std::memcpy(d->data() + h * capacity_ * head_dim_, payload, row_bytes);
        payload += row_bytes;
      }
    }
    if (is_quantized) {
      for (Vector<T>* s : {&k_scale_, &v_scale_}) {
        for (Eigen::Index h = 0; h < n_kv_heads_; ++h) {
          std::memcpy(s->data() + h * capacity_, payload, size_t(n) * sizeof(T));
          payload += size_t(n) * sizeof(T);
        }
      }
    }
    size_ = n;
  }

  /// Throws std::length_error unless n more tokens fit.
  void check_room(const char* fn, Eigen::Index n) const {
    if (n > capacity_ - size_) {
      throw std::length_error(detail::concat(fn, ": appending ", n, " tokens to ", size_,
                                             " cached exceeds capacity = ", capacity_));
    }
  }

 private:
  KVCache() = default;

  using Data = detail::LargeBuffer<Storage>;  // zeroed; huge pages where the OS allows

  void check_head(Eigen::Index h, const char* fn) const {
    if (h < 0 || h >= n_kv_heads_) {
      throw std::out_of_range(
          detail::concat(fn, ": h = ", h, ", expected 0 <= h < n_kv_heads = ", n_kv_heads_));
    }
  }
  View view(const Data& data, Eigen::Index h, const char* fn) const {
    check_head(h, fn);
    return View(data.data() + h * capacity_ * head_dim_, size_, head_dim_);
  }
  Eigen::Map<const Vector<T>> scales(const Vector<T>& s, Eigen::Index h, const char* fn) const {
    check_head(h, fn);
    if (!is_quantized) throw std::logic_error(detail::concat(fn, ": only int8 storage has scales"));
    return Eigen::Map<const Vector<T>>(s.data() + h * capacity_, size_);
  }
  const T* rows(const Data& data, const Vector<T>& s, Eigen::Index h, Eigen::Index first,
                Eigen::Index n, T* buf) const {
    eigen_assert(h >= 0 && h < n_kv_heads_ && first >= 0 && first + n <= size_);
    const Storage* src = data.data() + (h * capacity_ + first) * head_dim_;
    if constexpr (std::is_same<Storage, T>::value) {
      (void)s;
      (void)buf;
      return src;
    } else {
      detail::decode_rows<T, Storage>(
          src, is_quantized ? s.data() + h * capacity_ + first : nullptr, n, head_dim_, buf);
      return buf;
    }
  }

  const Storage* raw(const Data& data, Eigen::Index h) const noexcept {
    eigen_assert(h >= 0 && h < n_kv_heads_);
    return data.data() + h * capacity_ * head_dim_;
  }
  const T* raw_scales(const Vector<T>& s, Eigen::Index h) const noexcept {
    eigen_assert(h >= 0 && h < n_kv_heads_);
    return is_quantized ? s.data() + h * capacity_ : nullptr;
  }

  Eigen::Index n_kv_heads_ = 0;
  Eigen::Index head_dim_ = 0;
  Eigen::Index capacity_ = 0;
  Eigen::Index size_ = 0;
  Data k_;             // [n_kv_heads][capacity][head_dim]
  Data v_;             // [n_kv_heads][capacity][head_dim]
  Vector<T> k_scale_;  // int8 only: [n_kv_heads][capacity]
  Vector<T> v_scale_;  // int8 only: [n_kv_heads][capacity]
};

}  // namespace kvattn
