// One step of each bench_flags case. This file is compiled into one shared
// module per set of flags (bench/CMakeLists.txt); each module holds its own
// copy of the library, kernels included, with every symbol hidden except
// the four below, so the copies cannot replace one another at load time.
// The caches and weights are the driver's (the same types, built from the
// same headers): every module reads the same memory.
#include <kvattn/kvattn.hpp>
#include <kvattn/ops/quant_linear.hpp>

#include "flags_cases.hpp"

#include <memory>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

using Index = Eigen::Index;
using kvattn::RowMatrix;

struct Step {
  virtual ~Step() = default;
  virtual void run() = 0;
  kvattn::Vector<float> out;
};

template <class S>
struct Decode : Step {
  const kvattn::KVCache<float, S>& cache;
  const float* q;
  kvattn::ops::AttentionScratch<float> scratch;
  Decode(const void* c, const float* query)
      : cache(*static_cast<const kvattn::KVCache<float, S>*>(c)), q(query) {
    scratch.reserve_decode(flags::kCtx, flags::kKv, flags::kHeads / flags::kKv, flags::kHeadDim);
    out.resize(flags::kHeads * flags::kHeadDim);
  }
  void run() override {
    kvattn::ops::attend_decode<float>(q, cache, flags::kCtx, flags::kHeads, 0.088f, out.data(),
                                      scratch);
  }
};

template <class W>
struct Gemv : Step {
  Eigen::Map<const RowMatrix<W>> w;
  const float* x;
  Gemv(const void* weights, const float* in_x)
      : w(static_cast<const W*>(weights), flags::kGemvRows, flags::kGemvCols), x(in_x) {
    out.resize(flags::kGemvRows);
  }
  void run() override { kvattn::ops::gemv<float, W>(w, x, out.data()); }
};

struct Quant : Step {
  kvattn::QuantMatrixView w;
  const float* x;
  std::vector<kvattn::kernels::BlockQ8_0> scratch;
  Quant(kvattn::QuantType t, const std::uint8_t* blocks, const float* in_x)
      : w{t, blocks, flags::kQuantRows, flags::kQuantCols}, x(in_x) {
    out.resize(flags::kQuantRows);
  }
  void run() override { kvattn::quant_gemv(w, x, out.data(), scratch); }
};

std::unique_ptr<Step> steps[flags::kCases];

}  // namespace

extern "C" {

__attribute__((visibility("default"))) const char* kvattn_flags_target() {
  return kvattn::kernel_target();
}

__attribute__((visibility("default"))) void kvattn_flags_prepare(const flags::Inputs* in) {
  steps[flags::kDecodeF32] = std::make_unique<Decode<float>>(in->caches[0], in->query);
  steps[flags::kDecodeBf16] = std::make_unique<Decode<Eigen::bfloat16>>(in->caches[1], in->query);
  steps[flags::kDecodeF16] = std::make_unique<Decode<Eigen::half>>(in->caches[2], in->query);
  steps[flags::kDecodeInt8] = std::make_unique<Decode<std::int8_t>>(in->caches[3], in->query);
  steps[flags::kGemvBf16] = std::make_unique<Gemv<Eigen::bfloat16>>(in->bf16_weights, in->x);
  steps[flags::kGemvF16] = std::make_unique<Gemv<Eigen::half>>(in->f16_weights, in->x);
  steps[flags::kQ8_0] = std::make_unique<Quant>(kvattn::QuantType::Q8_0, in->q8_0, in->x);
  steps[flags::kQ4_0] = std::make_unique<Quant>(kvattn::QuantType::Q4_0, in->q4_0, in->x);
}

__attribute__((visibility("default"))) void kvattn_flags_run(int c, int threads) {
#if defined(_OPENMP)
  omp_set_num_threads(threads);
#else
  (void)threads;
#endif
  steps[c]->run();
}

__attribute__((visibility("default"))) const float* kvattn_flags_output(int c, long* n) {
  *n = long(steps[c]->out.size());
  return steps[c]->out.data();
}

}  // extern "C"
