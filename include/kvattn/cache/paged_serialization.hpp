#pragma once
/// \file
/// Saving and restoring one sequence of a PagedKVCache, so a conversation
/// can be parked on disk and brought back into any pool of the same shape
/// that has room.
///
/// Format (little-endian), version 1:
///
///   offset  size  field
///   0       8     magic "KVATTNPS"
///   8       4     format version (1)
///   12      4     byte-order mark 0x01020304
///   16      4     compute type: 1 f32, 2 f64
///   20      4     storage type: 1 f32, 2 f64, 3 f16, 4 bf16, 5 int8
///   24      8     n_layers
///   32      8     n_kv_heads
///   40      8     head_dim
///   48      8     length: tokens of the sequence
///   56      8     payload bytes
///   64      ...   payload: per layer, per KV head, its `length` key rows; then
///                 per layer, per KV head, the value rows (head_dim storage
///                 values each); int8 adds per layer, per head the key
///                 scales, then the value scales
///   end     4     CRC-32C of everything before it
///
/// load() checks the magic, version, byte order, types, shape, payload
/// length and checksum, reads everything, and only then takes blocks from
/// the pool: a truncated, corrupt, foreign or mismatched input throws
/// std::runtime_error (a pool without room: std::length_error) and leaves
/// the pool exactly as it was.

#include <kvattn/cache/paged_kv_cache.hpp>
#include <kvattn/cache/serialization.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace kvattn {
namespace detail {

struct SequenceFileHeader {
  char magic[8];
  uint32_t version, byte_order, compute_type, storage_type;
  uint64_t n_layers, n_kv_heads, head_dim, length, payload_bytes;
};
static_assert(sizeof(SequenceFileHeader) == 64, "the header is 64 bytes");

template <class T, class Storage>
uint64_t paged_payload_bytes(const PagedKVCache<T, Storage>& c, uint64_t length) {
  constexpr bool q = PagedKVCache<T, Storage>::is_quantized;
  return uint64_t(c.n_layers()) * uint64_t(c.n_kv_heads()) * length *
         (2 * uint64_t(c.head_dim()) * sizeof(Storage) + (q ? 2 * sizeof(T) : 0));
}

}  // namespace detail

/// Writes sequence `seq` (its length() tokens in every layer) to out.
/// Throws std::invalid_argument for an unknown seq, std::runtime_error if
/// the stream fails.
template <class T, class Storage>
void save(PagedKVCache<T, Storage>& cache, SeqId seq, std::ostream& out) {
  constexpr bool q = PagedKVCache<T, Storage>::is_quantized;
  const Eigen::Index n = cache.length(seq), hd = cache.head_dim();
  const Eigen::Index n_layers = cache.n_layers(), n_kv = cache.n_kv_heads();
  detail::SequenceFileHeader h{};
  std::memcpy(h.magic, "KVATTNPS", 8);
  h.version = 1;
  h.byte_order = 0x01020304u;
  h.compute_type = detail::type_code<T>();
  h.storage_type = detail::type_code<Storage>();
  h.n_layers = uint64_t(n_layers);
  h.n_kv_heads = uint64_t(n_kv);
  h.head_dim = uint64_t(hd);
  h.length = uint64_t(n);
  h.payload_bytes = detail::paged_payload_bytes(cache, uint64_t(n));
  detail::Crc32c crc;
  auto put = [&](const void* p, size_t bytes) {
    out.write(static_cast<const char*>(p), std::streamsize(bytes));
    crc.update(p, bytes);
  };
  put(&h, sizeof h);
  for (int part = 0; part < (q ? 4 : 2); ++part) {  // keys, values, key scales, value scales
    for (Eigen::Index l = 0; l < n_layers; ++l) {
      for (Eigen::Index kv = 0; kv < n_kv; ++kv) {
        for (Eigen::Index p = 0; p < n; ++p) {
          const auto r = cache.row(seq, l, kv, p);
          if (part < 2) {
            put(part == 0 ? r.k : r.v, size_t(hd) * sizeof(Storage));
          } else {
            put(part == 2 ? r.k_scale : r.v_scale, sizeof(T));
          }
        }
      }
    }
  }
  const uint32_t sum = crc.value();
  out.write(reinterpret_cast<const char*>(&sum), 4);
  if (!out) throw std::runtime_error("kvattn::save: writing the sequence failed");
}

