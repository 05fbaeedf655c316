#pragma once
/// \file
/// How a KV cache stores its rows: the storage type, chosen by the cache's
/// second template parameter, and its conversion to and from the compute
/// type T (float or double), in which all arithmetic happens.
///
///   T (float, double)   exact copy (double -> float rounds to nearest)
///   Eigen::bfloat16     8-bit mantissa, float's range; round to nearest even
///   Eigen::half         11-bit mantissa; finite values beyond +-65504 saturate
///                       to +-65504 instead of becoming infinite
///   std::int8_t         per row (one token of one KV head) a scale
///                       s = max|x| / 127 and q = round(x / s) in [-127, 127];
///                       read back as q * s (a row of zeros has s = 0)
///
/// Reduced storage halves (16-bit) or quarters (int8) the bytes a decode step
/// reads, at the cost of the rounding above.

#include <kvattn/types.hpp>

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace kvattn {

/// Properties of a cache storage type.
template <class Storage>
struct StorageTraits {
  static constexpr bool is_quantized = std::is_same<Storage, std::int8_t>::value;
  static_assert(
      std::is_same<Storage, float>::value || std::is_same<Storage, double>::value ||
          std::is_same<Storage, Eigen::half>::value ||
          std::is_same<Storage, Eigen::bfloat16>::value || is_quantized,
      "KVCache storage must be float, double, Eigen::half, Eigen::bfloat16 or std::int8_t");
  static const char* name() {
    if (std::is_same<Storage, float>::value) return "f32";
    if (std::is_same<Storage, double>::value) return "f64";
    if (std::is_same<Storage, Eigen::half>::value) return "f16";
    if (std::is_same<Storage, Eigen::bfloat16>::value) return "bf16";
    return "int8";
  }
};

namespace detail {

/// Encodes one row src[0..n) of T into dst; *scale receives the row's scale
/// (int8 only; untouched otherwise).
template <class T, class Storage>
void encode_row(const T* src, Eigen::Index n, Storage* dst, T* scale) {
  using In = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;
  using Out = Eigen::Map<Eigen::Array<Storage, Eigen::Dynamic, 1>>;
  const In x(src, n);
  Out y(dst, n);
  if constexpr (std::is_same<Storage, std::int8_t>::value) {
    if (!x.allFinite()) {  // NaN policy: the whole row reads back as NaN (0 * NaN)
      y.setZero();
      *scale = std::numeric_limits<T>::quiet_NaN();
      return;
    }
    const T amax = x.abs().maxCoeff();
    const T s = amax / T(127);
    const T inv = s > T(0) ? T(1) / s : T(0);
    y = (x * inv).round().cwiseMax(T(-127)).cwiseMin(T(127)).template cast<std::int8_t>();
    *scale = s;
  } else if constexpr (std::is_same<Storage, Eigen::half>::value) {
    constexpr T kMax = T(65504);
    for (Eigen::Index i = 0; i < n; ++i) {  // NaN and infinities pass through unchanged
      const T v = src[i];
      y[i] = static_cast<Eigen::half>(v > kMax && v <= std::numeric_limits<T>::max()     ? kMax
                                      : v < -kMax && v >= -std::numeric_limits<T>::max() ? -kMax
                                                                                         : v);
    }
    (void)scale;
  } else {
    y = x.template cast<Storage>();
    (void)scale;
  }
}

/// dst[i] = float(src[i]) * scale for i < n (scale used by int8 only):
/// scalar loops the compiler vectorizes; the decode kernels widen in
/// registers instead (kernels/).
inline void widen(const Eigen::bfloat16* src, Eigen::Index n, float* dst, float) {
  for (Eigen::Index i = 0; i < n; ++i) {  // bfloat16 is the top half of a float
    std::uint16_t bits;
    std::memcpy(&bits, src + i, 2);
    const std::uint32_t wide = std::uint32_t(bits) << 16;
    std::memcpy(dst + i, &wide, 4);
  }
}

inline void widen(const Eigen::half* src, Eigen::Index n, float* dst, float) {
  for (Eigen::Index i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

inline void widen(const std::int8_t* src, Eigen::Index n, float* dst, float scale) {
  for (Eigen::Index i = 0; i < n; ++i) dst[i] = float(src[i]) * scale;
}

/// Decodes rows [0, rows) of `cols` values each into dst (row-major, T);
/// scales[r] is row r's scale (int8 only).
template <class T, class Storage>
void decode_rows(const Storage* src, const T* scales, Eigen::Index rows, Eigen::Index cols,
                 T* dst) {
  if constexpr (std::is_same<T, float>::value && !std::is_same<Storage, float>::value &&
                !std::is_same<Storage, double>::value) {
    for (Eigen::Index r = 0; r < rows; ++r) {
      widen(src + r * cols, cols, dst + r * cols, scales != nullptr ? scales[r] : 1.0f);
    }
  } else {
    using In =
        Eigen::Map<const Eigen::Array<Storage, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
    using Out = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
    Out y(dst, rows, cols);
    const In x(src, rows, cols);
    if constexpr (std::is_same<Storage, std::int8_t>::value) {
      for (Eigen::Index r = 0; r < rows; ++r) y.row(r) = x.row(r).template cast<T>() * scales[r];
    } else {
      y = x.template cast<T>();
      (void)scales;
    }
  }
}

}  // namespace detail
}  // namespace kvattn
