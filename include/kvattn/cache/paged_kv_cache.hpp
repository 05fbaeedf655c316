#pragma once
/// \file
/// PagedKVCache: the keys and values of many sequences, for every layer of a
/// model, in one pool of fixed-size blocks allocated once.
///
/// Block b of a sequence holds its positions [b*bt, (b+1)*bt) in every layer
/// (bt = block_tokens, a multiple of 16), so one block table per sequence
/// serves all layers. Memory layout of the pool:
///
///   keys, values: [n_blocks][n_layers][n_kv_heads][block_tokens][head_dim]
///   int8 scales:  [n_blocks][n_layers][n_kv_heads][block_tokens] (each)
///
/// so a block's rows of one head are contiguous and a decode step streams a
/// block per head as it streams a contiguous chunk. Blocks are reference
/// counted: fork() shares every block, and the first write into a shared
/// block copies it (copy-on-write). A sequence of n tokens holds
/// ceil(n / bt) blocks; blocks freed by release() or truncate() go back to
/// a free list.
///
/// Writes are two-phase: prepare() makes every block a call will write
/// exist and belong to its sequence alone (allocating, copying shared ones)
/// and records how to undo that; it checks the whole call first and throws
/// std::length_error, changing nothing, when the pool has too few free
/// blocks. The layers (MultiHeadAttention, Llama) use it so that a batched
/// call either completes or leaves every sequence and the pool as they were.
///
/// Each sequence counts the tokens of each layer separately (a layer view
/// appends to its own layer); length() is the count every layer has.
///
/// Not thread-safe: one thread changes a pool at a time (the kernels that
/// read it run on many).

#include <kvattn/cache/storage.hpp>
#include <kvattn/detail/large_buffer.hpp>
#include <kvattn/error.hpp>
#include <kvattn/types.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

namespace kvattn {

template <class T, class Storage>
class PagedLayer;

/// A sequence in a PagedKVCache. Handles are never reused within a pool.
using SeqId = std::int64_t;

/// Shape of a PagedKVCache.
struct PagedCacheConfig {
  Eigen::Index n_layers = 0;
  Eigen::Index n_kv_heads = 0;
  Eigen::Index head_dim = 0;
  Eigen::Index block_tokens = 16;  ///< positions per block, a multiple of 16
  Eigen::Index n_blocks = 0;       ///< blocks in the pool

  /// Throws std::invalid_argument naming the first impossible field.
  void validate() const {
    constexpr const char* fn = "PagedCacheConfig";
    detail::check_arg(n_layers > 0, fn, "n_layers", n_layers, "> 0");
    detail::check_arg(n_kv_heads > 0, fn, "n_kv_heads", n_kv_heads, "> 0");
    detail::check_arg(head_dim > 0, fn, "head_dim", head_dim, "> 0");
    detail::check_arg(block_tokens > 0 && block_tokens % 16 == 0, fn, "block_tokens", block_tokens,
                      "a positive multiple of 16");
    detail::check_arg(n_blocks > 0, fn, "n_blocks", n_blocks, "> 0");
  }
};

/// Undo log of PagedKVCache::prepare(): what to put back if the call that
/// prepared fails before it completes. Reused from call to call.
struct PagedUndo {
  struct Entry {
    SeqId seq;
    std::vector<Eigen::Index> filled;                     // tokens per layer before
    size_t old_blocks;                                    // table size before
    std::vector<std::pair<size_t, Eigen::Index>> copied;  // (table index, block it replaced)
  };
  std::vector<Entry> entries;  // the first `count` are in use
  size_t count = 0;
};

template <class T, class Storage = T>
class PagedKVCache {
 public:
  using Scalar = T;
  using StorageType = Storage;
  static constexpr bool is_quantized = StorageTraits<Storage>::is_quantized;

