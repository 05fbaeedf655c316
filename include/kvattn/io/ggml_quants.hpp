#pragma once
/// \file
/// The ggml tensor types kvattn reads from GGUF files: their ids, their block
/// layouts, and a plain scalar dequantization of each (the `_ref` twins that
/// faster kernels are tested against).
///
/// A row of n values is n / block blocks stored back to back, block b holding
/// values [b * block, (b + 1) * block) of the row. Multi-byte fields are
/// little-endian; fp16 is IEEE 754 binary16, bf16 the upper 16 bits of an
/// IEEE binary32. Per type (values per block / bytes per block):
///
///   F32     1 /  4  the float                             x = f
///   F16     1 /  2  the fp16                              x = h
///   BF16    1 /  2  the bf16                              x = b
///   Q8_0   32 / 34  fp16 d; int8 q[32]                    x[j] = d * q[j]
///   Q4_0   32 / 18  fp16 d; 16 bytes of codes             x[j] = d * (c[j] - 8)
///   Q4_1   32 / 20  fp16 d; fp16 m; 16 bytes of codes     x[j] = d * c[j] + m
///   Q5_0   32 / 22  fp16 d; uint32 qh; 16 bytes of codes  x[j] = d * (c[j] + 16 h[j] - 16)
///   Q5_1   32 / 24  fp16 d; fp16 m; uint32 qh; 16 bytes   x[j] = d * (c[j] + 16 h[j]) + m
///   IQ4_NL 32 / 18  fp16 d; 16 bytes of codes             x[j] = d * kIq4nlValues[c[j]]
///
/// The 4-bit codes c[j] pair each element with the one half a block away,
/// not with its neighbour: byte i (i = 0..15) of the 16 code bytes holds
/// c[i] in its low nibble and c[i + 16] in its high nibble, so byte 0 holds
/// elements 0 and 16, byte 1 elements 1 and 17, and so on.
/// The fifth bit h[j] of the Q5 types is bit j of qh, read as a little-endian
/// uint32: bits 0..15 go with elements 0..15 (the low nibbles), bits 16..31
/// with elements 16..31 (the high nibbles).
/// IQ4_NL's code selects one of 16 fixed int8 levels (kIq4nlValues), spaced
/// closer near zero, where most weights lie, than at the ends.
///
/// (Checked against ggml's reference dequantization and the GGUF type
/// table as published; the description is ours.)

#include <kvattn/error.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <stdexcept>
#include <string>

namespace kvattn {

namespace ggml {
/// ggml type ids (what a GGUF tensor info stores) of the types kvattn reads.
enum Type : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  IQ4_NL = 20,
  BF16 = 30,
};
}  // namespace ggml

/// The 16 levels an IQ4_NL code selects, before the block scale d.
inline constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

/// IEEE binary16 bits to float (exact: every fp16 value is a float).
inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (uint32_t(h) >> 10) & 0x1Fu;
  const uint32_t mantissa = uint32_t(h) & 0x3FFu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float m = std::ldexp(float(mantissa), -24);
    return sign != 0 ? -m : m;
  }
  const uint32_t bits = exponent == 0x1F ? (sign | 0x7F800000u | (mantissa << 13))  // inf, NaN
                                         : (sign | ((exponent + 112u) << 23) | (mantissa << 13));
  float f = 0;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

/// bfloat16 bits to float (exact: the upper half of a binary32).
inline float bf16_to_float(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float f = 0;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

namespace detail {

inline uint16_t load_le16(const unsigned char* p) {
  return uint16_t(uint32_t(p[0]) | (uint32_t(p[1]) << 8));
}

inline uint32_t load_le32(const unsigned char* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}

// The 32 4-bit codes of a block from its 16 code bytes: code i is the low
// nibble of byte i, code i + 16 its high nibble.
inline void unpack_codes(const unsigned char* qs, int codes[32]) {
  for (int i = 0; i < 16; ++i) {
    codes[i] = qs[i] & 0x0F;
    codes[i + 16] = qs[i] >> 4;
  }
}

}  // namespace detail

/// F32: n little-endian floats.
inline void dequantize_f32_ref(const unsigned char* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = detail::load_le32(src + 4 * i);
    std::memcpy(dst + i, &bits, sizeof(float));
  }
}

