#pragma once
// What bench_flags measures, shared by its driver (bench_flags.cpp) and the
// modules it loads (flags_module.cpp, compiled once per set of flags).
#include <cstdint>

namespace flags {

constexpr long kHeads = 32, kKv = 8, kHeadDim = 128, kCtx = 16384;  // GQA 32/8
constexpr long kGemvRows = 6144, kGemvCols = 4096;                  // QKV of d_model 4096
constexpr long kQuantRows = 14336, kQuantCols = 4096;               // an FFN up-projection

enum Case : int {
  kDecodeF32,
  kDecodeBf16,
  kDecodeF16,
  kDecodeInt8,
  kGemvBf16,
  kGemvF16,
  kQ8_0,
  kQ4_0,
  kCases
};
inline const char* const kCaseNames[kCases] = {
    "decode f32",          "decode bf16",        "decode f16",      "decode int8",
    "gemv bf16 6144x4096", "gemv f16 6144x4096", "q8_0 14336x4096", "q4_0 14336x4096"};

// What every module works on, made once by the driver: all modules read the
// same memory, so that only their code differs.
struct Inputs {
  const void* caches[4];     // KVCache<float, S>* for S = float, bfloat16, half, int8_t:
                             // kCtx positions of kKv heads of kHeadDim
  const float* query;        // [kHeads*kHeadDim]
  const void* bf16_weights;  // [kGemvRows x kGemvCols] Eigen::bfloat16, row-major
  const void* f16_weights;   // the same values as Eigen::half
  const std::uint8_t* q8_0;  // [kQuantRows x kQuantCols] in Q8_0 blocks
  const std::uint8_t* q4_0;  // the same shape in Q4_0 blocks
  const float* x;            // [kQuantCols] (kGemvCols == kQuantCols)
};

// The module's entry points (extern "C", looked up with dlsym).
using TargetFn = const char* (*)();
using PrepareFn = void (*)(const Inputs*);
using RunFn = void (*)(int c, int threads);
using OutputFn = const float* (*)(int c, long* n);

}  // namespace flags
