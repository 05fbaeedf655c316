#pragma once
// A small GGUF writer for the GGUF tests: hand-made files, byte by byte,
// and helpers to parse them and check rejections.
#include <kvattn/io/ggml_quants.hpp>
#include <kvattn/io/gguf.hpp>
#include <kvattn/io/gguf_llama.hpp>
#include <kvattn/io/llama2c.hpp>
#include <kvattn/models/llama.hpp>

#include "models.hpp"
#include "test_util.hpp"

#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

using kvattn::GgufFile;
using kvattn::GgufTensor;
using kvattn::GgufType;
namespace ggml = kvattn::ggml;

// ---------------------------------------------------------------------------
// A GGUF writer for hand-made files (little-endian host, as the reader).

template <class V>
inline void put(std::string& s, V v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}

inline void put_string(std::string& s, const std::string& x) {
  put<uint64_t>(s, x.size());
  s += x;
}

class GgufWriter {
 public:
  template <class V>
  GgufWriter& scalar(const std::string& key, GgufType type, V value) {
    entry(key, type);
    put<V>(kv_, value);
    return *this;
  }
  GgufWriter& str(const std::string& key, const std::string& value) {
    entry(key, GgufType::String);
    put_string(kv_, value);
    return *this;
  }
  template <class V>
  GgufWriter& array(const std::string& key, GgufType type, const std::vector<V>& values) {
    entry(key, GgufType::Array);
    put<uint32_t>(kv_, uint32_t(type));
    put<uint64_t>(kv_, values.size());
    for (const V& v : values) put<V>(kv_, v);
    return *this;
  }
  GgufWriter& strings(const std::string& key, const std::vector<std::string>& values) {
    entry(key, GgufType::Array);
    put<uint32_t>(kv_, uint32_t(GgufType::String));
    put<uint64_t>(kv_, values.size());
    for (const std::string& v : values) put_string(kv_, v);
    return *this;
  }
  // general.alignment = a; the data of the tensors added after it starts at multiples of a.
  GgufWriter& alignment(uint32_t a) {
    alignment_ = a;
    return scalar<uint32_t>("general.alignment", GgufType::UInt32, a);
  }
  // Metadata bytes written by hand, counted as `entries` entries.
  GgufWriter& raw(const std::string& bytes, uint64_t entries = 1) {
    kv_ += bytes;
    n_kv_ += entries;
    return *this;
  }
  // A tensor info exactly as given (n_dims need not be dims.size()), without data.
  GgufWriter& info(const std::string& name, uint32_t n_dims, const std::vector<uint64_t>& dims,
                   uint32_t type, uint64_t offset) {
    put_string(infos_, name);
    put<uint32_t>(infos_, n_dims);
    for (uint64_t d : dims) put<uint64_t>(infos_, d);
    put<uint32_t>(infos_, type);
    put<uint64_t>(infos_, offset);
    ++n_tensors_;
    return *this;
  }
  // A tensor: its info, and its data at the next multiple of the alignment.
  GgufWriter& tensor(const std::string& name, uint32_t type, const std::vector<uint64_t>& dims,
                     const std::string& data) {
    while (data_.size() % alignment_ != 0) data_ += '\0';
    info(name, uint32_t(dims.size()), dims, type, data_.size());
    data_ += data;
    return *this;
  }
  // The file, its header saying `version`. It ends with the last tensor's data.
  std::string bytes(uint32_t version = 3) const {
    std::string s = "GGUF";
    put<uint32_t>(s, version);
    put<uint64_t>(s, n_tensors_);
    put<uint64_t>(s, n_kv_);
    s += kv_;
    s += infos_;
    if (!data_.empty()) {
      while (s.size() % alignment_ != 0) s += '\0';
      s += data_;
    }
    return s;
  }
  // Where the tensor infos end in bytes().
  uint64_t infos_end() const { return 24 + kv_.size() + infos_.size(); }

 private:
  void entry(const std::string& key, GgufType type) {
    put_string(kv_, key);
    put<uint32_t>(kv_, uint32_t(type));
    ++n_kv_;
  }

