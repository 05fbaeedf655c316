// Batched decode over the paged pool: one attention layer step (d_model
// 4096, GQA 32/8, head_dim 128: QKV projection, RoPE, append, attention,
// output projection) for B sequences at once, against the machine's limits
// measured in the same run.
//
//   BM_ReadBandwidth/threads       sum over a 1 GiB buffer (the bandwidth yardstick)
//   BM_FmaRate/threads             multiply-adds/s of Eigen's matrix product on
//                                  in-cache matrices (the compute yardstick)
//   BM_PagedStep<S>/B/ctx/threads  MultiHeadAttention::step_batch, B sequences of
//                                  ctx cached positions each, cache storing S
//   BM_ContiguousStep<S>/ctx/threads  MultiHeadAttention::step on a KVCache (B = 1)
//   BM_Attention{Contiguous,Paged}/ctx/threads  the attention part alone, B = 1
//
// The last-level cache is flushed before every timed step. Counters:
// tokens/s (B per step); bytes/s with the weights counted once per step plus
// every sequence's cache; roofline = the lower bound on the step's time,
// max(bytes / bandwidth, multiply-adds / FMA rate), as a fraction of the
// measured time (1 = at the roofline).
#include <kvattn/kvattn.hpp>

#include <benchmark/benchmark.h>

#include "bench_common.hpp"

#include <chrono>
#include <map>
#include <memory>
#include <thread>
#include <tuple>

