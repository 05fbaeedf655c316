// Single-step decode benchmarks: one attention layer, one new token, against a
// KV cache already holding `ctx` positions.
//
//   BM_ReadBandwidth/threads        sum over a 1 GiB buffer: the machine's read bandwidth,
//                                   measured in this run, so every byte rate below can be
//                                   read as a fraction of it ("of_read_bw" counter)
//   BM_LayerStep/shape/ctx/threads  kvattn: fused QKV projection, RoPE, append, grouped
//                                   decode attention, output projection
//   BM_LayerStepBf16/...            the same with a bfloat16 KV cache
//   BM_LayerStepBf16Weights/...     bfloat16 weights (Wq, Wk, Wv, Wo) and a bfloat16 KV cache
//   BM_LayerStepBaseline/shape/ctx  plain Eigen: three projections, per query head
//                                   scores = K q, softmax, V^T p (no grouping), Wo
//   BM_Attention/shape/ctx          the attention part alone (one query vs the cache)
//   BM_AttentionBaseline/shape/ctx  the plain per-head Eigen attention alone
//
// Shapes: 0 = d_model 4096, 32 heads, 8 KV heads, head_dim 128 (Llama-3-8B-like),
//         1 = d_model 512, 8 heads, 8 KV heads, head_dim 64.
// bytes/step = weight bytes + cached K and V bytes read (attention alone: K and V only).
// threads: OpenMP threads (kvattn's decode attention and matrix-vector products;
// the baseline's loop over heads); the fraction of_read_bw uses the bandwidth
// measured with the same number of threads.
#include <kvattn/kvattn.hpp>

#include <benchmark/benchmark.h>

#include "bench_common.hpp"

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

using bench::BM_ReadBandwidth;
using bench::fill;
using bench::set_threads;

using kvattn::RowMatrix;
using kvattn::Vector;

constexpr Eigen::Index kMaxContext = 16384;

kvattn::AttentionConfig shape(int64_t id) {
  return id == 0 ? kvattn::AttentionConfig{4096, 32, 8, 128, kvattn::RopeStyle::Interleaved}
                 : kvattn::AttentionConfig{512, 8, 8, 64, kvattn::RopeStyle::Interleaved};
}

RowMatrix<float> random(Eigen::Index rows, Eigen::Index cols, float scale, uint64_t seed) {
  RowMatrix<float> m(rows, cols);
  fill(m.data(), m.size(), scale, seed);
  return m;
}

// The plain Eigen layer: separate matrices, per-head cache blocks, no grouping.
struct Baseline {
  kvattn::AttentionConfig c;
  RowMatrix<float> wq, wk, wv, wo;
  std::vector<RowMatrix<float>> k, v;  // [n_kv_heads] of [capacity x head_dim]
  Eigen::Index size = 0;
  kvattn::RotaryEmbedding<float> rope;
  Vector<float> q, kn, vn, heads;
  RowMatrix<float> scores;  // [n_heads x capacity]

  Baseline(const kvattn::AttentionConfig& config, const kvattn::AttentionWeights<float>& w,
           const kvattn::KVCache<float>& filled)
      : c(config),
        wq(w.wq),
        wk(w.wk),
        wv(w.wv),
        wo(w.wo),
        size(filled.size()),
        rope(config.head_dim, config.rope, config.rope_theta),
        q(c.q_dim()),
        kn(c.kv_dim()),
        vn(c.kv_dim()),
        heads(c.q_dim()),
        scores(c.n_heads, filled.capacity()) {
    for (Eigen::Index h = 0; h < c.n_kv_heads; ++h) {
      k.emplace_back(filled.capacity(), c.head_dim);
      v.emplace_back(filled.capacity(), c.head_dim);
      k.back().topRows(size) = filled.keys(h);
      v.back().topRows(size) = filled.values(h);
    }
  }

  void attend(Eigen::Index n) {
    const Eigen::Index hd = c.head_dim, g = c.group_size();
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
    for (Eigen::Index h = 0; h < c.n_heads; ++h) {
      const RowMatrix<float>& kh = k[size_t(h / g)];
      const RowMatrix<float>& vh = v[size_t(h / g)];
      Eigen::Ref<Vector<float>> s = scores.row(h).head(n).transpose();
      s.noalias() = kh.topRows(n) * q.segment(h * hd, hd);
      s *= float(c.scale());
      kvattn::softmax_inplace<float>(s);
      heads.segment(h * hd, hd).noalias() = vh.topRows(n).transpose() * s;
    }
  }

