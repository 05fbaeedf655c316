#pragma once
/// \file
/// The pieces of a GGUF file (io/gguf.hpp reads them; the format is described
/// there): metadata value types, arrays and values, and tensor infos.

#include <kvattn/error.hpp>

#include <array>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvattn {

/// GGUF metadata value types, with their ids.
enum class GgufType : uint32_t {
  UInt8 = 0,
  Int8 = 1,
  UInt16 = 2,
  Int16 = 3,
  UInt32 = 4,
  Int32 = 5,
  Float32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  UInt64 = 10,
  Int64 = 11,
  Float64 = 12,
};

/// "uint8", "int8", ..., "float64".
inline const char* gguf_type_name(GgufType t) {
  static const char* const kNames[] = {"uint8",  "int8",    "uint16", "int16",  "uint32",
                                       "int32",  "float32", "bool",   "string", "array",
                                       "uint64", "int64",   "float64"};
  const uint32_t i = uint32_t(t);
  return i < std::size(kNames) ? kNames[i] : "unknown";
}

/// Bytes of one scalar of type t (0 for String and Array).
inline uint64_t gguf_type_size(GgufType t) {
  switch (t) {
    case GgufType::UInt8:
    case GgufType::Int8:
    case GgufType::Bool:
      return 1;
    case GgufType::UInt16:
    case GgufType::Int16:
      return 2;
    case GgufType::UInt32:
    case GgufType::Int32:
    case GgufType::Float32:
      return 4;
    case GgufType::UInt64:
    case GgufType::Int64:
    case GgufType::Float64:
      return 8;
    case GgufType::String:
    case GgufType::Array:
      return 0;
  }
  return 0;
}

namespace detail {

[[noreturn]] inline void gguf_error(const std::string& name, const std::string& what) {
  throw std::runtime_error(concat(name, ": ", what));
}

inline bool gguf_is_unsigned(GgufType t) {
  return t == GgufType::UInt8 || t == GgufType::UInt16 || t == GgufType::UInt32 ||
         t == GgufType::UInt64;
}
inline bool gguf_is_signed(GgufType t) {
  return t == GgufType::Int8 || t == GgufType::Int16 || t == GgufType::Int32 ||
         t == GgufType::Int64;
}
inline bool gguf_is_float(GgufType t) { return t == GgufType::Float32 || t == GgufType::Float64; }

template <class V>
V load_as(const unsigned char* p) {
  V v{};
  std::memcpy(&v, p, sizeof v);
  return v;
}

// A decoded scalar: unsigned types and Bool in u, signed types in i, floats in f.
struct GgufScalar {
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
};

inline GgufScalar gguf_load_scalar(GgufType t, const unsigned char* p) {
  GgufScalar s;
  switch (t) {
    case GgufType::UInt8:
    case GgufType::Bool:
      s.u = load_as<uint8_t>(p);
      break;
    case GgufType::Int8:
      s.i = load_as<int8_t>(p);
      break;
    case GgufType::UInt16:
      s.u = load_as<uint16_t>(p);
      break;
    case GgufType::Int16:
      s.i = load_as<int16_t>(p);
      break;
    case GgufType::UInt32:
      s.u = load_as<uint32_t>(p);
      break;
    case GgufType::Int32:
      s.i = load_as<int32_t>(p);
      break;
    case GgufType::Float32:
      s.f = load_as<float>(p);
      break;
    case GgufType::UInt64:
      s.u = load_as<uint64_t>(p);
      break;
    case GgufType::Int64:
      s.i = load_as<int64_t>(p);
      break;
    case GgufType::Float64:
      s.f = load_as<double>(p);
      break;
    case GgufType::String:
    case GgufType::Array:
      break;
  }
  return s;
}

}  // namespace detail

/// A metadata array. Numeric and bool elements stay in the file (`data`,
/// size * gguf_type_size(type) bytes, unaligned); string elements are copied.
struct GgufArray {
  GgufType type = GgufType::UInt8;      ///< element type (never Array)
  uint64_t size = 0;                    ///< element count
  const unsigned char* data = nullptr;  ///< numeric and bool elements
  std::vector<std::string> strings;     ///< string elements

  /// Element i of a numeric or bool array as a double. Throws
  /// std::invalid_argument for a string array, std::out_of_range for i >= size.
  double number(uint64_t i) const {
    const detail::GgufScalar s = element(i, "number", false);
    if (detail::gguf_is_float(type)) return s.f;
    return detail::gguf_is_signed(type) ? double(s.i) : double(s.u);
  }

  /// Element i of an integer or bool array. Throws std::invalid_argument for
  /// a float or string array, std::out_of_range for i >= size or a uint64
  /// element past the int64 range.
  int64_t integer(uint64_t i) const {
    const detail::GgufScalar s = element(i, "integer", true);
    if (detail::gguf_is_signed(type)) return s.i;
    if (s.u > uint64_t(std::numeric_limits<int64_t>::max())) {
      throw std::out_of_range(
          detail::concat("GgufArray::integer: element ", i, " = ", s.u, " does not fit in int64"));
    }
    return int64_t(s.u);
  }

  /// Every element of a numeric or bool array as a double.
  std::vector<double> numbers() const {
    std::vector<double> out;
    out.reserve(size_t(size));
    for (uint64_t i = 0; i < size; ++i) out.push_back(number(i));
    return out;
  }

 private:
  detail::GgufScalar element(uint64_t i, const char* fn, bool integers_only) const {
    if (type == GgufType::String || type == GgufType::Array ||
        (integers_only && detail::gguf_is_float(type))) {
      throw std::invalid_argument(
          detail::concat("GgufArray::", fn, ": the elements are ", gguf_type_name(type)));
    }
    if (i >= size) {
      throw std::out_of_range(
          detail::concat("GgufArray::", fn, ": index ", i, ", expected < size = ", size));
    }
    return detail::gguf_load_scalar(type, data + i * gguf_type_size(type));
  }
};

/// One metadata value; the member its type names holds it.
struct GgufValue {
  GgufType type = GgufType::UInt8;
  uint64_t uint_value = 0;   ///< UInt8, UInt16, UInt32, UInt64; Bool (0 or 1)
  int64_t int_value = 0;     ///< Int8, Int16, Int32, Int64
  double float_value = 0;    ///< Float32, Float64
  std::string string_value;  ///< String
  GgufArray array;           ///< Array
};

/// One tensor: its info and a view of its bytes in the file.
struct GgufTensor {
  std::string name;
  uint32_t type = 0;                              ///< ggml type id (ggml::Type)
  std::array<uint64_t, 4> dims = {{1, 1, 1, 1}};  ///< ne0 (the row length) first; unused are 1
  int n_dims = 0;                                 ///< 1..4
  uint64_t offset = 0;                            ///< from the start of the data section
  const unsigned char* data = nullptr;            ///< `bytes` bytes in the file
  uint64_t bytes = 0;                             ///< rows() * ggml_row_bytes(type, row_length())

  uint64_t row_length() const { return dims[0]; }
  uint64_t rows() const { return dims[1] * dims[2] * dims[3]; }
  uint64_t elements() const { return dims[0] * rows(); }
};

namespace detail {

// "64 x 512": a tensor's dims, ne0 first.
inline std::string gguf_dims_str(const GgufTensor& t) {
  std::string s;
  for (int d = 0; d < t.n_dims; ++d) s += (d == 0 ? "" : " x ") + std::to_string(t.dims[size_t(d)]);
  return s;
}

}  // namespace detail

}  // namespace kvattn
