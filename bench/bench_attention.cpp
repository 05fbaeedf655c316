// Attention-only decode: one query token (32 query heads, head_dim 128)
// against a cache of `ctx` positions, by cache storage type and thread count,
// beside the plain Eigen baseline and the machine's read bandwidth, all in
// one run.
//
//   BM_ReadBandwidth/threads            sum over a 1 GiB buffer (the yardstick)
//   BM_Attention<S>/kv/ctx/threads      kvattn::ops::attend_decode, cache storing S
//   BM_AttentionBaseline/kv/ctx/threads plain Eigen, per query head: s = K q,
//                                       softmax, o = V^T s; OpenMP over heads
//
// kv = 8 is GQA (4 query heads per KV head), 1 is MQA, 32 is MHA. Before every
// timed step the last-level cache is flushed (a 64 MiB buffer is read), as in
// real decoding where the other layers evict this one; the step alone is timed.
// Counters: bytes/s (cached K and V bytes read per step) and of_read_bw, that
// rate as a fraction of the bandwidth measured with the same thread count.
#include <kvattn/kvattn.hpp>

#include <benchmark/benchmark.h>

#include "bench_common.hpp"

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <thread>
#include <tuple>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

using kvattn::RowMatrix;
using kvattn::Vector;
using Clock = std::chrono::steady_clock;

constexpr Eigen::Index kHeads = 32, kHeadDim = 128;

using bench::BM_ReadBandwidth;
using bench::flush_caches;
using bench::set_threads;

inline void fill(float* p, Eigen::Index n, uint64_t seed) { bench::fill(p, n, 1.0f, seed); }

// Random keys and values, [ctx x kv*head_dim], shared by every storage type.
const RowMatrix<float>& source(Eigen::Index kv, Eigen::Index ctx, bool values) {
  static std::map<std::tuple<Eigen::Index, Eigen::Index, bool>, RowMatrix<float>> m;
  RowMatrix<float>& r = m[{kv, ctx, values}];
  if (r.size() == 0) {
    r.resize(ctx, kv * kHeadDim);
    fill(r.data(), r.size(), uint64_t(kv * 7 + ctx + values));
  }
  return r;
}

template <class Storage>
kvattn::KVCache<float, Storage>& cache(Eigen::Index kv, Eigen::Index ctx) {
  static std::map<std::pair<Eigen::Index, Eigen::Index>,
                  std::unique_ptr<kvattn::KVCache<float, Storage>>>
      m;
  auto& c = m[{kv, ctx}];
  if (!c) {
    c = std::make_unique<kvattn::KVCache<float, Storage>>(kv, kHeadDim, ctx);
    c->append(source(kv, ctx, false), source(kv, ctx, true));
  }
  return *c;
}

// seconds: the summed time of the timed steps.
void report(benchmark::State& state, double bytes_per_step, int threads, double seconds) {
  const double bytes = bytes_per_step * double(state.iterations());
  state.SetBytesProcessed(int64_t(bytes));
  state.SetItemsProcessed(state.iterations());
  if (bench::read_bandwidth(threads) > 0 && seconds > 0) {
    state.counters["of_read_bw"] = bytes / seconds / bench::read_bandwidth(threads);
  }
  state.counters["bytes_per_step"] = bytes_per_step;
}

template <class Storage>
void BM_Attention(benchmark::State& state) {
  const Eigen::Index kv = state.range(0), ctx = state.range(1);
  const int threads = int(state.range(2));
  set_threads(threads);
  const kvattn::KVCache<float, Storage>& c = cache<Storage>(kv, ctx);
  Vector<float> q(kHeads * kHeadDim), out(kHeads * kHeadDim);
  fill(q.data(), q.size(), 3);
  kvattn::ops::AttentionScratch<float> scratch;
  scratch.reserve_decode(ctx, kv, kHeads / kv, kHeadDim);
  double seconds = 0;
  for (auto _ : state) {
    flush_caches();
    const auto t0 = Clock::now();
    kvattn::ops::attend_decode<float>(q.data(), c, ctx, kHeads, 0.088f, out.data(), scratch);
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    state.SetIterationTime(dt);
    seconds += dt;
    benchmark::DoNotOptimize(out.data());
  }
  report(state, double(ctx * c.bytes_per_token()), threads, seconds);
}

void BM_AttentionBaseline(benchmark::State& state) {
  const Eigen::Index kv = state.range(0), ctx = state.range(1);
  const int threads = int(state.range(2));
  set_threads(threads);
  // Per-head blocks [ctx x head_dim], copied out of the interleaved source.
  std::vector<RowMatrix<float>> K, V;
  for (Eigen::Index h = 0; h < kv; ++h) {
    K.push_back(source(kv, ctx, false).middleCols(h * kHeadDim, kHeadDim));
    V.push_back(source(kv, ctx, true).middleCols(h * kHeadDim, kHeadDim));
  }
  Vector<float> q(kHeads * kHeadDim), out(kHeads * kHeadDim);
  fill(q.data(), q.size(), 3);
  RowMatrix<float> scores(kHeads, ctx);
  const Eigen::Index g = kHeads / kv;
  double seconds = 0;
  for (auto _ : state) {
    flush_caches();
    const auto t0 = Clock::now();
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
    for (Eigen::Index h = 0; h < kHeads; ++h) {
      Eigen::Ref<Vector<float>> s = scores.row(h).transpose();
      s.noalias() = K[size_t(h / g)] * q.segment(h * kHeadDim, kHeadDim);
      s *= 0.088f;
      kvattn::softmax_inplace<float>(s);
      out.segment(h * kHeadDim, kHeadDim).noalias() = V[size_t(h / g)].transpose() * s;
    }
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    state.SetIterationTime(dt);
    seconds += dt;
    benchmark::DoNotOptimize(out.data());
  }
  report(state, double(ctx * 2 * kv * kHeadDim * Eigen::Index(sizeof(float))), threads, seconds);
}

void gqa_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"kv", "ctx", "threads"});
  for (int64_t ctx : {512, 4096, 16384, 65536}) {
    for (int64_t t : {1, 2}) b->Args({8, ctx, t});
  }
  for (int64_t kv : {1, 32}) {
    for (int64_t t : {1, 2}) b->Args({kv, 4096, t});
  }
  b->UseManualTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_ReadBandwidth)->Apply(bench::read_bandwidth_args);
BENCHMARK(BM_AttentionBaseline)->Apply(gqa_args);
BENCHMARK_TEMPLATE(BM_Attention, float)->Apply(gqa_args);
BENCHMARK_TEMPLATE(BM_Attention, Eigen::bfloat16)->Apply(gqa_args);
BENCHMARK_TEMPLATE(BM_Attention, Eigen::half)->Apply(gqa_args);
BENCHMARK_TEMPLATE(BM_Attention, std::int8_t)->Apply(gqa_args);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("kernel_target", kvattn::kernel_target());  // KVATTN_TARGET picks it
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
