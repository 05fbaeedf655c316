#pragma once
/// \file
/// The kernel targets compiled into this program and the choice among them.
///
/// Every target's kernels are compiled into the program whatever its flags
/// (function-level target attributes), and the best one the running CPU
/// supports is chosen once, at first use: a build with plain -O2 runs the
/// AVX-512 kernels on an AVX-512 machine. `kernel_target()` names the
/// active one; the environment variable KVATTN_TARGET forces one the CPU
/// supports (an error naming the supported ones otherwise). With
/// KVATTN_NO_DISPATCH defined (CMake option KVATTN_DISPATCH=OFF) only the
/// portable target and the one the compiler's own flags enable are built.
///
/// Compiling the kernels once: every translation unit that includes this
/// header compiles every target's kernels, tens of seconds each at -O3. With
/// KVATTN_PRECOMPILED_KERNELS defined in every translation unit of a
/// program, they are only declared here, and the one unit that also defines
/// KVATTN_KERNELS_IMPLEMENTATION before including this header compiles them
/// (CMake: link kvattn::kernels, a static library made of that one unit).

#include <kvattn/kernels/types.hpp>

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(KVATTN_PRECOMPILED_KERNELS) && !defined(KVATTN_KERNELS_IMPLEMENTATION)
#define KVATTN_KERNELS_DECLARED_ONLY 1
#else
#include <kvattn/kernels/cpu.hpp>
#include <kvattn/kernels/portable.hpp>

#if defined(KVATTN_CPU_X86) && \
    (!defined(KVATTN_NO_DISPATCH) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)))
#include <kvattn/kernels/x86_avx2.hpp>
#define KVATTN_HAVE_TARGET_AVX2 1
#endif
#if defined(KVATTN_CPU_X86) &&                                                         \
    (!defined(KVATTN_NO_DISPATCH) || (defined(__AVX512F__) && defined(__AVX512BW__) && \
                                      defined(__AVX512VL__) && defined(__AVX512DQ__)))
#include <kvattn/kernels/x86_avx512.hpp>
#define KVATTN_HAVE_TARGET_AVX512 1
#endif

#if defined(KVATTN_CPU_AARCH64)
#include <kvattn/kernels/arm_neon.hpp>
#define KVATTN_HAVE_TARGET_NEON 1
#endif
#endif  // KVATTN_KERNELS_DECLARED_ONLY

namespace kvattn::kernels {

/// A kernel target compiled into this program.
struct Target {
  const char* name;
  bool (*supported)();  ///< whether the running CPU can execute it
  const KernelTable& (*table)();
};

#if defined(KVATTN_KERNELS_DECLARED_ONLY)

/// Every target compiled in, best first; the last is always "portable".
/// Defined in the unit that compiles the kernels.
const std::vector<Target>& compiled_targets();

#else

// External in the unit that compiles the kernels, inline everywhere else.
#if defined(KVATTN_PRECOMPILED_KERNELS)
#define KVATTN_KERNELS_LINKAGE
#else
#define KVATTN_KERNELS_LINKAGE inline
#endif

namespace detail {

inline bool has_avx2() {
  const CpuFeatures& f = cpu_features();
  return f.avx2 && f.fma && f.f16c;
}
inline bool has_avx512() {
  const CpuFeatures& f = cpu_features();
  return has_avx2() && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
}
inline bool has_avx512vnni() { return has_avx512() && cpu_features().avx512vnni; }

}  // namespace detail

/// Every target compiled in, best first; the last is always "portable".
KVATTN_KERNELS_LINKAGE const std::vector<Target>& compiled_targets() {
  static const std::vector<Target> targets = [] {
    std::vector<Target> t;
#if defined(KVATTN_HAVE_TARGET_AVX512)
#if !defined(KVATTN_NO_DISPATCH) || defined(__AVX512VNNI__)
    t.push_back({avx512vnni::kName, &detail::has_avx512vnni, &avx512vnni::table});
#endif
    t.push_back({avx512::kName, &detail::has_avx512, &avx512::table});
#endif
#if defined(KVATTN_HAVE_TARGET_AVX2)
    t.push_back({avx2::kName, &detail::has_avx2, &avx2::table});
#endif
#if defined(KVATTN_HAVE_TARGET_NEON)
    t.push_back({neon::kName, [] { return true; }, &neon::table});
#endif
    t.push_back({portable::kName, [] { return true; }, &portable::table});
    return t;
  }();
  return targets;
}

#undef KVATTN_KERNELS_LINKAGE
#endif  // KVATTN_KERNELS_DECLARED_ONLY

/// Names of the compiled targets the running CPU supports, best first.
inline std::vector<std::string> supported_targets() {
  std::vector<std::string> names;
  for (const Target& t : compiled_targets()) {
    if (t.supported()) names.push_back(t.name);
  }
  return names;
}

/// The table of a compiled, supported target, or nullptr.
inline const KernelTable* find_target(const std::string& name) {
  for (const Target& t : compiled_targets()) {
    if (name == t.name && t.supported()) return &t.table();
  }
  return nullptr;
}

namespace detail {

inline std::string joined(const std::vector<std::string>& names) {
  std::string s;
  for (const std::string& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

inline const KernelTable& choose_target() {
  const char* forced = std::getenv("KVATTN_TARGET");
  if (forced != nullptr && *forced != '\0') {
    if (const KernelTable* t = find_target(forced)) return *t;
    throw std::invalid_argument(
        std::string("KVATTN_TARGET = ") + forced +
        ", expected a kernel target this CPU supports: " + joined(supported_targets()));
  }
  for (const Target& t : compiled_targets()) {
    if (t.supported()) return t.table();
  }
  return compiled_targets().back().table();  // portable
}

inline std::atomic<const KernelTable*>& active_slot() {
  static std::atomic<const KernelTable*> slot{nullptr};
  return slot;
}

}  // namespace detail

/// The active kernels, chosen at first use. Throws std::invalid_argument if
/// KVATTN_TARGET names no supported target.
inline const KernelTable& active() {
  const KernelTable* t = detail::active_slot().load(std::memory_order_acquire);
  if (t == nullptr) {
    static const KernelTable& chosen = detail::choose_target();  // thread-safe, once
    t = &chosen;
    const KernelTable* expected = nullptr;
    detail::active_slot().compare_exchange_strong(expected, t, std::memory_order_acq_rel);
    t = detail::active_slot().load(std::memory_order_acquire);
  }
  return *t;
}

/// Makes `name` the active target (for tests and benchmarks that compare
/// targets in one run; not meant to be called while kernels run on other
/// threads). Throws std::invalid_argument naming the supported targets if
/// the CPU does not support it or it is not compiled in.
inline void set_active(const std::string& name) {
  const KernelTable* t = find_target(name);
  if (t == nullptr) {
    throw std::invalid_argument(
        "kvattn::kernels::set_active: target = " + name +
        ", expected one this CPU supports: " + detail::joined(supported_targets()));
  }
  detail::active_slot().store(t, std::memory_order_release);
}

}  // namespace kvattn::kernels

namespace kvattn {

/// Name of the kernel target this program runs: "portable", "avx2", ...
inline const char* kernel_target() { return kernels::active().name; }

}  // namespace kvattn
