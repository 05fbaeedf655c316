// Every kernel target this CPU runs, on the same shapes, in one run:
//
//   BM_ReadBandwidth/threads                  the bandwidth yardstick
//   BM_Decode/<target>/<storage>/threads      decode attention alone, GQA 32/8, head_dim
//                                             128, 16384 positions, caches flushed
//   BM_Gemv/<target>/<weights>/<shape>/threads  one-token product W x: d_model 4096
//                                             ([6144 x 4096], the QKV of GQA 32/8) and the
//                                             TinyLlama FFN ([5632 x 2048]), flushed
//
// The target is switched with kvattn::kernels::set_active between
// benchmarks; with --benchmark_enable_random_interleaving the targets'
// repetitions interleave, which is how to compare them on a noisy host.
// Counters: bytes/s and of_read_bw (the fraction of the bandwidth measured
// with the same thread count).
#include <kvattn/kvattn.hpp>

#include <benchmark/benchmark.h>

#include "bench_common.hpp"

#include <chrono>
#include <map>
#include <memory>
#include <string>

namespace {

using Index = Eigen::Index;
using Clock = std::chrono::steady_clock;
constexpr Index kHeads = 32, kKv = 8, kHeadDim = 128, kCtx = 16384;

template <class S>
kvattn::KVCache<float, S>& cache() {
  static std::unique_ptr<kvattn::KVCache<float, S>> c;
  if (!c) {
    c = std::make_unique<kvattn::KVCache<float, S>>(kKv, kHeadDim, kCtx);
    kvattn::RowMatrix<float> rows(kCtx, kKv * kHeadDim);
    bench::fill(rows.data(), rows.size(), 1.0f, 11);
    c->append(rows, rows);
  }
  return *c;
}

void finish(benchmark::State& state, int threads, double bytes_per_step, double seconds) {
  const double bytes = bytes_per_step * double(state.iterations());
  state.SetBytesProcessed(int64_t(bytes));
  if (bench::read_bandwidth(threads) > 0 && seconds > 0) {
    state.counters["of_read_bw"] = bytes / seconds / bench::read_bandwidth(threads);
  }
}

template <class S>
void BM_Decode(benchmark::State& state, std::string target, int threads) {
  kvattn::kernels::set_active(target);
  bench::set_threads(threads);
  const kvattn::KVCache<float, S>& c = cache<S>();
  kvattn::Vector<float> q(kHeads * kHeadDim), out(kHeads * kHeadDim);
  bench::fill(q.data(), q.size(), 1.0f, 3);
  kvattn::ops::AttentionScratch<float> scratch;
  scratch.reserve_decode(kCtx, kKv, kHeads / kKv, kHeadDim);
  double seconds = 0;
  for (auto _ : state) {
    bench::flush_caches();
    const auto t0 = Clock::now();
    kvattn::ops::attend_decode<float>(q.data(), c, kCtx, kHeads, 0.088f, out.data(), scratch);
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    state.SetIterationTime(dt);
    seconds += dt;
    benchmark::DoNotOptimize(out.data());
  }
  finish(state, threads, double(c.bytes_per_token()) * kCtx, seconds);
}

template <class W>
const kvattn::RowMatrix<W>& weights(Index rows, Index cols) {
  static std::map<std::pair<Index, Index>, kvattn::RowMatrix<W>> m;
  kvattn::RowMatrix<W>& w = m[{rows, cols}];
  if (w.size() == 0) {
    kvattn::RowMatrix<float> f(rows, cols);
    bench::fill(f.data(), f.size(), 0.05f, uint64_t(rows + cols));
    w = f.template cast<W>();
  }
  return w;
}

template <class W>
void BM_Gemv(benchmark::State& state, std::string target, int threads, Index rows, Index cols) {
  kvattn::kernels::set_active(target);
  bench::set_threads(threads);
  const kvattn::RowMatrix<W>& w = weights<W>(rows, cols);
  kvattn::Vector<float> x(cols), y(rows);
  bench::fill(x.data(), x.size(), 1.0f, 5);
  double seconds = 0;
  for (auto _ : state) {
    bench::flush_caches();
    const auto t0 = Clock::now();
    kvattn::ops::gemv<float, W>(w, x.data(), y.data());
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    state.SetIterationTime(dt);
    seconds += dt;
    benchmark::DoNotOptimize(y.data());
  }
  finish(state, threads, double(rows * cols) * sizeof(W), seconds);
}

template <class S>
void register_decode(const std::string& target, const char* storage) {
  for (int threads : {1, 2}) {
    benchmark::RegisterBenchmark(
        ("BM_Decode/" + target + "/" + storage + "/threads:" + std::to_string(threads)).c_str(),
        BM_Decode<S>, target, threads)
        ->Unit(benchmark::kMillisecond)
        ->UseManualTime();
  }
}

template <class W>
void register_gemv(const std::string& target, const char* type) {
  for (const auto& [name, rows, cols] : std::vector<std::tuple<const char*, Index, Index>>{
           {"qkv4096", 6144, 4096}, {"ffn2048", 5632, 2048}}) {
    for (int threads : {1, 2}) {
      benchmark::RegisterBenchmark(
          ("BM_Gemv/" + target + "/" + type + "/" + name + "/threads:" + std::to_string(threads))
              .c_str(),
          BM_Gemv<W>, target, threads, rows, cols)
          ->Unit(benchmark::kMillisecond)
          ->UseManualTime();
    }
  }
}

}  // namespace

BENCHMARK(bench::BM_ReadBandwidth)->Apply(bench::read_bandwidth_args);

int main(int argc, char** argv) {
  for (const std::string& t : kvattn::kernels::supported_targets()) {
    register_decode<float>(t, "f32");
    register_decode<Eigen::bfloat16>(t, "bf16");
    register_decode<Eigen::half>(t, "f16");
    register_decode<std::int8_t>(t, "int8");
    register_gemv<float>(t, "f32");
    register_gemv<Eigen::bfloat16>(t, "bf16");
    register_gemv<Eigen::half>(t, "f16");
  }
  benchmark::Initialize(&argc, argv);
  benchmark::AddCustomContext("default_kernel_target", kvattn::kernel_target());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
