// Tensor-parallel decode: the attention layer step at d_model 4096 (GQA
// 32/8, head_dim 128) split over the ranks of an MPI job by heads
// (dist::ShardedAttention), against the same step in one process.
//
//   mpirun -np 2 ./build/bench/bench_tp        # 2 ranks, 1 thread each (OMP_NUM_THREADS=1)
//   OMP_NUM_THREADS=1 ./build/bench/bench_tp   # one process, 1 thread
//   OMP_NUM_THREADS=2 ./build/bench/bench_tp   # one process, 2 threads
//
// For 4096 and 16384 cached positions: the median step time over 15 steps
// (the last-level cache flushed before each), tokens/s, the weight and cache
// bytes each rank reads per step, and the median time in the all-reduce's
// exchange. Rank 0 prints one line per shape.
#include <kvattn/dist/sharded_attention.hpp>

#include "bench_common.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>

// Bytes/s one rank reads while every rank reads its own 512 MiB at once
// (median of 5), with this rank's thread count: the yardstick for a step.
double rank_read_bandwidth(kvattn::dist::Communicator& comm) {
  const Eigen::Index n = Eigen::Index(128) << 20;
  kvattn::detail::LargeBuffer<float> buffer{n};
  std::fill(buffer.data(), buffer.data() + n, 1.0f);
  std::vector<double> rates;
  for (int rep = 0; rep < 5; ++rep) {
    comm.barrier();
    const auto t0 = std::chrono::steady_clock::now();
    float sum = 0;
#pragma omp parallel for reduction(+ : sum)
    for (int part = 0; part < 8; ++part) {
      sum += Eigen::Map<const Eigen::ArrayXf>(buffer.data() + part * (n / 8), n / 8).sum();
    }
    benchmark::DoNotOptimize(sum);
    rates.push_back(double(n) * 4 /
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  kvattn::dist::Communicator comm;
  using Index = Eigen::Index;
  const kvattn::AttentionConfig c{4096, 32, 8, 128, kvattn::RopeStyle::Interleaved};
  kvattn::AttentionWeights<float> w;
  w.wq.resize(c.q_dim(), c.d_model);
  w.wk.resize(c.kv_dim(), c.d_model);
  w.wv.resize(c.kv_dim(), c.d_model);
  w.wo.resize(c.d_model, c.q_dim());
  for (auto* m : {&w.wq, &w.wk, &w.wv, &w.wo})
    bench::fill(m->data(), m->size(), 0.02f, uint64_t(m->rows()));
  kvattn::dist::ShardedAttention<float> layer(comm, c, w);
  w = kvattn::AttentionWeights<float>();  // keep only the slice
  const int threads = kvattn::detail::max_threads();
  const double bandwidth = rank_read_bandwidth(comm);
  if (comm.rank() == 0) {
    std::printf(
        "kernel target %s, %d rank(s), %d thread(s) per rank; read bandwidth per rank %.1f GB/s "
        "(every rank reading at once)\n",
        kvattn::kernel_target(), comm.size(), threads, bandwidth / 1e9);
  }
  for (Index ctx : {4096, 16384}) {
    auto cache = layer.make_cache(ctx + 1);
    kvattn::RowMatrix<float> rows(ctx, cache.kv_dim());
    bench::fill(rows.data(), rows.size(), 1.0f, uint64_t(ctx));
    cache.append(rows, rows);
    kvattn::Vector<float> x(c.d_model), y(c.d_model);
    bench::fill(x.data(), x.size(), 1.0f, 3);
    kvattn::AttentionWorkspace<float> ws;
    std::vector<double> step, exchange;
    for (int i = 0; i < 16; ++i) {
      bench::flush_caches();
      comm.barrier();
      const double before = comm.collective_seconds();
      const auto t0 = std::chrono::steady_clock::now();
      layer.forward(Eigen::Map<const kvattn::RowMatrix<float>>(x.data(), 1, c.d_model), cache,
                    Eigen::Map<kvattn::RowMatrix<float>>(y.data(), 1, c.d_model), ws);
      const double dt =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (i > 0) {  // the first step grows the workspace
        step.push_back(dt);
        exchange.push_back(comm.collective_seconds() - before);
      }
      cache.truncate(ctx);
    }
    std::sort(step.begin(), step.end());
    std::sort(exchange.begin(), exchange.end());
    const double med = step[step.size() / 2], med_x = exchange[exchange.size() / 2];
    const double weights = double(layer.local().qkv().stacked_weight().size() +
                                  layer.local().output().weight().size()) *
                           4;
    const double kv = double(cache.bytes_per_token()) * double(ctx);
    double sum_steps = med;  // over ranks, for their mean
    comm.allreduce_sum(&sum_steps, 1);
    if (comm.rank() == 0) {
      std::printf(
          "ctx %5ld: step %.3f ms (median of %zu), %.0f tokens/s, per rank %.1f MB weights + %.1f "
          "MB "
          "cache (%.2f of the read bandwidth), all-reduce exchange %.3f ms, mean step over "
          "ranks %.3f ms\n",
          long(ctx), med * 1e3, step.size(), 1.0 / med, weights / 1e6, kv / 1e6,
          (weights + kv) / med / bandwidth, med_x * 1e3, sum_steps / comm.size() * 1e3);
    }
  }
  MPI_Finalize();
  return 0;
}