namespace {

using kvattn::RowMatrix;
using kvattn::SeqId;
using Clock = std::chrono::steady_clock;
using Index = Eigen::Index;

constexpr Index kModel = 4096, kHeads = 32, kKv = 8, kHeadDim = 128, kMaxBatch = 64;
const kvattn::AttentionConfig kConfig{kModel, kHeads, kKv, kHeadDim,
                                      kvattn::RopeStyle::Interleaved};

std::map<int, double>& fma_rates() {
  static std::map<int, double> m;
  return m;
}

// Multiply-adds/s of Eigen's matrix product on in-cache matrices (256 x 256
// times 256 x 256, 768 KB, in L2), one product per thread on `threads`
// threads: what a tuned GEMM reaches on this machine, independent of kvattn.
void BM_FmaRate(benchmark::State& state) {
  const int threads = int(state.range(0));
  constexpr Index kN = 256;
  const size_t n = static_cast<size_t>(threads);
  std::vector<Eigen::MatrixXf> a(n), b(n), c(n);
  for (size_t t = 0; t < n; ++t) {
    a[t] = Eigen::MatrixXf(kN, kN);
    b[t] = Eigen::MatrixXf(kN, kN);
    c[t] = Eigen::MatrixXf(kN, kN);
    bench::fill(a[t].data(), a[t].size(), 0.1f, uint64_t(t));
    bench::fill(b[t].data(), b[t].size(), 0.1f, uint64_t(t + 9));
  }
  Eigen::setNbThreads(1);
  constexpr int kRepeat = 50;
  const auto start = Clock::now();
  for (auto _ : state) {
    std::vector<std::thread> pool;
    for (size_t t = 0; t < n; ++t) {
      pool.emplace_back([&, t] {
        for (int r = 0; r < kRepeat; ++r) c[t].noalias() = a[t] * b[t];
      });
    }
    for (std::thread& th : pool) th.join();
    benchmark::DoNotOptimize(c[0].data());
  }
  Eigen::setNbThreads(0);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const double fmas = double(kN * kN * kN) * kRepeat * threads * double(state.iterations());
  fma_rates()[threads] = fmas / seconds;
  state.counters["fma_per_s"] = fmas / seconds;
}

// The layer's weights, shared by every benchmark.
kvattn::MultiHeadAttention<float>& layer() {
  static kvattn::MultiHeadAttention<float> l = [] {
    kvattn::AttentionWeights<float> w;
    w.wq.resize(kConfig.q_dim(), kModel);
    w.wk.resize(kConfig.kv_dim(), kModel);
    w.wv.resize(kConfig.kv_dim(), kModel);
    w.wo.resize(kModel, kConfig.q_dim());
    bench::fill(w.wq.data(), w.wq.size(), 0.02f, 1);
    bench::fill(w.wk.data(), w.wk.size(), 0.02f, 2);
    bench::fill(w.wv.data(), w.wv.size(), 0.02f, 3);
    bench::fill(w.wo.data(), w.wo.size(), 0.02f, 4);
    return kvattn::MultiHeadAttention<float>(kConfig, std::move(w));
  }();
  return l;
}

const RowMatrix<float>& random_rows(Index ctx) {  // [ctx x kv_dim], keys and values
  static std::map<Index, RowMatrix<float>> m;
  RowMatrix<float>& r = m[ctx];
  if (r.size() == 0) {
    r.resize(ctx, kConfig.kv_dim());
    bench::fill(r.data(), r.size(), 1.0f, uint64_t(ctx));
  }
  return r;
}

// `count` sequences of ctx positions in one pool of `block`-position blocks
// (filled once per shape).
template <class S>
struct Pool {
  std::unique_ptr<kvattn::PagedKVCache<float, S>> cache;
  std::vector<SeqId> seqs;
};
template <class S>
Pool<S>& pool(Index ctx, Index count = kMaxBatch, Index block = 16) {
  static std::map<std::tuple<Index, Index, Index>, Pool<S>> m;
  Pool<S>& p = m[{ctx, count, block}];
  if (!p.cache) {
    const Index blocks = count * (ctx / block + 1);
    p.cache = std::make_unique<kvattn::PagedKVCache<float, S>>(
        kvattn::PagedCacheConfig{1, kKv, kHeadDim, block, blocks});
    const RowMatrix<float>& rows = random_rows(ctx);
    for (Index b = 0; b < count; ++b) {
      p.seqs.push_back(p.cache->add_sequence());
      p.cache->layer(0).append(p.seqs.back(), rows, rows);
    }
  }
  return p;
}

double weight_bytes() {
  return double(kModel * (kConfig.q_dim() + 2 * kConfig.kv_dim()) + kModel * kConfig.q_dim()) * 4;
}
double cache_bytes_per_position(double storage_bytes) {
  return 2.0 * kKv * kHeadDim * storage_bytes;
}

// seconds: the summed time of the timed steps.
void report(benchmark::State& state, int threads, Index batch, Index ctx, double storage_bytes,
            double seconds, bool weights) {
  const double bytes = (weights ? weight_bytes() : 0.0) +
                       double(batch * ctx) * cache_bytes_per_position(storage_bytes);
  const double fmas =
      (weights ? double(batch) * kModel * (kConfig.q_dim() + 2 * kConfig.kv_dim() + kConfig.q_dim())
               : 0.0) +
      double(batch * ctx) * kHeads * kHeadDim * 2;
  const double steps = double(state.iterations());
  state.SetBytesProcessed(int64_t(bytes * steps));
  state.counters["tokens_per_s"] = double(batch) * steps / seconds;
  const double bw = bench::read_bandwidth(threads);
  const double rate = fma_rates().count(threads) ? fma_rates()[threads] : 0.0;
  if (bw > 0 && rate > 0) {
    const double bound = std::max(bytes / bw, fmas / rate);
    state.counters["roofline"] = bound * steps / seconds;
    state.counters["bound_by_memory"] = bytes / bw >= fmas / rate ? 1 : 0;
  }
}

template <class S>
void BM_PagedStep(benchmark::State& state) {
  const Index batch = state.range(0), ctx = state.range(1);
  const int threads = int(state.range(2));
  bench::set_threads(threads);
  Pool<S>& p = pool<S>(ctx);
  const std::vector<SeqId> seqs(p.seqs.begin(), p.seqs.begin() + batch);
  RowMatrix<float> x(batch, kModel), y(batch, kModel);
  bench::fill(x.data(), x.size(), 1.0f, 7);
  kvattn::AttentionWorkspace<float> ws;
  double seconds = 0;
  for (auto _ : state) {
    bench::flush_caches();
    const auto t0 = Clock::now();
    layer().step_batch(x, p.cache->layer(0), seqs, y, ws);
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    state.SetIterationTime(dt);
    seconds += dt;
    for (SeqId s : seqs) p.cache->truncate(s, ctx);  // back to ctx positions
    benchmark::DoNotOptimize(y.data());
  }
  report(state, threads, batch, ctx, double(sizeof(S)), seconds, true);
}

template <class S>
void BM_ContiguousStep(benchmark::State& state) {
  const Index ctx = state.range(0);
  const int threads = int(state.range(1));
  bench::set_threads(threads);
  static std::map<Index, std::unique_ptr<kvattn::KVCache<float, S>>> caches;
  auto& cache = caches[ctx];
  if (!cache) {
    cache = std::make_unique<kvattn::KVCache<float, S>>(kKv, kHeadDim, ctx + 1);
    cache->append(random_rows(ctx), random_rows(ctx));
  }
  kvattn::Vector<float> x(kModel), y(kModel);
  bench::fill(x.data(), x.size(), 1.0f, 7);
  kvattn::AttentionWorkspace<float> ws;
  double seconds = 0;
  for (auto _ : state) {
    bench::flush_caches();
    const auto t0 = Clock::now();
    layer().step(x, *cache, y, ws);
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    state.SetIterationTime(dt);
    seconds += dt;
    cache->truncate(ctx);
    benchmark::DoNotOptimize(y.data());
  }
  report(state, threads, 1, ctx, double(sizeof(S)), seconds, true);
}

// The attention part alone, B = 1: the same kernels over one contiguous run
// per chunk (KVCache) or one run per block (the pool).
template <bool Paged>
void BM_Attention(benchmark::State& state) {
  const Index ctx = state.range(0), block = Paged ? state.range(2) : 16;
  const int threads = int(state.range(1));
  bench::set_threads(threads);
  static std::unique_ptr<kvattn::KVCache<float>> flat;
  if (!flat || flat->size() != ctx) {
    flat = std::make_unique<kvattn::KVCache<float>>(kKv, kHeadDim, ctx);
    flat->append(random_rows(ctx), random_rows(ctx));
  }
  Pool<float>& p = pool<float>(ctx, 1, block);
  kvattn::Vector<float> q(kConfig.q_dim()), out(kConfig.q_dim());
  bench::fill(q.data(), q.size(), 1.0f, 5);
  kvattn::ops::AttentionScratch<float> scratch;
  scratch.reserve_decode(ctx, kKv, kHeads / kKv, kHeadDim);
  const auto view = p.cache->layer(0).view(p.seqs[0], ctx);
  double seconds = 0;
  for (auto _ : state) {
    bench::flush_caches();
    const auto t0 = Clock::now();
    if constexpr (Paged) {
      kvattn::ops::attend_decode<float>(q.data(), view, ctx, kHeads, 0.088f, out.data(), scratch);
    } else {
      kvattn::ops::attend_decode<float>(q.data(), *flat, ctx, kHeads, 0.088f, out.data(), scratch);
    }
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    state.SetIterationTime(dt);
    seconds += dt;
    benchmark::DoNotOptimize(out.data());
  }
  report(state, threads, 1, ctx, 4.0, seconds, false);
}

void fma_args(benchmark::internal::Benchmark* b) {
  b->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
}
void step_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "ctx", "threads"});
  for (Index ctx : {1024, 4096}) {
    for (Index batch : {1, 4, 16, 64}) {
      for (int threads : {1, 2}) b->Args({batch, ctx, threads});
    }
  }
  b->Unit(benchmark::kMillisecond)->UseManualTime();
}
void contiguous_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"ctx", "threads"});
  for (Index ctx : {1024, 4096}) {
    for (int threads : {1, 2}) b->Args({ctx, threads});
  }
  b->Unit(benchmark::kMillisecond)->UseManualTime();
}
void flat_attention_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"ctx", "threads"})->Args({16384, 1})->Args({16384, 2});
  b->Unit(benchmark::kMillisecond)->UseManualTime();
}
void paged_attention_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"ctx", "threads", "block"});
  for (Index block : {16, 64}) b->Args({16384, 1, block})->Args({16384, 2, block});
  b->Unit(benchmark::kMillisecond)->UseManualTime();
}

}  // namespace

BENCHMARK(bench::BM_ReadBandwidth)->Apply(bench::read_bandwidth_args);
BENCHMARK(BM_FmaRate)->Apply(fma_args);
BENCHMARK(BM_Attention<false>)->Name("BM_AttentionContiguous")->Apply(flat_attention_args);
BENCHMARK(BM_Attention<true>)->Name("BM_AttentionPaged")->Apply(paged_attention_args);
BENCHMARK(BM_ContiguousStep<float>)->Apply(contiguous_args);
BENCHMARK(BM_PagedStep<float>)->Apply(step_args);
BENCHMARK(BM_ContiguousStep<Eigen::bfloat16>)->Apply(contiguous_args);
BENCHMARK(BM_PagedStep<Eigen::bfloat16>)->Apply(step_args);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::AddCustomContext("kernel_target", kvattn::kernel_target());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