  /// Allocates every block, zeroed. Throws std::invalid_argument for an
  /// impossible config and std::length_error if the pool does not fit in
  /// memory indices.
  explicit PagedKVCache(const PagedCacheConfig& config) : c_(checked(config)) {
    block_rows_ = c_.n_layers * c_.n_kv_heads * c_.block_tokens;
    k_ = Data(c_.n_blocks * block_rows_ * c_.head_dim);
    v_ = Data(c_.n_blocks * block_rows_ * c_.head_dim);
    if (is_quantized) {
      k_scale_.setZero(c_.n_blocks * block_rows_);
      v_scale_.setZero(c_.n_blocks * block_rows_);
    }
    refs_.assign(size_t(c_.n_blocks), 0);
    writers_.assign(size_t(c_.n_blocks), 0);
    in_place_.assign(size_t(c_.n_blocks), -1);
    marked_.reserve(size_t(c_.n_blocks));
    free_.reserve(size_t(c_.n_blocks));
    for (Eigen::Index b = c_.n_blocks; b-- > 0;) free_.push_back(b);  // block 0 handed out first
  }

  PagedKVCache(const PagedKVCache&) = delete;
  PagedKVCache& operator=(const PagedKVCache&) = delete;
  PagedKVCache(PagedKVCache&&) noexcept = default;
  PagedKVCache& operator=(PagedKVCache&&) noexcept = default;

  const PagedCacheConfig& config() const { return c_; }
  Eigen::Index n_layers() const { return c_.n_layers; }
  Eigen::Index n_kv_heads() const { return c_.n_kv_heads; }
  Eigen::Index head_dim() const { return c_.head_dim; }
  Eigen::Index n_blocks() const { return c_.n_blocks; }
  Eigen::Index block_tokens() const { return c_.block_tokens; }
  Eigen::Index free_blocks() const { return Eigen::Index(free_.size()); }
  /// Bytes of K/V memory in the pool (int8 scales included).
  Eigen::Index bytes() const {
    return 2 * c_.n_blocks * block_rows_ *
           (c_.head_dim * Eigen::Index(sizeof(Storage)) +
            (is_quantized ? Eigen::Index(sizeof(T)) : 0));
  }

  // ---- sequences ----

  /// A new, empty sequence (it holds no block until it gets a token).
  SeqId add_sequence() {
    const SeqId id = next_id_;
    seqs_.emplace(id, Seq{{}, std::vector<Eigen::Index>(size_t(c_.n_layers), 0)});
    ++next_id_;
    return id;
  }

  /// A new sequence sharing every block of `seq` (no block is allocated;
  /// the first write into a shared block copies it).
  SeqId fork(SeqId seq) {
    const Seq& from = get("PagedKVCache::fork", seq);
    Seq copy = from;  // may throw: nothing changed yet
    const SeqId id = next_id_;
    seqs_.emplace(id, std::move(copy));
    ++next_id_;
    for (Eigen::Index b : seqs_.at(id).blocks) ++refs_[size_t(b)];
    return id;
  }

  /// Removes a sequence; blocks no other sequence holds are freed.
  void release(SeqId seq) {
    auto it = find("PagedKVCache::release", seq);
    for (Eigen::Index b : it->second.blocks) unref(b);
    seqs_.erase(it);
  }

  bool contains(SeqId seq) const { return seqs_.count(seq) != 0; }
  /// The sequences in the pool, in creation order.
  std::vector<SeqId> sequences() const {
    std::vector<SeqId> ids;
    ids.reserve(seqs_.size());
    for (const auto& s : seqs_) ids.push_back(s.first);
    return ids;
  }

  /// Layer l of the pool, for MultiHeadAttention (cache/paged_layer.hpp).
  PagedLayer<T, Storage> layer(Eigen::Index l);

  /// Tokens every layer of `seq` holds.
  Eigen::Index length(SeqId seq) const {
    const Seq& s = get("PagedKVCache::length", seq);
    return *std::min_element(s.filled.begin(), s.filled.end());
  }
  /// Tokens layer l of `seq` holds.
  Eigen::Index layer_length(SeqId seq, Eigen::Index l) const {
    check_layer("PagedKVCache::layer_length", l);
    return get("PagedKVCache::layer_length", seq).filled[size_t(l)];
  }