/// Reads a sequence written by save() into a new sequence of `cache` and
/// returns its id. `what` names the source in error messages. On any error
/// the pool is unchanged.
template <class T, class Storage>
SeqId load(PagedKVCache<T, Storage>& cache, std::istream& in, const std::string& what = "stream") {
  constexpr bool q = PagedKVCache<T, Storage>::is_quantized;
  auto fail = [&](const std::string& why) -> void {
    throw std::runtime_error(detail::concat(what, ": ", why));
  };
  detail::SequenceFileHeader h{};
  in.read(reinterpret_cast<char*>(&h), sizeof h);
  if (in.gcount() != std::streamsize(sizeof h)) fail("truncated: shorter than the 64-byte header");
  if (std::memcmp(h.magic, "KVATTNPS", 8) != 0) fail("not a kvattn sequence file (bad magic)");
  if (h.version != 1)
    fail(detail::concat("format version ", h.version, " is not supported (expected 1)"));
  if (h.byte_order != 0x01020304u) fail("written with another byte order");
  if (h.compute_type != detail::type_code<T>() || h.storage_type != detail::type_code<Storage>()) {
    fail(detail::concat("holds compute type ", h.compute_type, " and storage type ", h.storage_type,
                        ", expected ", detail::type_code<T>(), " and ",
                        detail::type_code<Storage>(), " (", StorageTraits<Storage>::name(), ")"));
  }
  const uint64_t n_layers = h.n_layers, n_kv = h.n_kv_heads, hd = h.head_dim, n = h.length;
  if (n_layers != uint64_t(cache.n_layers()) || n_kv != uint64_t(cache.n_kv_heads()) ||
      hd != uint64_t(cache.head_dim())) {
    fail(detail::concat("holds n_layers = ", n_layers, ", n_kv_heads = ", n_kv, ", head_dim = ", hd,
                        ", expected n_layers = ", cache.n_layers(),
                        ", n_kv_heads = ", cache.n_kv_heads(), ", head_dim = ", cache.head_dim()));
  }
  const uint64_t room = uint64_t(cache.n_blocks()) * uint64_t(cache.block_tokens());
  if (n > room) fail(detail::concat("holds ", n, " tokens, more than the whole pool's ", room));
  const uint64_t expected = detail::paged_payload_bytes(cache, n);
  if (h.payload_bytes != expected) {
    fail(detail::concat("payload is ", h.payload_bytes, " bytes, expected ", expected));
  }
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

  // Room, then the new sequence; nothing below fails once prepare() has.
  const Eigen::Index len = Eigen::Index(n), zero = 0;
  const Eigen::Index blocks = (len + cache.block_tokens() - 1) / cache.block_tokens();
  if (blocks > cache.free_blocks()) {
    throw std::length_error(detail::concat("kvattn::PagedKVCache: the call needs ", blocks,
                                           " free blocks of ", cache.block_tokens(), " positions, ",
                                           cache.free_blocks(), " are free (", what, ")"));
  }
  const SeqId seq = cache.add_sequence();
  PagedUndo undo;
  try {
    cache.prepare(&seq, &zero, &len, 1, undo);
  } catch (...) {
    cache.release(seq);
    throw;
  }
  const char* p = payload.data();
  const Eigen::Index L = cache.n_layers(), H = cache.n_kv_heads();
  for (int part = 0; part < (q ? 4 : 2); ++part) {
    for (Eigen::Index l = 0; l < L; ++l) {
      for (Eigen::Index kv = 0; kv < H; ++kv) {
        for (Eigen::Index pos = 0; pos < len; ++pos) {
          const auto r = cache.row(seq, l, kv, pos);
          if (part < 2) {
            const size_t bytes = size_t(hd) * sizeof(Storage);
            std::memcpy(static_cast<void*>(part == 0 ? r.k : r.v), p, bytes);
            p += bytes;
          } else {
            std::memcpy(part == 2 ? r.k_scale : r.v_scale, p, sizeof(T));
            p += sizeof(T);
          }
        }
      }
    }
  }
  cache.set_length(seq, len);
  return seq;
}

/// save() into a file: written to path + ".tmp", then renamed over path.
template <class T, class Storage>
void save_file(PagedKVCache<T, Storage>& cache, SeqId seq, const std::string& path) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(detail::concat(path, ": cannot open ", tmp, " for writing"));
    save(cache, seq, out);
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
SeqId load_file(PagedKVCache<T, Storage>& cache, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(detail::concat(path, ": cannot open"));
  return load(cache, in, path);
}

}  // namespace kvattn
