#pragma once
/// \file
/// The GGUF parser behind GgufFile (io/gguf.hpp, which describes the
/// format). Internal: everything here is in kvattn::detail.
///
/// Every field is read through GgufReader, which checks it against the bytes
/// left; every count and length is checked before anything is allocated from
/// it. Errors are std::runtime_error "<name>: <what>", and those a shorter
/// file can cause say "truncated" and name what was being read.

#include <kvattn/error.hpp>
#include <kvattn/io/ggml_quants.hpp>
#include <kvattn/io/gguf_types.hpp>

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace kvattn::detail {

// "47 47 55 46"
inline std::string hex_bytes(const unsigned char* p, size_t n) {
  static const char kDigits[] = "0123456789ABCDEF";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    if (i > 0) s += ' ';
    s += kDigits[p[i] >> 4];
    s += kDigits[p[i] & 15];
  }
  return s;
}

inline bool host_is_little_endian() {
  const uint16_t one = 1;
  unsigned char first = 0;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

// A description for an error message: what(), or what itself for a string.
template <class W>
std::string describe(const W& what) {
  if constexpr (std::is_invocable<const W&>::value) {
    return what();
  } else {
    return std::string(what);
  }
}

// Reads fields from bytes [0, size), checking each against what is left.
// `what` arguments (a string, or a callable returning one) say what is being
// read; they are turned into text only for an error.
class GgufReader {
 public:
  GgufReader(const unsigned char* bytes, uint64_t size, const std::string& name)
      : bytes_(bytes), size_(size), name_(name) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }
  [[noreturn]] void fail(const std::string& what) const { gguf_error(name_, what); }

  // The next n bytes.
  template <class W>
  const unsigned char* take(uint64_t n, const W& what) {
    if (n > left()) {
      fail(concat("truncated: ", describe(what), " at offset ", pos_, " needs ", n, " bytes, only ",
                  left(), " left"));
    }
    const unsigned char* at = bytes_ + pos_;
    pos_ += n;
    return at;
  }

  template <class V, class W>
  V get(const W& what) {
    return load_as<V>(take(sizeof(V), what));
  }

  // A GGUF string: uint64 length, then the bytes.
  template <class W>
  std::string str(const W& what) {
    const uint64_t n = get<uint64_t>([&] { return concat("the length of ", describe(what)); });
    if (n > left()) {
      fail(concat("truncated or corrupt: ", describe(what), " has length ", n, " at offset ", pos_,
                  ", but only ", left(), " bytes are left"));
    }
    const unsigned char* at = take(n, what);
    return std::string(reinterpret_cast<const char*>(at), size_t(n));
  }

 private:
  const unsigned char* bytes_;
  uint64_t size_;
  const std::string& name_;
  uint64_t pos_ = 0;
};

// What a GGUF file holds, apart from its bytes.
struct GgufContents {
  uint32_t version = 0;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;                                 // start of the data section
  std::vector<std::pair<std::string, GgufValue>> metadata;  // file order
  std::unordered_map<std::string, size_t> key_index;        // key -> index in metadata
  std::vector<GgufTensor> tensors;                          // file order
  std::unordered_map<std::string, size_t> tensor_index;     // name -> index in tensors
};

// Parses bytes [0, size) of a GGUF file called `name` (in errors). Tensor
// data and numeric arrays of the result point into bytes.
class GgufParser {
 public:
  GgufParser(const unsigned char* bytes, uint64_t size, const std::string& name)
      : r_(bytes, size, name), bytes_(bytes), size_(size), name_(name) {}

  GgufContents parse() {
    if (!host_is_little_endian()) fail("GGUF files are little-endian; this host is not");
    const std::pair<uint64_t, uint64_t> counts = read_header();  // tensors, metadata entries
    read_metadata(counts.second);
    read_alignment();
    read_tensor_infos(counts.first);
    place_tensors(r_.pos());
    return std::move(c_);
  }

 private:
  [[noreturn]] void fail(const std::string& what) const { gguf_error(name_, what); }

  // Magic and version; returns the tensor count and the metadata count.
  std::pair<uint64_t, uint64_t> read_header() {
    const unsigned char* magic = r_.take(4, "the magic");
    if (std::memcmp(magic, "GGUF", 4) != 0) {
      fail(concat("not a GGUF file: it starts with bytes ", hex_bytes(magic, 4),
                  ", expected 47 47 55 46 (\"GGUF\")"));
    }
    const uint32_t v = r_.get<uint32_t>("the version");
    if (v != 2 && v != 3) {
      const uint32_t swapped =
          (v >> 24) | ((v >> 8) & 0xFF00u) | ((v << 8) & 0xFF0000u) | (v << 24);
      if (swapped == 2 || swapped == 3) {
        fail(concat("big-endian GGUF file (version ", swapped,
                    "): kvattn reads little-endian files only"));
      }
      fail(concat("GGUF version ", v, " is not supported (kvattn reads versions 2 and 3)"));
    }
    c_.version = v;
    const uint64_t n_tensors = r_.get<uint64_t>("the tensor count");
    const uint64_t n_kv = r_.get<uint64_t>("the metadata count");
    return {n_tensors, n_kv};
  }

