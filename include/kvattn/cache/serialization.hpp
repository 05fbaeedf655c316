#pragma once
/// \file
/// Saving and restoring a KVCache, so a conversation can be paused and
/// resumed in another process.
///
/// Format (little-endian), version 1:
///
///   offset  size  field
///   0       8     magic "KVATTNKV"
///   8       4     format version (1)
///   12      4     byte-order mark 0x01020304
///   16      4     compute type: 1 f32, 2 f64
///   20      4     storage type: 1 f32, 2 f64, 3 f16, 4 bf16, 5 int8
///   24      8     n_kv_heads
///   32      8     head_dim
///   40      8     capacity of the saved cache (informational)
///   48      8     size: cached tokens
///   56      8     payload bytes
///   64      ...   payload: per KV head its size() key rows, then per KV head
///                 its value rows (head_dim storage values each); int8 adds
///                 per head the size() key scales, then the value scales
///   end     4     CRC-32C of everything before it
///
/// load() checks the magic, version, byte order, types, shape (n_kv_heads and
/// head_dim must equal the target's, size must fit its capacity), the payload
/// length and the checksum before it touches the target: a truncated,
/// corrupted, foreign or mismatched input throws std::runtime_error and
/// leaves the target cache exactly as it was.

#include <kvattn/cache/kv_cache.hpp>
#include <kvattn/error.hpp>

#include <array>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <istream>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvattn {
namespace detail {

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven.
class Crc32c {
 public:
  void update(const void* data, size_t n) {
    static const std::array<uint32_t, 256> table = make_table();
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) crc_ = table[(crc_ ^ p[i]) & 0xFFu] ^ (crc_ >> 8);
  }
  uint32_t value() const { return crc_ ^ 0xFFFFFFFFu; }

 private:
  static std::array<uint32_t, 256> make_table() {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
    return t;
  }
  uint32_t crc_ = 0xFFFFFFFFu;
};

inline uint32_t crc32c(const void* data, size_t n) {
  Crc32c c;
  c.update(data, n);
  return c.value();
}

template <class S>
constexpr uint32_t type_code() {
  if constexpr (std::is_same<S, float>::value)
    return 1;
  else if constexpr (std::is_same<S, double>::value)
    return 2;
  else if constexpr (std::is_same<S, Eigen::half>::value)
    return 3;
  else if constexpr (std::is_same<S, Eigen::bfloat16>::value)
    return 4;
  else
    return 5;
}

struct CacheFileHeader {
  char magic[8];
  uint32_t version, byte_order, compute_type, storage_type;
  uint64_t n_kv_heads, head_dim, capacity, size, payload_bytes;
};
static_assert(sizeof(CacheFileHeader) == 64, "the header is 64 bytes");

}  // namespace detail

/// Writes the cache (its size() tokens) to out. Throws std::runtime_error if
/// the stream fails.
template <class T, class Storage>
void save(const KVCache<T, Storage>& cache, std::ostream& out) {
  const Eigen::Index n = cache.size(), hd = cache.head_dim(), n_kv = cache.n_kv_heads();
  constexpr bool q = KVCache<T, Storage>::is_quantized;
  detail::CacheFileHeader h{};
  std::memcpy(h.magic, "KVATTNKV", 8);
  h.version = 1;
  h.byte_order = 0x01020304u;
  h.compute_type = detail::type_code<T>();
  h.storage_type = detail::type_code<Storage>();
  h.n_kv_heads = uint64_t(n_kv);
  h.head_dim = uint64_t(hd);
  h.capacity = uint64_t(cache.capacity());
  h.size = uint64_t(n);
  h.payload_bytes =
      uint64_t(n_kv) * uint64_t(n) * (2 * uint64_t(hd) * sizeof(Storage) + (q ? 2 * sizeof(T) : 0));
  detail::Crc32c crc;
  auto put = [&](const void* p, size_t bytes) {
    out.write(static_cast<const char*>(p), std::streamsize(bytes));
    crc.update(p, bytes);
  };
  put(&h, sizeof h);
  for (Eigen::Index head = 0; head < n_kv; ++head)
    put(cache.keys(head).data(), size_t(n * hd) * sizeof(Storage));
  for (Eigen::Index head = 0; head < n_kv; ++head)
    put(cache.values(head).data(), size_t(n * hd) * sizeof(Storage));
  if constexpr (q) {
    for (Eigen::Index head = 0; head < n_kv; ++head)
      put(cache.key_scales(head).data(), size_t(n) * sizeof(T));
    for (Eigen::Index head = 0; head < n_kv; ++head)
      put(cache.value_scales(head).data(), size_t(n) * sizeof(T));
  }
  const uint32_t sum = crc.value();
  out.write(reinterpret_cast<const char*>(&sum), 4);
  if (!out) throw std::runtime_error("kvattn::save: writing the cache failed");
}

