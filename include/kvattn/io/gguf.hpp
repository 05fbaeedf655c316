#pragma once
/// \file
/// A reader for GGUF files, versions 2 and 3 (the container llama.cpp
/// writes). Layout, every field little-endian:
///
///   "GGUF", uint32 version, uint64 tensor count, uint64 metadata count;
///   metadata entries: string key, uint32 value type, the value;
///   tensor infos: string name, uint32 n_dims (1..4), uint64 dims[n_dims]
///     (ne0 first: the row length), uint32 ggml type, uint64 offset (from
///     the start of the data section, a multiple of the alignment);
///   zero padding up to a multiple of the alignment (general.alignment,
///     a uint32 power of two, 32 when absent);
///   the data section.
///
/// A string is a uint64 length and that many bytes (no terminator). Value
/// types: 0 uint8, 1 int8, 2 uint16, 3 int16, 4 uint32, 5 int32, 6 float32,
/// 7 bool (one byte, 0 or 1), 8 string, 9 array, 10 uint64, 11 int64,
/// 12 float64. An array is a uint32 element type, a uint64 count and the
/// elements; the format allows arrays of arrays, kvattn rejects them.
///
/// GgufFile::open maps the file read-only (POSIX mmap; elsewhere it reads
/// it). Tensor data and numeric arrays are views into those bytes, valid as
/// long as the GgufFile (moving it keeps them valid). Every count, length,
/// offset and size is checked against the bytes there are before it is used
/// or anything is allocated from it; a truncated or corrupt file is a
/// std::runtime_error "<name>: <what is wrong>" naming what was being read.
/// Little-endian hosts only.

#include <kvattn/error.hpp>
#include <kvattn/io/ggml_quants.hpp>
#include <kvattn/io/gguf_parse.hpp>
#include <kvattn/io/gguf_types.hpp>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <istream>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define KVATTN_GGUF_MMAP 1
#else
#define KVATTN_GGUF_MMAP 0
#endif

namespace kvattn {

/// A parsed GGUF file: metadata, tensor infos, and views of the tensor data.
/// Move-only.
class GgufFile {
 public:
  /// Maps the file at `path` read-only and parses it.
  static GgufFile open(const std::string& path);

  /// Parses bytes it keeps; `name` stands for the file in errors.
  static GgufFile from_buffer(std::vector<char> bytes, const std::string& name) {
    GgufFile f;
    f.name_ = name;
    f.buffer_ = std::move(bytes);
    f.bytes_ = reinterpret_cast<const unsigned char*>(f.buffer_.data());
    f.size_ = f.buffer_.size();
    f.parse();
    return f;
  }

  /// Reads the rest of a stream (at most kMaxStreamBytes) and parses it.
  static GgufFile from_stream(std::istream& in, const std::string& name);

  static constexpr uint64_t kMaxStreamBytes = uint64_t(1) << 34;  ///< 16 GiB

  GgufFile(GgufFile&& other) noexcept { swap(other); }
  GgufFile& operator=(GgufFile&& other) noexcept {
    GgufFile moved(std::move(other));
    swap(moved);
    return *this;
  }
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;
  ~GgufFile() {
#if KVATTN_GGUF_MMAP
    if (map_ != nullptr) ::munmap(map_, map_size_);
#endif
  }

  const std::string& name() const { return name_; }
  uint32_t version() const { return c_.version; }
  uint64_t alignment() const { return c_.alignment; }
  /// Where the data section starts in the file.
  uint64_t data_offset() const { return c_.data_offset; }
  /// The whole file: size() bytes.
  const unsigned char* data() const { return bytes_; }
  uint64_t size() const { return size_; }

  // ---- metadata ----

  bool has(const std::string& key) const { return c_.key_index.count(key) != 0; }
  /// The value of key, or nullptr.
  const GgufValue* find(const std::string& key) const {
    const auto it = c_.key_index.find(key);
    return it == c_.key_index.end() ? nullptr : &c_.metadata[it->second].second;
  }
  /// The value of key; throws std::runtime_error naming a missing key.
  const GgufValue& value(const std::string& key) const {
    const GgufValue* v = find(key);
    if (v == nullptr) fail(detail::concat("no metadata key '", key, "'"));
    return *v;
  }
  /// Every key, in file order.
  std::vector<std::string> keys() const {
    std::vector<std::string> out;
    out.reserve(c_.metadata.size());
    for (const auto& kv : c_.metadata) out.push_back(kv.first);
    return out;
  }

  /// An integer value of any integer type (not bool); a negative one is an error.
  uint64_t get_uint(const std::string& key) const {
    const GgufValue& v = value(key);
    if (detail::gguf_is_unsigned(v.type)) return v.uint_value;
    if (!detail::gguf_is_signed(v.type)) wrong_type(key, v, "an integer");
    if (v.int_value < 0) {
      fail(detail::concat("metadata ", key, " = ", v.int_value,
                          " is negative, expected an unsigned integer"));
    }
    return uint64_t(v.int_value);
  }
  /// An integer value of any integer type (not bool) that fits in int64.
  int64_t get_int(const std::string& key) const {
    const GgufValue& v = value(key);
    if (detail::gguf_is_signed(v.type)) return v.int_value;
    if (!detail::gguf_is_unsigned(v.type)) wrong_type(key, v, "an integer");
    if (v.uint_value > uint64_t(std::numeric_limits<int64_t>::max())) {
      fail(detail::concat("metadata ", key, " = ", v.uint_value, " does not fit in int64"));
    }
    return int64_t(v.uint_value);
  }
  /// A float value, or an integer one converted.
  double get_float(const std::string& key) const {
    const GgufValue& v = value(key);
    if (detail::gguf_is_float(v.type)) return v.float_value;
    if (detail::gguf_is_unsigned(v.type)) return double(v.uint_value);
    if (detail::gguf_is_signed(v.type)) return double(v.int_value);
    wrong_type(key, v, "a number");
  }
  bool get_bool(const std::string& key) const {
    const GgufValue& v = value(key);
    if (v.type != GgufType::Bool) wrong_type(key, v, "a bool");
    return v.uint_value != 0;
  }
  const std::string& get_string(const std::string& key) const {
    const GgufValue& v = value(key);
    if (v.type != GgufType::String) wrong_type(key, v, "a string");
    return v.string_value;
  }
  const GgufArray& get_array(const std::string& key) const {
    const GgufValue& v = value(key);
    if (v.type != GgufType::Array) wrong_type(key, v, "an array");
    return v.array;
  }