  void read_metadata(uint64_t n_kv) {
    constexpr uint64_t kLeast = 8 + 4 + 1;  // an empty key, the type, a one-byte value
    if (n_kv > size_ / kLeast) {
      fail(concat("truncated or corrupt: the header says ", n_kv, " metadata entries (at least ",
                  kLeast, " bytes each), more than the ", size_, "-byte file can hold"));
    }
    for (uint64_t k = 0; k < n_kv; ++k) {
      std::string key = r_.str([&] { return concat("the key of metadata entry ", k); });
      const auto seen = c_.key_index.find(key);
      if (seen != c_.key_index.end()) {
        fail(concat("duplicate metadata key '", key, "' (entries ", seen->second, " and ", k, ")"));
      }
      const uint32_t type = r_.get<uint32_t>([&] { return concat("the value type of ", key); });
      GgufValue v = read_value(type, key);
      c_.key_index.emplace(key, c_.metadata.size());
      c_.metadata.emplace_back(std::move(key), std::move(v));
    }
  }

  GgufValue read_value(uint32_t type, const std::string& key) {
    if (type > uint32_t(GgufType::Float64)) {
      fail(concat("metadata ", key, " has unknown value type ", type, " (known: 0..12)"));
    }
    GgufValue v;
    v.type = GgufType(type);
    const auto what = [&] { return concat("the ", gguf_type_name(v.type), " value of ", key); };
    if (v.type == GgufType::String) {
      v.string_value = r_.str(what);
    } else if (v.type == GgufType::Array) {
      v.array = read_array(key);
    } else {
      const GgufScalar s = gguf_load_scalar(v.type, r_.take(gguf_type_size(v.type), what));
      v.uint_value = s.u;
      v.int_value = s.i;
      v.float_value = s.f;
      if (v.type == GgufType::Bool && s.u > 1) {
        fail(concat("metadata ", key, " is a bool stored as ", s.u, ", expected 0 or 1"));
      }
    }
    return v;
  }

  GgufArray read_array(const std::string& key) {
    GgufArray a;
    const uint32_t type =
        r_.get<uint32_t>([&] { return concat("the element type of array ", key); });
    if (type == uint32_t(GgufType::Array)) {
      fail(concat("metadata ", key, " is an array of arrays, which kvattn does not read"));
    }
    if (type > uint32_t(GgufType::Float64)) {
      fail(concat("array ", key, " has unknown element type ", type, " (known: 0..12)"));
    }
    a.type = GgufType(type);
    a.size = r_.get<uint64_t>([&] { return concat("the element count of array ", key); });
    const uint64_t least = a.type == GgufType::String ? 8 : gguf_type_size(a.type);
    if (a.size > r_.left() / least) {
      fail(concat("truncated or corrupt: array ", key, " has ", a.size, " elements of type ",
                  gguf_type_name(a.type), " (at least ", least, " bytes each), but only ",
                  r_.left(), " bytes are left"));
    }
    if (a.type == GgufType::String) {
      a.strings.reserve(size_t(a.size));
      for (uint64_t i = 0; i < a.size; ++i) {
        a.strings.push_back(r_.str([&] { return concat("element ", i, " of array ", key); }));
      }
      return a;
    }
    a.data = r_.take(a.size * least, "the elements");  // they fit: checked above
    for (uint64_t i = 0; a.type == GgufType::Bool && i < a.size; ++i) {
      if (a.data[i] > 1) {
        fail(concat("array ", key, " element ", i, " is a bool stored as ", int(a.data[i]),
                    ", expected 0 or 1"));
      }
    }
    return a;
  }

  void read_alignment() {
    const auto it = c_.key_index.find("general.alignment");
    if (it == c_.key_index.end()) return;  // the default, 32
    const GgufValue& v = c_.metadata[it->second].second;
    if (v.type != GgufType::UInt32) {
      fail(concat("general.alignment has type ", gguf_type_name(v.type), ", expected uint32"));
    }
    const uint64_t a = v.uint_value;
    if (a == 0 || (a & (a - 1)) != 0) {
      fail(concat("general.alignment = ", a, " is not a power of two"));
    }
    c_.alignment = a;
  }

