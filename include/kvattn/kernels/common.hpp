#pragma once
/// \file
/// What every target header needs before it opens its namespace: the
/// includes of generic_inl.hpp (which includes nothing itself) and the
/// macros the kernels use.

#include <kvattn/kernels/types.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__GNUC__) || defined(__clang__)
/// Kernel helpers are inlined into their loops whatever the optimization
/// level (-O2 does not inline these templates as -O3 does, and the register
/// tiles only exist once they are).
#define KVATTN_KERNEL_INLINE inline __attribute__((always_inline))
/// Fixed-trip loops over a register tile are unrolled completely so that the
/// tile lives in registers (GCC otherwise keeps a stack copy of the array).
#define KVATTN_UNROLL _Pragma("GCC unroll 16")
#else
#define KVATTN_KERNEL_INLINE inline
#define KVATTN_UNROLL
#endif

namespace kvattn::kernels {

/// The float an IEEE half's bits stand for (exact).
inline float half_bits_to_float(std::uint16_t bits) {
  return static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(bits));
}

}  // namespace kvattn::kernels