/// Reads a cache written by save() into `cache`, replacing its contents.
/// `what` names the source in error messages. Strong guarantee: on any
/// error (std::runtime_error, or std::bad_alloc) the cache is unchanged.
template <class T, class Storage>
void load(KVCache<T, Storage>& cache, std::istream& in, const std::string& what = "stream") {
  auto fail = [&](const std::string& why) -> void {
    throw std::runtime_error(detail::concat(what, ": ", why));
  };
  detail::CacheFileHeader h{};
  in.read(reinterpret_cast<char*>(&h), sizeof h);
  if (in.gcount() != std::streamsize(sizeof h)) fail("truncated: shorter than the 64-byte header");
  if (std::memcmp(h.magic, "KVATTNKV", 8) != 0) fail("not a kvattn cache file (bad magic)");
  if (h.version != 1)
    fail(detail::concat("format version ", h.version, " is not supported (expected 1)"));
  if (h.byte_order != 0x01020304u) fail("written with another byte order");
  if (h.compute_type != detail::type_code<T>() || h.storage_type != detail::type_code<Storage>()) {
    fail(detail::concat("holds compute type ", h.compute_type, " and storage type ", h.storage_type,
                        ", expected ", detail::type_code<T>(), " and ",
                        detail::type_code<Storage>(), " (", StorageTraits<Storage>::name(), ")"));
  }
  if (h.n_kv_heads != uint64_t(cache.n_kv_heads()) || h.head_dim != uint64_t(cache.head_dim())) {
    fail(detail::concat("holds n_kv_heads = ", h.n_kv_heads, ", head_dim = ", h.head_dim,
                        ", expected n_kv_heads = ", cache.n_kv_heads(),
                        ", head_dim = ", cache.head_dim()));
  }
  if (h.size > uint64_t(cache.capacity())) {
    fail(detail::concat("holds ", h.size, " tokens, more than the capacity ", cache.capacity()));
  }
  constexpr bool q = KVCache<T, Storage>::is_quantized;
  const Eigen::Index n = Eigen::Index(h.size), hd = cache.head_dim(), n_kv = cache.n_kv_heads();
  const uint64_t expected =
      uint64_t(n_kv) * uint64_t(n) * (2 * uint64_t(hd) * sizeof(Storage) + (q ? 2 * sizeof(T) : 0));
  if (h.payload_bytes != expected) {
    fail(detail::concat("payload is ", h.payload_bytes, " bytes, expected ", expected));
  }
  // Read everything (its size is bounded by the target's capacity) and check
  // the sum before building the replacement.
  std::vector<char> payload(static_cast<size_t>(expected));
  if (expected > 0) in.read(payload.data(), std::streamsize(expected));  // data() may be null
  uint32_t stored = 0;
  if ((expected > 0 && uint64_t(in.gcount()) != expected) ||
      !in.read(reinterpret_cast<char*>(&stored), 4)) {
    fail("truncated: the payload or its checksum is missing");
  }
  detail::Crc32c crc;
  crc.update(&h, sizeof h);
  crc.update(payload.data(), payload.size());
  if (crc.value() != stored) fail("checksum mismatch: the file is corrupt");

  // Copy the stored bytes into a fresh cache of the target's capacity (an
  // exact restore for every storage type), then swap it in: nothing below
  // can fail once the fresh cache exists.
  KVCache<T, Storage> fresh(cache.n_kv_heads(), hd, cache.capacity());
  fresh.restore_raw(n, payload.data());
  cache.swap(fresh);
}

/// save() into a file: written to path + ".tmp", then renamed over path, so
/// a crash mid-save never destroys an earlier save.
template <class T, class Storage>
void save_file(const KVCache<T, Storage>& cache, const std::string& path) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(detail::concat(path, ": cannot open ", tmp, " for writing"));
    save(cache, out);
    out.flush();
    if (!out) throw std::runtime_error(detail::concat(path, ": writing failed"));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec)
    throw std::runtime_error(
        detail::concat(path, ": cannot rename the saved file: ", ec.message()));
}

/// load() from a file; the error messages name the path.
template <class T, class Storage>
void load_file(KVCache<T, Storage>& cache, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(detail::concat(path, ": cannot open"));
  load(cache, in, path);
}

}  // namespace kvattn