  /// Keeps the first n tokens of `seq` in every layer (0 <= n <= length);
  /// blocks past ceil(n / bt) are released. Throws std::invalid_argument
  /// otherwise, changing nothing.
  void truncate(SeqId seq, Eigen::Index n) {
    constexpr const char* fn = "PagedKVCache::truncate";
    Seq& s = get(fn, seq);
    const Eigen::Index len = *std::min_element(s.filled.begin(), s.filled.end());
    if (n < 0 || n > len) {
      throw std::invalid_argument(
          detail::concat(fn, ": n = ", n, ", expected 0 <= n <= length(seq) = ", len));
    }
    for (Eigen::Index& f : s.filled) f = n;
    const Eigen::Index keep = blocks_for(n);
    while (Eigen::Index(s.blocks.size()) > keep) {
      unref(s.blocks.back());
      s.blocks.pop_back();
    }
  }

  /// The block table of `seq`: block i holds its positions [i*bt, (i+1)*bt).
  std::vector<Eigen::Index> blocks_of(SeqId seq) const {
    return get("PagedKVCache::blocks_of", seq).blocks;
  }
  /// Sequences holding block b (for inspection and tests).
  int block_refs(Eigen::Index b) const { return refs_.at(size_t(b)); }

  // ---- two-phase writes ----

  using Undo = PagedUndo;

  /// Blocks that writing positions [first, end) of `seq` needs from the free
  /// list: new blocks past its table, and copies of shared blocks in range.
  Eigen::Index blocks_needed(SeqId seq, Eigen::Index first, Eigen::Index end) {
    const Eigen::Index n = plan("PagedKVCache::blocks_needed", &seq, &first, &end, 1);
    clear_plan();
    return n;
  }

  /// Makes the blocks of positions [first[i], end[i]) of seqs[i] exist and
  /// belong to that sequence alone, for every i (distinct sequences), and
  /// fills `undo` (its memory is reused from call to call). Checks first:
  /// std::invalid_argument for an unknown sequence, std::length_error
  /// ("needs N blocks, M are free") when the pool is short; either way
  /// nothing changed.
  void prepare(const SeqId* seqs, const Eigen::Index* first, const Eigen::Index* end,
               Eigen::Index count, Undo& undo) {
    constexpr const char* fn = "PagedKVCache::prepare";
    const Eigen::Index total = plan(fn, seqs, first, end, count);  // fills writers_, in_place_
    try {
      if (total > free_blocks()) {
        throw std::length_error(detail::concat("kvattn::PagedKVCache: the call needs ", total,
                                               " free blocks of ", c_.block_tokens, " positions, ",
                                               free_blocks(), " are free"));
      }
      // Everything that can allocate, before any change.
      if (undo.entries.size() < size_t(count)) undo.entries.resize(size_t(count));
      undo.count = size_t(count);
      for (Eigen::Index i = 0; i < count; ++i) {
        Seq& s = get(fn, seqs[i]);
        PagedUndo::Entry& e = undo.entries[size_t(i)];
        s.blocks.reserve(size_t(std::max(blocks_for(end[i]), Eigen::Index(s.blocks.size()))));
        e.seq = seqs[i];
        e.filled = s.filled;
        e.old_blocks = s.blocks.size();
        e.copied.clear();
        e.copied.reserve(size_t(needed(s, first[i], end[i])));
      }
    } catch (...) {
      clear_plan();
      throw;
    }
    for (Eigen::Index i = 0; i < count; ++i) {  // cannot fail from here on
      if (end[i] <= first[i]) continue;
      Seq& s = get(fn, seqs[i]);
      PagedUndo::Entry& e = undo.entries[size_t(i)];
      for (Eigen::Index b = first[i] / c_.block_tokens; b < written_end(s, end[i]); ++b) {
        const Eigen::Index old = s.blocks[size_t(b)];
        const size_t ob = size_t(old);
        if (writers_[ob] == 0 || in_place_[ob] == i) continue;  // own block, or writes in place
        const Eigen::Index fresh = take();                      // shared: copy before writing
        copy_block(old, fresh);
        --refs_[ob];  // never 0 here: a writer in place or a holder outside the call keeps it
        s.blocks[size_t(b)] = fresh;
        e.copied.emplace_back(size_t(b), old);
      }
      while (Eigen::Index(s.blocks.size()) < blocks_for(end[i])) s.blocks.push_back(take());
    }
    clear_plan();
  }

