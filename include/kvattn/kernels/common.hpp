#pragma once
/// \file
/// What every target header needs before it opens its namespace: the
/// includes of generic_inl.hpp (which includes only its own parts) and
/// the macros the kernels use.

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

/// In optimized GCC builds the x86 targets' kernels are compiled as at -O3
/// whatever the user's level: at -O2 GCC leaves them measurably slower (its
/// -O3-only loop passes and inlining limits together make the difference;
/// neither alone does; docs/kernels.md). Placed after each target's
/// `#pragma GCC push_options`, so it ends with the target's region; the
/// kernels are reached only through the dispatch table, never inlined into
/// the user's code. Define KVATTN_KERNELS_AT_BUILD_LEVEL to compile them at
/// the build's own level. Clang needs nothing: its -O2 runs the same passes.
/// Without tree PRE: with it GCC 12 copies every accumulator of the int8
/// kernels' loops to another register and back on each step (docs/kernels.md).
#if defined(__GNUC__) && !defined(__clang__) && defined(__OPTIMIZE__) && \
    !defined(__OPTIMIZE_SIZE__) && !defined(KVATTN_KERNELS_AT_BUILD_LEVEL)
#define KVATTN_KERNEL_OPTIMIZE _Pragma("GCC optimize(\"O3\", \"no-tree-pre\")")
#else
#define KVATTN_KERNEL_OPTIMIZE
#endif

namespace kvattn::kernels {

/// The float an IEEE half's bits stand for (exact).
inline float half_bits_to_float(std::uint16_t bits) {
  return static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(bits));
}

}  // namespace kvattn::kernels