  void step(const Vector<float>& x, Vector<float>& y) {
    q.noalias() = wq * x;
    kn.noalias() = wk * x;
    vn.noalias() = wv * x;
    rope.apply_token(q, size);
    rope.apply_token(kn, size);
    for (Eigen::Index h = 0; h < c.n_kv_heads; ++h) {
      k[size_t(h)].row(size) = kn.segment(h * c.head_dim, c.head_dim).transpose();
      v[size_t(h)].row(size) = vn.segment(h * c.head_dim, c.head_dim).transpose();
    }
    ++size;
    attend(size);
    y.noalias() = wo * heads;
  }
};

struct Fixture {
  kvattn::AttentionConfig c;
  std::unique_ptr<kvattn::MultiHeadAttention<float>> layer;
  std::unique_ptr<kvattn::MultiHeadAttention<float, Eigen::bfloat16>> layer_bf16;  // same weights
  RowMatrix<float> k_fill, v_fill;                // [kMaxContext x kv_dim] random keys and values
  std::unique_ptr<kvattn::KVCache<float>> cache;  // capacity kMaxContext + 1
  std::unique_ptr<kvattn::KVCache<float, Eigen::bfloat16>> cache_bf16;
  std::unique_ptr<Baseline> baseline;
  kvattn::AttentionWorkspace<float> ws;
  Vector<float> x, y;

  explicit Fixture(int64_t id) : c(shape(id)), x(c.d_model), y(c.d_model) {
    const float s = 1.0f / std::sqrt(float(c.d_model));
    kvattn::AttentionWeights<float> w{random(c.q_dim(), c.d_model, s, 1),
                                      random(c.kv_dim(), c.d_model, s, 2),
                                      random(c.kv_dim(), c.d_model, s, 3),
                                      random(c.d_model, c.q_dim(), s, 4),
                                      {},
                                      {},
                                      {},
                                      {}};
    layer = std::make_unique<kvattn::MultiHeadAttention<float>>(c, w);
    layer_bf16 = std::make_unique<kvattn::MultiHeadAttention<float, Eigen::bfloat16>>(c, w);
    k_fill = random(kMaxContext, c.kv_dim(), 1.0f, 10);
    v_fill = random(kMaxContext, c.kv_dim(), 1.0f, 20);
    cache = std::make_unique<kvattn::KVCache<float>>(layer->make_cache(kMaxContext + 1));
    set_context(kMaxContext);
    baseline = std::make_unique<Baseline>(c, w, *cache);
    fill(x.data(), x.size(), 1.0f, 5);
  }

  // Makes the cache hold exactly ctx positions, filled directly with append.
  void set_context(Eigen::Index ctx) {
    cache->clear();
    cache->append(k_fill.topRows(ctx), v_fill.topRows(ctx));
  }
  kvattn::KVCache<float, Eigen::bfloat16>& bf16_context(Eigen::Index ctx) {
    if (!cache_bf16) {
      cache_bf16 = std::make_unique<kvattn::KVCache<float, Eigen::bfloat16>>(
          layer->make_cache<Eigen::bfloat16>(kMaxContext + 1));
    }
    cache_bf16->clear();
    cache_bf16->append(k_fill.topRows(ctx), v_fill.topRows(ctx));
    return *cache_bf16;
  }

  double weight_bytes(std::size_t bytes_per_weight = sizeof(float)) const {
    return double((c.q_dim() + 2 * c.kv_dim()) * c.d_model + c.d_model * c.q_dim()) *
           double(bytes_per_weight);
  }
  double cache_bytes(Eigen::Index ctx) const {
    return double(2 * c.n_kv_heads * ctx * c.head_dim) * sizeof(float);
  }
};

Fixture& fixture(int64_t id) {
  static std::map<int64_t, std::unique_ptr<Fixture>> fixtures;
  auto& f = fixtures[id];
  if (!f) f = std::make_unique<Fixture>(id);
  return *f;
}

// Wall time of a benchmark's timed loop, for the bandwidth fraction.
struct Stopwatch {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
};

// tokens/s, bytes/s, and bytes/s as a fraction of the read bandwidth measured
// by BM_ReadBandwidth in this run with the same thread count (when it ran).
void report(benchmark::State& state, double bytes_per_step, double seconds) {
  const double bytes = bytes_per_step * double(state.iterations());
  const int threads = int(state.range(2));
  state.SetItemsProcessed(state.iterations());  // tokens
  state.SetBytesProcessed(int64_t(bytes));
  if (bench::read_bandwidth(threads) > 0 && seconds > 0) {
    state.counters["of_read_bw"] = bytes / seconds / bench::read_bandwidth(threads);
  }
}