  /// Puts back what prepare() did and the sequences' lengths at that time
  /// (after a failure later in the call).
  void undo(const Undo& u) noexcept {
    for (auto e = u.entries.rbegin() + std::ptrdiff_t(u.entries.size() - u.count);
         e != u.entries.rend(); ++e) {
      auto it = seqs_.find(e->seq);
      if (it == seqs_.end()) continue;
      Seq& s = it->second;
      std::copy(e->filled.begin(), e->filled.end(), s.filled.begin());
      while (s.blocks.size() > e->old_blocks) {
        unref(s.blocks.back());
        s.blocks.pop_back();
      }
      for (auto c = e->copied.rbegin(); c != e->copied.rend(); ++c) {
        unref(s.blocks[c->first]);
        s.blocks[c->first] = c->second;
        ++refs_[size_t(c->second)];
      }
    }
  }

  /// Writes n tokens' keys and values (k, v: [n x n_kv_heads*head_dim]) at
  /// positions [first, first+n) of layer l of `seq`, whose blocks prepare()
  /// made exclusive, and sets that layer's length to first + n.
  void write_rows(SeqId seq, Eigen::Index l, Eigen::Index first,
                  const Eigen::Ref<const RowMatrix<T>>& k,
                  const Eigen::Ref<const RowMatrix<T>>& v) {
    const Eigen::Index hd = c_.head_dim;
    for (Eigen::Index i = 0; i < k.rows(); ++i) {
      for (Eigen::Index h = 0; h < c_.n_kv_heads; ++h) {
        const Eigen::Index row = row_index(seq, l, h, first + i);
        detail::encode_row<T, Storage>(k.data() + i * k.outerStride() + h * hd, hd,
                                       k_.data() + row * hd,
                                       is_quantized ? k_scale_.data() + row : nullptr);
        detail::encode_row<T, Storage>(v.data() + i * v.outerStride() + h * hd, hd,
                                       v_.data() + row * hd,
                                       is_quantized ? v_scale_.data() + row : nullptr);
      }
    }
    seqs_.find(seq)->second.filled[size_t(l)] = first + k.rows();
  }

  // ---- rows, for the layer views and the kernels (checked by eigen_assert only) ----

  /// The stored key and value row of position `pos` of KV head h in layer l
  /// of `seq`, and their int8 scales (null for other storage): for
  /// serialization. Writing through it needs prepare() first.
  struct RowRef {
    Storage* k;
    Storage* v;
    T* k_scale;
    T* v_scale;
  };
  RowRef row(SeqId seq, Eigen::Index l, Eigen::Index h, Eigen::Index pos) {
    const Eigen::Index r = row_index(seq, l, h, pos);
    return RowRef{k_.data() + r * c_.head_dim, v_.data() + r * c_.head_dim,
                  is_quantized ? k_scale_.data() + r : nullptr,
                  is_quantized ? v_scale_.data() + r : nullptr};
  }
  /// Sets every layer's length of `seq` to n (its rows were written through
  /// row()); n must fit the blocks it holds.
  void set_length(SeqId seq, Eigen::Index n) {
    Seq& s = get("PagedKVCache::set_length", seq);
    detail::check_arg(n >= 0 && n <= Eigen::Index(s.blocks.size()) * c_.block_tokens,
                      "PagedKVCache::set_length", "n", n, "within the sequence's blocks");
    for (Eigen::Index& f : s.filled) f = n;
  }

  /// Positions [first, first+n) of KV head h, layer l, of `seq` as runs of
  /// contiguous rows, one per block (kernels::KVSpan<Storage, T>); writes at
  /// most max_out and returns how many.
  template <class Span>
  Eigen::Index spans(SeqId seq, Eigen::Index l, Eigen::Index h, Eigen::Index first, Eigen::Index n,
                     Span* out, Eigen::Index max_out) const {
    const Seq& s = seqs_.find(seq)->second;
    const Eigen::Index bt = c_.block_tokens;
    Eigen::Index count = 0;
    for (Eigen::Index p = first; p < first + n && count < max_out; ++count) {
      const Eigen::Index b = p / bt, in = p % bt, rows = std::min(bt - in, first + n - p);
      const Eigen::Index row =
          (s.blocks[size_t(b)] * c_.n_layers + l) * c_.n_kv_heads * bt + h * bt + in;
      out[count].k = k_.data() + row * c_.head_dim;
      out[count].v = v_.data() + row * c_.head_dim;
      out[count].k_scales = is_quantized ? k_scale_.data() + row : nullptr;
      out[count].v_scales = is_quantized ? v_scale_.data() + row : nullptr;
      out[count].rows = rows;
      out[count].stride = c_.head_dim;
      p += rows;
    }
    return count;
  }

