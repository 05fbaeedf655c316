// Google Highway against kvattn's own per-target vocabulary, on the decode
// kernels (fp32 and bf16 caches): the same algorithm -- per (KV head,
// chunk of 256 positions): scores in tiles of 4 rows x 4 query heads,
// softmax numerators, weighted sum of values in tiles of 4 heads x 4
// vectors -- written with Highway ops (static dispatch for this build's
// flags) and timed beside kvattn's kernel for the same instruction set on
// the same cache, in one run. GQA 32/8, head_dim 128, one thread; the cache
// in L2 (512 positions) and from memory (16384 positions, flushed).
//
// Built only where Debian's libhwy-dev is installed; used to choose the
// kernel vocabulary (docs/kernels.md), not part of the library.
#include <kvattn/kvattn.hpp>

#include <benchmark/benchmark.h>
#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

#include "bench_common.hpp"

#include <chrono>
#include <map>
#include <memory>

namespace hn = hwy::HWY_NAMESPACE;

namespace {

using Index = Eigen::Index;
using Clock = std::chrono::steady_clock;
constexpr Index kKv = 8, kGroup = 4, kHeadDim = 128, kChunk = 256;

// Rows of type S widened to float: a full vector of lanes from p.
template <class S>
HWY_INLINE hn::Vec<hn::ScalableTag<float>> load_row(const S* p) {
  const hn::ScalableTag<float> d;
  if constexpr (std::is_same<S, float>::value) {
    return hn::LoadU(d, p);
  } else {
    const hn::Rebind<hwy::bfloat16_t, decltype(d)> dbf;
    return hn::PromoteTo(d, hn::LoadU(dbf, reinterpret_cast<const hwy::bfloat16_t*>(p)));
  }
}

// One item, Highway ops: q [4 x 128], k, v [n x 128] as stored (n % 4 == 0);
// scores [n x 4] scratch; acc [4 x 128], m, l [4] written.
template <class S>
void attend_chunk_hwy(const float* q, const S* k, const S* v, Index n, float scale, float* scores,
                      float* acc, float* m, float* l) {
  using D = hn::ScalableTag<float>;
  using Vec = hn::Vec<D>;
  const D d;
  const Index lanes = Index(hn::Lanes(d));
  for (Index j = 0; j < n; j += 4) {  // scores: 4 rows x 4 heads
    Vec a[16];
    for (Vec& x : a) x = hn::Zero(d);
    for (Index x = 0; x < kHeadDim; x += lanes) {
      Vec kv[4], qv[4];
      for (int r = 0; r < 4; ++r) kv[r] = load_row(k + (j + r) * kHeadDim + x);
      for (int h = 0; h < 4; ++h) qv[h] = hn::LoadU(d, q + h * kHeadDim + x);
      for (int r = 0; r < 4; ++r) {
        for (int h = 0; h < 4; ++h) a[r * 4 + h] = hn::MulAdd(kv[r], qv[h], a[r * 4 + h]);
      }
    }
    for (int i = 0; i < 16; ++i)
      scores[j * kGroup + i] = scale * hn::GetLane(hn::SumOfLanes(d, a[i]));
  }
  alignas(64) float buf[64];
  for (Index r = 0; r < kGroup; ++r) {  // softmax numerators
    float mx = scores[r];
    for (Index j = 1; j < n; ++j) mx = std::max(mx, scores[j * kGroup + r]);
    m[r] = mx;
  }
  for (Index i = 0; i < lanes; ++i) buf[i] = m[i % kGroup];
  const Vec shift = hn::LoadU(d, buf);
  Vec sum = hn::Zero(d);
  for (Index i = 0; i < n * kGroup; i += lanes) {
    const Vec e = hn::Exp(d, hn::Sub(hn::LoadU(d, scores + i), shift));
    hn::StoreU(e, d, scores + i);
    sum = hn::Add(sum, e);
  }
  hn::StoreU(sum, d, buf);
  for (Index r = 0; r < kGroup; ++r) {
    l[r] = 0;
    for (Index i = r; i < lanes; i += kGroup) l[r] += buf[i];
  }
  for (Index x = 0; x < kHeadDim; x += 4 * lanes) {  // values: 4 heads x 4 vectors, all rows
    Vec o[16];
    for (Vec& y : o) y = hn::Zero(d);
    for (Index j = 0; j < n; ++j) {
      Vec xv[4];
      for (int e = 0; e < 4; ++e) xv[e] = load_row(v + j * kHeadDim + x + e * lanes);
      for (int h = 0; h < 4; ++h) {
        const Vec w = hn::Set(d, scores[j * kGroup + h]);
        for (int e = 0; e < 4; ++e) o[h * 4 + e] = hn::MulAdd(w, xv[e], o[h * 4 + e]);
      }
    }
    for (int h = 0; h < 4; ++h) {
      for (int e = 0; e < 4; ++e) hn::StoreU(o[h * 4 + e], d, acc + h * kHeadDim + x + e * lanes);
    }
  }
}

template <class S>
struct Data {
  std::unique_ptr<kvattn::KVCache<float, S>> cache;
  std::vector<float> q;
};
template <class S>
Data<S>& data(Index ctx) {
  static std::map<Index, Data<S>> m;
  Data<S>& d = m[ctx];
  if (!d.cache) {
    d.cache = std::make_unique<kvattn::KVCache<float, S>>(kKv, kHeadDim, ctx);
    kvattn::RowMatrix<float> rows(ctx, kKv * kHeadDim);
    bench::fill(rows.data(), rows.size(), 1.0f, uint64_t(ctx));
    d.cache->append(rows, rows);
    d.q.resize(size_t(kKv * kGroup * kHeadDim));
    bench::fill(d.q.data(), Index(d.q.size()), 1.0f, 3);
  }
  return d;
}

// Every (KV head, chunk) item of one decode step, by Highway (Hwy) or by
// kvattn's kernel for this build's instruction set (the target a plain run
// would choose: avx512 / avx2).
template <class S, bool Hwy>
void BM_DecodeItems(benchmark::State& state) {
  const Index ctx = state.range(0);
  const bool flush = ctx > 4096;
  Data<S>& dt = data<S>(ctx);
  std::vector<float> scores(size_t(kChunk * kGroup)),
      partial(size_t(kKv * (ctx / kChunk) * kGroup * (kHeadDim + 2)));
  std::vector<std::max_align_t> scratch(
      size_t(kvattn::kernels::chunk_scratch_bytes(kGroup, kHeadDim)) / sizeof(std::max_align_t) +
      8);
  void* aligned =
      reinterpret_cast<void*>((reinterpret_cast<std::uintptr_t>(scratch.data()) + 63) / 64 * 64);
  double seconds = 0;
  for (auto _ : state) {
    if (flush) bench::flush_caches();
    const auto t0 = Clock::now();
    for (Index h = 0; h < kKv; ++h) {
      for (Index c = 0; c < ctx / kChunk; ++c) {
        float* out = partial.data() + (h * (ctx / kChunk) + c) * kGroup * (kHeadDim + 2);
        const S* k = dt.cache->key_data(h) + c * kChunk * kHeadDim;
        const S* v = dt.cache->value_data(h) + c * kChunk * kHeadDim;
        if constexpr (Hwy) {
          attend_chunk_hwy<S>(dt.q.data() + h * kGroup * kHeadDim, k, v, kChunk, 0.088f,
                              scores.data(), out, out + kGroup * kHeadDim,
                              out + kGroup * kHeadDim + kGroup);
        } else {
          kvattn::kernels::KVSpan<S> span{k, v, nullptr, nullptr, kChunk, kHeadDim};
          kvattn::kernels::ChunkTask<S> t;
          t.q = dt.q.data() + h * kGroup * kHeadDim;
          t.g = kGroup;
          t.hd = kHeadDim;
          t.spans = &span;
          t.n_spans = 1;
          t.n = kChunk;
          t.scale = 0.088f;
          t.acc = out;
          t.m = out + kGroup * kHeadDim;
          t.l = out + kGroup * kHeadDim + kGroup;
          t.scratch = aligned;
          kvattn::kernels::active().attend(t);
        }
      }
    }
    const double dtime = std::chrono::duration<double>(Clock::now() - t0).count();
    state.SetIterationTime(dtime);
    seconds += dtime;
    benchmark::DoNotOptimize(partial.data());
  }
  state.counters["ns_per_position_and_head"] =
      seconds / double(state.iterations()) / double(ctx * kKv) * 1e9;
}

void args(benchmark::internal::Benchmark* b) {
  b->ArgName("ctx")->Arg(512)->Arg(16384)->Unit(benchmark::kMillisecond)->UseManualTime();
}

}  // namespace

BENCHMARK(BM_DecodeItems<float, true>)->Name("BM_HighwayF32")->Apply(args);
BENCHMARK(BM_DecodeItems<float, false>)->Name("BM_KvattnF32")->Apply(args);
BENCHMARK(BM_DecodeItems<Eigen::bfloat16, true>)->Name("BM_HighwayBf16")->Apply(args);
BENCHMARK(BM_DecodeItems<Eigen::bfloat16, false>)->Name("BM_KvattnBf16")->Apply(args);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::AddCustomContext("highway_target", hwy::TargetName(HWY_TARGET));
  benchmark::AddCustomContext("kvattn_target", kvattn::kernel_target());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