/// F16: n fp16 values.
inline void dequantize_f16_ref(const unsigned char* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_float(detail::load_le16(src + 2 * i));
}

/// BF16: n bf16 values.
inline void dequantize_bf16_ref(const unsigned char* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(detail::load_le16(src + 2 * i));
}

/// Q8_0 blocks of 34 bytes: fp16 d, int8 q[32]; x[j] = d * q[j]. n % 32 == 0.
inline void dequantize_q8_0_ref(const unsigned char* src, int64_t n, float* dst) {
  for (int64_t b = 0; b < n / 32; ++b, src += 34, dst += 32) {
    const float d = fp16_to_float(detail::load_le16(src));
    for (int j = 0; j < 32; ++j) {
      const int q = int(src[2 + j]) - ((src[2 + j] & 0x80) != 0 ? 256 : 0);
      dst[j] = d * float(q);
    }
  }
}

/// Q4_0 blocks of 18 bytes: fp16 d, 16 code bytes; x[j] = d * (c[j] - 8). n % 32 == 0.
inline void dequantize_q4_0_ref(const unsigned char* src, int64_t n, float* dst) {
  int c[32];
  for (int64_t b = 0; b < n / 32; ++b, src += 18, dst += 32) {
    const float d = fp16_to_float(detail::load_le16(src));
    detail::unpack_codes(src + 2, c);
    for (int j = 0; j < 32; ++j) dst[j] = d * float(c[j] - 8);
  }
}

/// Q4_1 blocks of 20 bytes: fp16 d, fp16 m, 16 code bytes; x[j] = d * c[j] + m. n % 32 == 0.
inline void dequantize_q4_1_ref(const unsigned char* src, int64_t n, float* dst) {
  int c[32];
  for (int64_t b = 0; b < n / 32; ++b, src += 20, dst += 32) {
    const float d = fp16_to_float(detail::load_le16(src));
    const float m = fp16_to_float(detail::load_le16(src + 2));
    detail::unpack_codes(src + 4, c);
    for (int j = 0; j < 32; ++j) dst[j] = d * float(c[j]) + m;
  }
}

/// Q5_0 blocks of 22 bytes: fp16 d, uint32 qh, 16 code bytes;
/// x[j] = d * (c[j] + 16 h[j] - 16), h[j] = bit j of qh. n % 32 == 0.
inline void dequantize_q5_0_ref(const unsigned char* src, int64_t n, float* dst) {
  int c[32];
  for (int64_t b = 0; b < n / 32; ++b, src += 22, dst += 32) {
    const float d = fp16_to_float(detail::load_le16(src));
    const uint32_t qh = detail::load_le32(src + 2);
    detail::unpack_codes(src + 6, c);
    for (int j = 0; j < 32; ++j) {
      const int h = int((qh >> j) & 1u);
      dst[j] = d * float(c[j] + 16 * h - 16);
    }
  }
}

/// Q5_1 blocks of 24 bytes: fp16 d, fp16 m, uint32 qh, 16 code bytes;
/// x[j] = d * (c[j] + 16 h[j]) + m, h[j] = bit j of qh. n % 32 == 0.
inline void dequantize_q5_1_ref(const unsigned char* src, int64_t n, float* dst) {
  int c[32];
  for (int64_t b = 0; b < n / 32; ++b, src += 24, dst += 32) {
    const float d = fp16_to_float(detail::load_le16(src));
    const float m = fp16_to_float(detail::load_le16(src + 2));
    const uint32_t qh = detail::load_le32(src + 4);
    detail::unpack_codes(src + 8, c);
    for (int j = 0; j < 32; ++j) {
      const int h = int((qh >> j) & 1u);
      dst[j] = d * float(c[j] + 16 * h) + m;
    }
  }
}

/// IQ4_NL blocks of 18 bytes: fp16 d, 16 code bytes; x[j] = d * kIq4nlValues[c[j]].
/// n % 32 == 0.
inline void dequantize_iq4_nl_ref(const unsigned char* src, int64_t n, float* dst) {
  int c[32];
  for (int64_t b = 0; b < n / 32; ++b, src += 18, dst += 32) {
    const float d = fp16_to_float(detail::load_le16(src));
    detail::unpack_codes(src + 2, c);
    for (int j = 0; j < 32; ++j) dst[j] = d * float(kIq4nlValues[c[j]]);
  }
}

