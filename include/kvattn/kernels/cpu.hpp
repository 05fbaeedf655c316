#pragma once
/// \file
/// What the running CPU can execute, read once: the instruction-set
/// extensions the kernel targets need (x86: CPUID and XGETBV, so that the OS
/// saves the vector registers too; aarch64 Linux: the auxiliary vector's
/// hardware capabilities).

#include <cstdint>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define KVATTN_CPU_X86 1
#elif defined(__aarch64__)
#define KVATTN_CPU_AARCH64 1
#if defined(__linux__)
#include <sys/auxv.h>
#endif
#endif

namespace kvattn::kernels {

/// Extensions a kernel target may require.
struct CpuFeatures {
  // x86
  bool avx2 = false, fma = false, f16c = false;  // with OS support for the YMM state
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;  // and ZMM state
  bool avx512bf16 = false, avx512vnni = false;
  // aarch64
  bool neon = false;     // Advanced SIMD (always on aarch64)
  bool fp16 = false;     // half-precision arithmetic (FEAT_FP16)
  bool dotprod = false;  // SDOT/UDOT (FEAT_DotProd)
  bool bf16 = false;     // BFDOT/BFMMLA (FEAT_BF16)
};

namespace detail {

#if defined(KVATTN_CPU_X86)
inline std::uint64_t xgetbv0() {
  std::uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (std::uint64_t(hi) << 32) | lo;
}
#endif

inline CpuFeatures read_cpu_features() {
  CpuFeatures f;
#if defined(KVATTN_CPU_X86)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
  f.fma = (c >> 12) & 1;
  f.f16c = (c >> 29) & 1;
  if (!osxsave || !avx) return f;
  const std::uint64_t xcr0 = xgetbv0();
  const bool ymm = (xcr0 & 0x6) == 0x6;    // SSE and AVX state
  const bool zmm = (xcr0 & 0xE6) == 0xE6;  // and opmask, ZMM0-15 upper halves, ZMM16-31
  if (!ymm) return f;
  unsigned max_leaf = 0;
  __get_cpuid(0, &max_leaf, &b, &c, &d);
  if (max_leaf < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = (b >> 5) & 1;
  if (zmm) {
    f.avx512f = (b >> 16) & 1;
    f.avx512dq = (b >> 17) & 1;
    f.avx512bw = (b >> 30) & 1;
    f.avx512vl = (b >> 31) & 1;
    f.avx512vnni = (c >> 11) & 1;
    unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
    __cpuid_count(7, 1, a1, b1, c1, d1);
    f.avx512bf16 = (a1 >> 5) & 1;
  }
#elif defined(KVATTN_CPU_AARCH64)
  f.neon = true;
#if defined(__linux__)
  const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
  f.fp16 = (hw & (1ul << 10)) != 0;     // HWCAP_ASIMDHP
  f.dotprod = (hw & (1ul << 20)) != 0;  // HWCAP_ASIMDDP
  f.bf16 = (hw2 & (1ul << 14)) != 0;    // HWCAP2_BF16
#endif
#endif
  return f;
}

}  // namespace detail

/// The running CPU's features, read at first use.
inline const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detail::read_cpu_features();
  return f;
}

}  // namespace kvattn::kernels