 private:
  struct Seq {
    std::vector<Eigen::Index> blocks;  // block table
    std::vector<Eigen::Index> filled;  // tokens per layer
  };
  using Data = detail::LargeBuffer<Storage>;
  using SeqMap = std::map<SeqId, Seq>;

  static PagedCacheConfig checked(const PagedCacheConfig& c) {
    c.validate();
    const Eigen::Index limit =
        std::numeric_limits<Eigen::Index>::max() / Eigen::Index(sizeof(T) + sizeof(Storage)) / 2;
    const Eigen::Index per_block = c.n_layers * c.n_kv_heads * c.block_tokens;
    if (c.n_layers > limit / c.n_kv_heads / c.block_tokens || per_block > limit / c.head_dim ||
        per_block * c.head_dim > limit / c.n_blocks) {
      throw std::length_error(detail::concat("PagedKVCache: n_blocks*n_layers*n_kv_heads*",
                                             "block_tokens*head_dim is too large"));
    }
    return c;
  }

  Eigen::Index blocks_for(Eigen::Index n) const {
    return (n + c_.block_tokens - 1) / c_.block_tokens;
  }

  // Upper bound on the copies one sequence's write makes (for reserve()).
  Eigen::Index needed(const Seq& s, Eigen::Index first, Eigen::Index end) const {
    if (end <= first) return 0;
    const Eigen::Index have = Eigen::Index(s.blocks.size());
    Eigen::Index n = std::max<Eigen::Index>(0, blocks_for(end) - have);
    for (Eigen::Index b = first / c_.block_tokens; b < std::min(blocks_for(end), have); ++b) {
      if (refs_[size_t(s.blocks[size_t(b)])] > 1) ++n;
    }
    return n;
  }

  // One past the last existing block a write of positions [.., end) touches.
  Eigen::Index written_end(const Seq& s, Eigen::Index end) const {
    return std::min(blocks_for(end), Eigen::Index(s.blocks.size()));
  }

  // Plans a batch of writes and returns the blocks it takes from the free
  // list. A shared block (refs > 1) written by W of the call's sequences is
  // copied by each of them, except when they are all its holders (W ==
  // refs): then the writer with the largest first position writes it in
  // place (every other holder's rows end at or before that position, so
  // even a failed call that undoes the copies finds them intact). Leaves, per
  // shared block written, writers_ = W and in_place_ = that writer's index or
  // -1; clear_plan() resets them. Throws std::invalid_argument, changing
  // nothing, for an unknown sequence.
  Eigen::Index plan(const char* fn, const SeqId* seqs, const Eigen::Index* first,
                    const Eigen::Index* end, Eigen::Index count) {
    for (Eigen::Index i = 0; i < count; ++i) (void)get(fn, seqs[i]);  // before any scratch change
    Eigen::Index total = 0;
    for (Eigen::Index i = 0; i < count; ++i) {
      const Seq& s = get(fn, seqs[i]);
      if (end[i] <= first[i]) continue;
      total += std::max<Eigen::Index>(0, blocks_for(end[i]) - Eigen::Index(s.blocks.size()));
      for (Eigen::Index b = first[i] / c_.block_tokens; b < written_end(s, end[i]); ++b) {
        const size_t block = size_t(s.blocks[size_t(b)]);
        if (refs_[block] < 2) continue;
        const Eigen::Index w = in_place_[block];
        if (writers_[block]++ == 0) marked_.push_back(Eigen::Index(block));  // capacity n_blocks
        if (w < 0 || first[i] > first[w]) in_place_[block] = i;
      }
    }
    for (Eigen::Index i = 0; i < count; ++i) {
      const Seq& s = get(fn, seqs[i]);
      if (end[i] <= first[i]) continue;
      for (Eigen::Index b = first[i] / c_.block_tokens; b < written_end(s, end[i]); ++b) {
        const size_t block = size_t(s.blocks[size_t(b)]);
        if (writers_[block] == 0) continue;
        if (writers_[block] < refs_[block]) in_place_[block] = -1;  // a holder outside the call
        if (in_place_[block] != i) ++total;
      }
    }
    return total;
  }

