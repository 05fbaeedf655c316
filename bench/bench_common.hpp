#pragma once
// Shared by the benchmarks: thread count, fast random fill, cache flush, and
// the read-bandwidth yardstick every decode figure is compared with.
#include <benchmark/benchmark.h>
#include <Eigen/Core>
#include <kvattn/detail/large_buffer.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <thread>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace bench {

inline void set_threads(int n) {
#if defined(_OPENMP)
  omp_set_num_threads(n);
#else
  (void)n;
#endif
}

// Deterministic values in [-scale, scale): setup stays cheap for 100+ MB.
inline void fill(float* p, Eigen::Index n, float scale, uint64_t seed) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (Eigen::Index i = 0; i < n; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    p[i] = scale * (float(uint32_t(s >> 40)) / float(1 << 24) * 2.0f - 1.0f);
  }
}

// rows x cols weights in random blocks of 32 (block_bytes 34: Q8_0, 18:
// Q4_0): a half scale in [-0.02, 0.02] first, then codes anywhere in their range.
inline std::vector<std::uint8_t> quant_blocks(Eigen::Index block_bytes, Eigen::Index rows,
                                              Eigen::Index cols, uint64_t seed) {
  std::vector<std::uint8_t> w(size_t(rows * cols / 32 * block_bytes));
  uint64_t r = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < w.size(); ++i) {
    r = r * 6364136223846793005ull + 1442695040888963407ull;
    w[i] = std::uint8_t(r >> 56);
  }
  for (size_t b = 0; b < w.size(); b += size_t(block_bytes)) {
    const Eigen::half d(0.02f * (float(w[b + 2]) / 128.0f - 1.0f));
    std::memcpy(&w[b], &d, 2);
  }
  return w;
}

// Evicts the caches: reads 64 MiB.
inline void flush_caches() {
  static std::vector<float> junk(size_t(16) << 20, 1.0f);
  benchmark::DoNotOptimize(
      Eigen::Map<const Eigen::ArrayXf>(junk.data(), Eigen::Index(junk.size())).sum());
}

// The arguments BM_ReadBandwidth is registered with (1 and 2 threads);
// register it before the benchmarks that read read_bandwidth[].
inline void read_bandwidth_args(benchmark::internal::Benchmark* b) {
  b->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
}

// Bytes/s by thread count, measured by BM_ReadBandwidth earlier in this run
// (0 where it was not measured).
inline std::map<int, double>& read_bandwidths() {
  static std::map<int, double> m;
  return m;
}
inline double read_bandwidth(int threads) {
  const auto it = read_bandwidths().find(threads);
  return it == read_bandwidths().end() ? 0.0 : it->second;
}

// Sum over a 1 GiB buffer split between state.range(0) threads. The buffer
// is allocated like the KV cache (huge pages where the OS allows), so the
// yardstick and the decode benchmarks read memory mapped the same way.
inline void BM_ReadBandwidth(benchmark::State& state) {
  const int threads = int(state.range(0));
  const size_t n = (size_t(1) << 30) / sizeof(float);
  static const kvattn::detail::LargeBuffer<float> buffer = [n] {
    kvattn::detail::LargeBuffer<float> b{Eigen::Index(n)};
    std::fill(b.data(), b.data() + n, 1.0f);
    return b;
  }();
  std::vector<float> partial(static_cast<size_t>(threads));
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    std::vector<std::thread> pool;
    const size_t chunk = n / size_t(threads);
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        partial[size_t(t)] =
            Eigen::Map<const Eigen::ArrayXf>(buffer.data() + size_t(t) * chunk, Eigen::Index(chunk))
                .sum();
      });
    }
    for (std::thread& th : pool) th.join();
    benchmark::DoNotOptimize(partial.data());
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double bytes = double(n * sizeof(float)) * double(state.iterations());
  state.SetBytesProcessed(int64_t(bytes));
  if (elapsed > 0) read_bandwidths()[threads] = bytes / elapsed;
}

}  // namespace bench