  uint64_t alignment_ = 32;
  std::string kv_, infos_, data_;
  uint64_t n_kv_ = 0, n_tensors_ = 0;
};

inline GgufFile parse(const std::string& bytes) {
  return GgufFile::from_buffer(std::vector<char>(bytes.begin(), bytes.end()), "mem.gguf");
}

// The message parse(bytes) throws, or "" if it parses.
inline std::string error_of(const std::string& bytes) {
  try {
    parse(bytes);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

// Expects parse(bytes) to throw std::runtime_error "mem.gguf: ..." holding every one of parts.
inline void expect_rejected(const std::string& bytes, const std::vector<std::string>& parts) {
  const std::string what = error_of(bytes);
  ASSERT_FALSE(what.empty()) << "accepted, expected an error with \"" << parts.front() << "\"";
  EXPECT_EQ(what.rfind("mem.gguf: ", 0), 0u) << what;
  for (const std::string& p : parts) {
    EXPECT_NE(what.find(p), std::string::npos)
        << "message \"" << what << "\" lacks \"" << p << "\"";
  }
}

// n float32 values first, first + 1, ...
inline std::string floats(uint64_t n, float first) {
  std::string s;
  for (uint64_t i = 0; i < n; ++i) put<float>(s, first + float(i));
  return s;
}

// bytes with v written over it at byte `at`.
template <class V>
inline std::string patched(std::string bytes, size_t at, V v) {
  std::memcpy(&bytes[at], &v, sizeof v);
  return bytes;
}

// 168 bytes: a string, a float32 array and one F32 tensor of two values (the layout is in
// TruncationNamesWhatWasBeingRead).
inline std::string small_file() {
  GgufWriter w;
  w.str("general.architecture", "llama").array<float>("s", GgufType::Float32, {1.0f, 2.0f});
  w.tensor("t", ggml::F32, {2}, floats(2, 1.0f));
  return w.bytes();
}

// Metadata of every value type, and an array of every element type; no tensors.
inline std::string every_type_file() {
  GgufWriter w;
  w.scalar<uint8_t>("u8", GgufType::UInt8, 200)
      .scalar<int8_t>("i8", GgufType::Int8, -100)
      .scalar<uint16_t>("u16", GgufType::UInt16, 60000)
      .scalar<int16_t>("i16", GgufType::Int16, -30000)
      .scalar<uint32_t>("u32", GgufType::UInt32, 4000000000u)
      .scalar<int32_t>("i32", GgufType::Int32, -2000000000)
      .scalar<float>("f32", GgufType::Float32, 1.5f)
      .scalar<uint8_t>("bool", GgufType::Bool, 1)
      .str("str", "h\xC3\xA9llo")
      .scalar<uint64_t>("u64", GgufType::UInt64, (uint64_t(1) << 40) + 3)
      .scalar<uint64_t>("u64max", GgufType::UInt64, std::numeric_limits<uint64_t>::max())
      .scalar<int64_t>("i64", GgufType::Int64, -(int64_t(1) << 40))
      .scalar<double>("f64", GgufType::Float64, 0.1);
  w.array<uint8_t>("a.u8", GgufType::UInt8, {1, 2, 255})
      .array<int8_t>("a.i8", GgufType::Int8, {-1, 0, 127})
      .array<uint16_t>("a.u16", GgufType::UInt16, {65535, 7})
      .array<int16_t>("a.i16", GgufType::Int16, {-32768, 5})
      .array<uint32_t>("a.u32", GgufType::UInt32, {4000000000u})
      .array<int32_t>("a.i32", GgufType::Int32, {-5, 6})
      .array<float>("a.f32", GgufType::Float32, {0.5f, -2.25f})
      .array<uint8_t>("a.bool", GgufType::Bool, {1, 0, 1})
      .strings("a.str", {"a", "", "xyz"})
      .array<uint64_t>("a.u64", GgufType::UInt64, {std::numeric_limits<uint64_t>::max()})
      .array<int64_t>("a.i64", GgufType::Int64, {-7})
      .array<double>("a.f64", GgufType::Float64, {1e300})
      .array<uint32_t>("a.empty", GgufType::UInt32, {});
  return w.bytes();
}

}  // namespace