  // ---- tensors ----

  /// Every tensor, in file order.
  const std::vector<GgufTensor>& tensors() const { return c_.tensors; }
  /// The tensor called name, or nullptr.
  const GgufTensor* find_tensor(const std::string& name) const {
    const auto it = c_.tensor_index.find(name);
    return it == c_.tensor_index.end() ? nullptr : &c_.tensors[it->second];
  }
  /// The tensor called name; throws std::runtime_error naming a missing one.
  const GgufTensor& tensor(const std::string& name) const {
    const GgufTensor* t = find_tensor(name);
    if (t == nullptr) fail(detail::concat("no tensor '", name, "'"));
    return *t;
  }

 private:
  GgufFile() = default;

  void swap(GgufFile& o) noexcept {
    using std::swap;
    swap(name_, o.name_);
    swap(buffer_, o.buffer_);
    swap(map_, o.map_);
    swap(map_size_, o.map_size_);
    swap(bytes_, o.bytes_);
    swap(size_, o.size_);
    swap(c_, o.c_);
  }

  [[noreturn]] void fail(const std::string& what) const { detail::gguf_error(name_, what); }
  [[noreturn]] void wrong_type(const std::string& key, const GgufValue& v,
                               const char* expected) const {
    fail(detail::concat("metadata ", key, " has type ", gguf_type_name(v.type), ", expected ",
                        expected));
  }

  void parse() { c_ = detail::GgufParser(bytes_, size_, name_).parse(); }

  std::string name_;
  std::vector<char> buffer_;  // the bytes, unless mapped
  void* map_ = nullptr;       // the mapping, if any
  size_t map_size_ = 0;
  const unsigned char* bytes_ = nullptr;  // [size_]: buffer_ or the mapping
  uint64_t size_ = 0;
  detail::GgufContents c_;  // what the bytes hold
};

inline GgufFile GgufFile::open(const std::string& path) {
#if KVATTN_GGUF_MMAP
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    detail::gguf_error(path, err == ENOENT ? std::string("cannot open: no such file")
                                           : detail::concat("cannot open: ", std::strerror(err)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    detail::gguf_error(path, "cannot open: not a regular file");
  }
  GgufFile f;
  f.name_ = path;
  const uint64_t size = uint64_t(st.st_size);
  if (uint64_t(size_t(size)) != size) {
    ::close(fd);
    detail::gguf_error(path, detail::concat("file is ", size, " bytes, too large to map"));
  }
  if (size > 0) {
    void* p = ::mmap(nullptr, size_t(size), PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);
    if (p == MAP_FAILED) {
      detail::gguf_error(path, detail::concat("cannot map: ", std::strerror(err)));
    }
    f.map_ = p;
    f.map_size_ = size_t(size);
    f.bytes_ = static_cast<const unsigned char*>(p);
    f.size_ = size;
  } else {
    ::close(fd);
  }
  f.parse();  // on error, f's destructor unmaps
  return f;
#else
  std::ifstream in(path, std::ios::binary);
  if (!in) detail::gguf_error(path, "cannot open for reading");
  return from_stream(in, path);
#endif
}

inline GgufFile GgufFile::from_stream(std::istream& in, const std::string& name) {
  std::vector<char> bytes;
  std::vector<char> chunk(size_t(1) << 20);
  for (;;) {
    in.read(chunk.data(), std::streamsize(chunk.size()));
    const uint64_t got = uint64_t(in.gcount());
    if (uint64_t(bytes.size()) + got > kMaxStreamBytes) {
      detail::gguf_error(name, detail::concat("the stream holds more than ", kMaxStreamBytes,
                                              " bytes, the most from_stream reads"));
    }
    bytes.insert(bytes.end(), chunk.data(), chunk.data() + got);
    if (!in) break;
  }
  if (in.bad()) detail::gguf_error(name, "reading the stream failed");
  return from_buffer(std::move(bytes), name);
}

/// Dequantizes all of t (elements() values, row after row: [rows() x
/// row_length()] row-major) into dst, converting to T.
template <class T>
void gguf_dequantize(const GgufTensor& t, T* dst) {
  const int64_t cols = int64_t(t.row_length());
  const uint64_t rows = t.rows();
  if constexpr (std::is_same<T, float>::value) {
    dequantize_row(t.type, t.data, cols * int64_t(rows), dst);
  } else {
    const uint64_t row_bytes = t.bytes / rows;
    std::vector<float> row(static_cast<size_t>(cols));
    for (uint64_t r = 0; r < rows; ++r) {
      dequantize_row(t.type, t.data + r * row_bytes, cols, row.data());
      T* out = dst + r * uint64_t(cols);
      for (int64_t c = 0; c < cols; ++c) out[c] = static_cast<T>(row[size_t(c)]);
    }
  }
}

}  // namespace kvattn