  void clear_plan() noexcept {  // the scratch of the blocks plan() marked
    for (Eigen::Index b : marked_) {
      writers_[size_t(b)] = 0;
      in_place_[size_t(b)] = -1;
    }
    marked_.clear();
  }

  Eigen::Index take() noexcept {
    const Eigen::Index b = free_.back();
    free_.pop_back();
    refs_[size_t(b)] = 1;
    return b;
  }
  void unref(Eigen::Index b) noexcept {
    if (--refs_[size_t(b)] == 0) free_.push_back(b);  // capacity n_blocks: never reallocates
  }

  void copy_block(Eigen::Index from, Eigen::Index to) noexcept {
    const size_t rows = size_t(block_rows_), hd = size_t(c_.head_dim);
    std::memcpy(static_cast<void*>(k_.data() + size_t(to) * rows * hd),
                k_.data() + size_t(from) * rows * hd, rows * hd * sizeof(Storage));
    std::memcpy(static_cast<void*>(v_.data() + size_t(to) * rows * hd),
                v_.data() + size_t(from) * rows * hd, rows * hd * sizeof(Storage));
    if (is_quantized) {
      std::memcpy(k_scale_.data() + size_t(to) * rows, k_scale_.data() + size_t(from) * rows,
                  rows * sizeof(T));
      std::memcpy(v_scale_.data() + size_t(to) * rows, v_scale_.data() + size_t(from) * rows,
                  rows * sizeof(T));
    }
  }

  Eigen::Index row_index(SeqId seq, Eigen::Index l, Eigen::Index h, Eigen::Index pos) const {
    const Seq& s = seqs_.find(seq)->second;
    const Eigen::Index bt = c_.block_tokens;
    eigen_assert(pos / bt < Eigen::Index(s.blocks.size()));
    return (s.blocks[size_t(pos / bt)] * c_.n_layers + l) * c_.n_kv_heads * bt + h * bt + pos % bt;
  }

  void check_layer(const char* fn, Eigen::Index l) const {
    if (l < 0 || l >= c_.n_layers) {
      throw std::out_of_range(
          detail::concat(fn, ": layer = ", l, ", expected 0 <= layer < n_layers = ", c_.n_layers));
    }
  }
  typename SeqMap::iterator find(const char* fn, SeqId seq) {
    auto it = seqs_.find(seq);
    if (it == seqs_.end()) {
      throw std::invalid_argument(detail::concat(fn, ": seq = ", seq, " is not in this cache"));
    }
    return it;
  }
  Seq& get(const char* fn, SeqId seq) { return find(fn, seq)->second; }
  const Seq& get(const char* fn, SeqId seq) const {
    auto it = seqs_.find(seq);
    if (it == seqs_.end()) {
      throw std::invalid_argument(detail::concat(fn, ": seq = ", seq, " is not in this cache"));
    }
    return it->second;
  }

  PagedCacheConfig c_;
  Eigen::Index block_rows_ = 0;  // rows per block: n_layers * n_kv_heads * block_tokens
  Data k_, v_;
  Vector<T> k_scale_, v_scale_;         // int8 only
  std::vector<int> refs_;               // [n_blocks]: sequences holding each block
  std::vector<int> writers_;            // [n_blocks]: plan() scratch, 0 between calls
  std::vector<Eigen::Index> in_place_;  // [n_blocks]: plan() scratch, -1 between calls
  std::vector<Eigen::Index> marked_;    // blocks plan() marked (capacity n_blocks)
  std::vector<Eigen::Index> free_;      // free blocks, the next at the back
  SeqMap seqs_;
  SeqId next_id_ = 1;
};

}  // namespace kvattn

#include <kvattn/cache/paged_layer.hpp>  // PagedLayer, layer()