  void read_tensor_infos(uint64_t n_tensors) {
    constexpr uint64_t kLeast = 8 + 4 + 8 + 4 + 8;  // empty name, n_dims, one dim, type, offset
    if (n_tensors > size_ / kLeast) {
      fail(concat("truncated or corrupt: the header says ", n_tensors, " tensors (at least ",
                  kLeast, " bytes of tensor info each), more than the ", size_,
                  "-byte file can hold"));
    }
    for (uint64_t i = 0; i < n_tensors; ++i) {
      GgufTensor t = read_tensor_info(i);
      const auto seen = c_.tensor_index.find(t.name);
      if (seen != c_.tensor_index.end()) {
        fail(concat("duplicate tensor name '", t.name, "' (tensors ", seen->second, " and ", i,
                    ")"));
      }
      c_.tensor_index.emplace(t.name, c_.tensors.size());
      c_.tensors.push_back(std::move(t));
    }
  }

  GgufTensor read_tensor_info(uint64_t i) {
    GgufTensor t;
    t.name = r_.str([&] { return concat("the name of tensor ", i); });
    const std::string& name = t.name;
    const uint32_t n_dims = r_.get<uint32_t>([&] { return concat("n_dims of tensor ", name); });
    if (n_dims < 1 || n_dims > 4) {
      fail(concat("tensor ", name, " has n_dims = ", n_dims, ", expected 1..4"));
    }
    t.n_dims = int(n_dims);
    for (uint32_t d = 0; d < n_dims; ++d) {
      t.dims[d] = r_.get<uint64_t>([&] { return concat("dimension ", d, " of tensor ", name); });
    }
    t.type = r_.get<uint32_t>([&] { return concat("the type of tensor ", name); });
    t.offset = r_.get<uint64_t>([&] { return concat("the offset of tensor ", name); });
    t.bytes = tensor_bytes(t);
    if (t.offset % c_.alignment != 0) {
      fail(concat("tensor ", name, " has offset ", t.offset, ", not a multiple of the alignment ",
                  c_.alignment));
    }
    return t;
  }

  // Checks a tensor's dims and type; returns its size in bytes.
  uint64_t tensor_bytes(const GgufTensor& t) const {
    uint64_t n = 1;
    for (int d = 0; d < t.n_dims; ++d) {
      const uint64_t dim = t.dims[size_t(d)];
      if (dim == 0) fail(concat("tensor ", t.name, " has dimension ", d, " = 0"));
      if (dim > uint64_t(std::numeric_limits<int64_t>::max()) / n) {
        fail(concat("tensor ", t.name, " has dimensions ", gguf_dims_str(t),
                    " whose product overflows 63 bits"));
      }
      n *= dim;
    }
    const GgmlTypeInfo* info = ggml_type_info(t.type);
    if (info == nullptr) {
      if (ggml_type_name(t.type) == nullptr) {
        fail(concat("tensor ", t.name, " has unknown ggml type ", t.type));
      }
      fail(concat("tensor ", t.name, " has ggml type ", ggml_type_desc(t.type),
                  ", which kvattn does not read (it reads F32, F16, BF16, Q8_0, Q4_0, Q4_1, "
                  "Q5_0, Q5_1, IQ4_NL)"));
    }
    const uint64_t block = uint64_t(info->block);
    if (t.dims[0] % block != 0) {
      fail(concat("tensor ", t.name, " has row length ", t.dims[0], ", not a multiple of the ",
                  info->name, " block size ", block));
    }
    const uint64_t blocks = n / block;
    if (blocks > std::numeric_limits<uint64_t>::max() / info->block_bytes) {
      fail(concat("tensor ", t.name, " (", gguf_dims_str(t), " ", info->name,
                  ") has a size in bytes that overflows 64 bits"));
    }
    return blocks * info->block_bytes;
  }

  // Starts the data section at the first multiple of the alignment after the
  // infos, and points every tensor into it.
  void place_tensors(uint64_t infos_end) {
    const uint64_t a = c_.alignment;  // <= 2^31: no overflow below
    const uint64_t start = (infos_end + a - 1) / a * a;
    c_.data_offset = start;
    for (GgufTensor& t : c_.tensors) {
      const bool fits =
          start <= size_ && t.offset <= size_ - start && t.bytes <= size_ - start - t.offset;
      if (!fits) {
        fail(concat("truncated or corrupt: tensor ", t.name, " (", gguf_dims_str(t), " ",
                    ggml_type_info(t.type)->name, ", ", t.bytes, " bytes at offset ", t.offset,
                    " of the data section, which starts at byte ", start,
                    ") runs past the end of the ", size_, "-byte file"));
      }
      t.data = bytes_ + start + t.offset;
    }
  }

  GgufReader r_;
  const unsigned char* bytes_;
  uint64_t size_;
  const std::string& name_;
  GgufContents c_;
};

}  // namespace kvattn::detail