void BM_LayerStep(benchmark::State& state) {
  Fixture& f = fixture(state.range(0));
  const Eigen::Index ctx = state.range(1);
  set_threads(int(state.range(2)));
  f.set_context(ctx);
  const Stopwatch watch;
  for (auto _ : state) {
    f.layer->step(f.x, *f.cache, f.y, f.ws);
    benchmark::DoNotOptimize(f.y.data());
    f.cache->truncate(ctx);  // keep the context length fixed
  }
  report(state, f.weight_bytes() + f.cache_bytes(ctx + 1), watch.seconds());
}

// A layer step of `layer` (fp32 or bf16 weights) against a bfloat16 cache.
template <class Layer>
void layer_step_bf16_cache(benchmark::State& state, Fixture& f, const Layer& layer) {
  const Eigen::Index ctx = state.range(1);
  set_threads(int(state.range(2)));
  kvattn::KVCache<float, Eigen::bfloat16>& cache = f.bf16_context(ctx);
  const Stopwatch watch;
  for (auto _ : state) {
    layer.step(f.x, cache, f.y, f.ws);
    benchmark::DoNotOptimize(f.y.data());
    cache.truncate(ctx);
  }
  report(state,
         f.weight_bytes(sizeof(typename Layer::WeightType)) +
             double((ctx + 1) * cache.bytes_per_token()),
         watch.seconds());
}

void BM_LayerStepBf16(benchmark::State& state) {
  Fixture& f = fixture(state.range(0));
  layer_step_bf16_cache(state, f, *f.layer);
}

void BM_LayerStepBf16Weights(benchmark::State& state) {
  Fixture& f = fixture(state.range(0));
  layer_step_bf16_cache(state, f, *f.layer_bf16);
}

void BM_LayerStepBaseline(benchmark::State& state) {
  Fixture& f = fixture(state.range(0));
  const Eigen::Index ctx = state.range(1);
  set_threads(int(state.range(2)));
  const Stopwatch watch;
  for (auto _ : state) {
    f.baseline->size = ctx;
    f.baseline->step(f.x, f.y);
    benchmark::DoNotOptimize(f.y.data());
  }
  report(state, f.weight_bytes() + f.cache_bytes(ctx + 1), watch.seconds());
}

void BM_Attention(benchmark::State& state) {
  Fixture& f = fixture(state.range(0));
  const Eigen::Index ctx = state.range(1);
  set_threads(int(state.range(2)));
  f.set_context(ctx);
  const RowMatrix<float> q = random(1, f.c.q_dim(), 1.0f, 7);
  RowMatrix<float> out(1, f.c.q_dim());
  kvattn::ops::AttentionScratch<float> scratch;
  scratch.reserve_decode(ctx, f.c.n_kv_heads, f.c.group_size(), f.c.head_dim);
  const Stopwatch watch;
  for (auto _ : state) {
    kvattn::ops::attend_causal<float>(q, *f.cache, ctx - 1, f.c.n_heads, float(f.c.scale()), out,
                                      scratch);
    benchmark::DoNotOptimize(out.data());
  }
  report(state, f.cache_bytes(ctx), watch.seconds());
}

void BM_AttentionBaseline(benchmark::State& state) {
  Fixture& f = fixture(state.range(0));
  const Eigen::Index ctx = state.range(1);
  set_threads(int(state.range(2)));
  fill(f.baseline->q.data(), f.baseline->q.size(), 1.0f, 7);
  const Stopwatch watch;
  for (auto _ : state) {
    f.baseline->attend(ctx);
    benchmark::DoNotOptimize(f.baseline->heads.data());
  }
  report(state, f.cache_bytes(ctx), watch.seconds());
}

void decode_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"shape", "ctx", "threads"});
  for (int64_t s : {1, 0}) {
    for (int64_t ctx : {512, 4096, 16384}) {
      for (int64_t t : {1, 2}) b->Args({s, ctx, t});
    }
  }
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

BENCHMARK(BM_ReadBandwidth)->Apply(bench::read_bandwidth_args);
BENCHMARK(BM_LayerStep)->Apply(decode_args);
BENCHMARK(BM_LayerStepBf16)->Apply(decode_args);
BENCHMARK(BM_LayerStepBf16Weights)->Apply(decode_args);
BENCHMARK(BM_LayerStepBaseline)->Apply(decode_args);
BENCHMARK(BM_Attention)->Apply(decode_args);
BENCHMARK(BM_AttentionBaseline)->Apply(decode_args);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
#if defined(_OPENMP)
  benchmark::AddCustomContext("kvattn_threads", "OpenMP, set per benchmark (threads:N)");
#else
  benchmark::AddCustomContext("kvattn_threads", "1 (built without OpenMP)");
#endif
  benchmark::AddCustomContext("kernel_target", kvattn::kernel_target());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