/// Layout of one supported ggml type.
struct GgmlTypeInfo {
  uint32_t id;
  const char* name;
  int64_t block;                                                        ///< values per block
  uint64_t block_bytes;                                                 ///< bytes per block
  void (*dequantize)(const unsigned char* src, int64_t n, float* dst);  ///< the _ref twin
};

/// The layout of a type kvattn reads, or nullptr.
inline const GgmlTypeInfo* ggml_type_info(uint32_t type) {
  static const GgmlTypeInfo kTypes[] = {
      {ggml::F32, "F32", 1, 4, dequantize_f32_ref},
      {ggml::F16, "F16", 1, 2, dequantize_f16_ref},
      {ggml::BF16, "BF16", 1, 2, dequantize_bf16_ref},
      {ggml::Q8_0, "Q8_0", 32, 34, dequantize_q8_0_ref},
      {ggml::Q4_0, "Q4_0", 32, 18, dequantize_q4_0_ref},
      {ggml::Q4_1, "Q4_1", 32, 20, dequantize_q4_1_ref},
      {ggml::Q5_0, "Q5_0", 32, 22, dequantize_q5_0_ref},
      {ggml::Q5_1, "Q5_1", 32, 24, dequantize_q5_1_ref},
      {ggml::IQ4_NL, "IQ4_NL", 32, 18, dequantize_iq4_nl_ref},
  };
  for (const GgmlTypeInfo& t : kTypes) {
    if (t.id == type) return &t;
  }
  return nullptr;
}

/// The name of any ggml type id ggml has defined (read or not), or nullptr.
inline const char* ggml_type_name(uint32_t type) {
  static const char* const kNames[] = {
      "F32",     "F16",    "Q4_0",    "Q4_1",  nullptr,  nullptr, "Q5_0",  "Q5_1",
      "Q8_0",    "Q8_1",   "Q2_K",    "Q3_K",  "Q4_K",   "Q5_K",  "Q6_K",  "Q8_K",
      "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
      "I8",      "I16",    "I32",     "I64",   "F64",    "IQ1_M", "BF16",  nullptr,
      nullptr,   nullptr,  "TQ1_0",   "TQ2_0", nullptr,  nullptr, nullptr, "MXFP4"};
  return type < std::size(kNames) ? kNames[type] : nullptr;
}

namespace detail {
// "12 (Q4_K)" or "99 (unknown)", for messages.
inline std::string ggml_type_desc(uint32_t type) {
  const char* name = ggml_type_name(type);
  return concat(type, " (", name != nullptr ? name : "unknown", ")");
}
}  // namespace detail

/// Bytes of a row of n values of a supported type. Throws
/// std::invalid_argument for another type or n not a multiple of its block.
inline uint64_t ggml_row_bytes(uint32_t type, int64_t n) {
  const GgmlTypeInfo* info = ggml_type_info(type);
  if (info == nullptr) {
    throw std::invalid_argument(detail::concat("ggml_row_bytes: ggml type ",
                                               detail::ggml_type_desc(type), " is not supported"));
  }
  if (n < 0 || n % info->block != 0) {
    throw std::invalid_argument(detail::concat("ggml_row_bytes: n = ", n,
                                               ", expected a multiple of the ", info->name,
                                               " block size ", info->block));
  }
  return uint64_t(n / info->block) * info->block_bytes;
}

/// Dequantizes n values of ggml type `type` from src (ggml_row_bytes(type, n)
/// bytes) into dst [n], straight from the block formula. Throws
/// std::invalid_argument for an unsupported type or n not a multiple of the
/// type's block.
inline void dequantize_row(uint32_t type, const unsigned char* src, int64_t n, float* dst) {
  const GgmlTypeInfo* info = ggml_type_info(type);
  if (info == nullptr) {
    throw std::invalid_argument(detail::concat("dequantize_row: ggml type ",
                                               detail::ggml_type_desc(type), " is not supported"));
  }
  if (n < 0 || n % info->block != 0) {
    throw std::invalid_argument(detail::concat("dequantize_row: n = ", n,
                                               ", expected a multiple of the ", info->name,
                                               " block size ", info->block));
  }
  info->dequantize(src, n, dst);
}

}  // namespace kvattn
