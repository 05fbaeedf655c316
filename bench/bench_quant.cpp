// One token through the seven matrices of a d_model 4096 Llama layer
// (Llama 3 8B shapes: Wq, Wo 4096 x 4096; Wk, Wv 1024 x 4096; W1, W3
// 14336 x 4096; W2 4096 x 14336) with the weights as stored: Q8_0 and Q4_0
// blocks (kvattn::quant_gemv: activations quantized to Q8_0, integer dot
// products), against bf16 and fp32 weights (ops::gemm_few), with 1 and 2
// threads. Caches are flushed before each token. `read_fraction`: weight
// bytes as stored per second over the read bandwidth measured in this run
// with the same thread count.
//
// BM_ModelDecode/weights/threads: one decode step of a whole model through
// Llama<float, Stored>, TinyLlama-shaped (d_model 2048, hidden 5632, GQA
// 32/4, vocab 32000) but 4 layers instead of 22 (setup memory and time),
// random weights encoded by to_stored as f32, f16, bf16, q8_0 or q4_0; the
// cache holds 16-200 positions. items/s = tokens/s; `read_fraction` as above,
// over every matrix a step reads (the classifier included, the embedding row
// not).
//
//   for i in 1 2 3; do ./build/bench/bench_quant; done   # quote the medians of the runs
#include <kvattn/kvattn.hpp>
#include <kvattn/ops/quant_linear.hpp>

#include "bench_common.hpp"

#include <array>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

using Index = Eigen::Index;
struct Shape {
  Index rows, cols;
};
const std::array<Shape, 7> kLayer = {{{4096, 4096},
                                      {1024, 4096},
                                      {1024, 4096},
                                      {4096, 4096},
                                      {14336, 4096},
                                      {14336, 4096},
                                      {4096, 14336}}};
enum Kind { kQ8_0 = 0, kQ4_0 = 1, kBf16 = 2, kF32 = 3 };
const char* const kKindNames[] = {"q8_0", "q4_0", "bf16", "f32"};

template <class W>
kvattn::RowMatrix<W> dense_rows(Shape s, uint64_t seed) {
  kvattn::RowMatrix<float> f(s.rows, s.cols);
  bench::fill(f.data(), f.size(), 0.02f, seed);
  return f.template cast<W>();
}

struct Layer {
  std::vector<std::vector<std::uint8_t>> q8, q4;
  std::vector<kvattn::RowMatrix<Eigen::bfloat16>> bf16;
  std::vector<kvattn::RowMatrix<float>> f32;
};

Layer& layer(Kind kind) {  // each kind built at its first use only
  static Layer l;
  for (size_t m = 0; m < kLayer.size(); ++m) {
    if (kind == kQ8_0 && l.q8.size() <= m)
      l.q8.push_back(bench::quant_blocks(34, kLayer[m].rows, kLayer[m].cols, m));
    if (kind == kQ4_0 && l.q4.size() <= m)
      l.q4.push_back(bench::quant_blocks(18, kLayer[m].rows, kLayer[m].cols, m));
    if (kind == kBf16 && l.bf16.size() <= m)
      l.bf16.push_back(dense_rows<Eigen::bfloat16>(kLayer[m], m));
    if (kind == kF32 && l.f32.size() <= m) l.f32.push_back(dense_rows<float>(kLayer[m], m));
  }
  return l;
}

double layer_bytes(Kind kind) {
  double values = 0;
  for (const Shape& s : kLayer) values += double(s.rows) * double(s.cols);
  const double per_value[] = {34.0 / 32, 18.0 / 32, 2, 4};
  return values * per_value[kind];
}

void BM_LayerProducts(benchmark::State& state) {
  const Kind kind = Kind(state.range(0));
  const int threads = int(state.range(1));
  bench::set_threads(threads);
  Layer& l = layer(kind);
  std::vector<float> x(14336), y(14336);
  bench::fill(x.data(), Index(x.size()), 1.0f, 5);
  std::vector<kvattn::kernels::BlockQ8_0> scratch;
  double seconds = 0;
  for (auto _ : state) {
    state.PauseTiming();
    bench::flush_caches();
    state.ResumeTiming();
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t m = 0; m < kLayer.size(); ++m) {
      const Shape s = kLayer[m];
      if (kind == kQ8_0 || kind == kQ4_0) {
        const kvattn::QuantMatrixView v{
            kind == kQ8_0 ? kvattn::QuantType::Q8_0 : kvattn::QuantType::Q4_0,
            (kind == kQ8_0 ? l.q8[m] : l.q4[m]).data(), s.rows, s.cols};
        kvattn::quant_gemv(v, x.data(), y.data(), scratch);
      } else if (kind == kBf16) {
        kvattn::ops::gemm_few<float, Eigen::bfloat16>(l.bf16[m], x.data(), s.cols, 1, y.data(),
                                                      s.rows);
      } else {
        kvattn::ops::gemm_few<float, float>(l.f32[m], x.data(), s.cols, 1, y.data(), s.rows);
      }
    }
    benchmark::DoNotOptimize(y.data());
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  const double bytes = layer_bytes(kind) * double(state.iterations());
  state.SetBytesProcessed(int64_t(bytes));
  state.SetLabel(kKindNames[kind]);
  if (const double bw = bench::read_bandwidth(threads); bw > 0) {
    state.counters["read_fraction"] = bytes / seconds / bw;
  }
}

void args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"weights", "threads"})->Unit(benchmark::kMillisecond)->UseRealTime();
  for (int threads : {1, 2})
    for (int kind : {kQ8_0, kQ4_0, kBf16, kF32}) b->Args({kind, threads});
}

// The TinyLlama-shaped model of BM_ModelDecode, one per weight type, built at first use.
kvattn::Llama<float, kvattn::Stored>& tiny_model(uint32_t type) {
  static std::map<uint32_t, std::unique_ptr<kvattn::Llama<float, kvattn::Stored>>> models;
  std::unique_ptr<kvattn::Llama<float, kvattn::Stored>>& m = models[type];
  if (m) return *m;
  kvattn::LlamaWeights<float> w;
  kvattn::LlamaConfig& c = w.config;
  c.dim = 2048, c.hidden_dim = 5632, c.n_layers = 4, c.n_heads = 32, c.n_kv_heads = 4;
  c.vocab_size = 32000, c.seq_len = 256;
  uint64_t seed = 100;
  auto random = [&seed](Index rows, Index cols) {
    kvattn::RowMatrix<float> r(rows, cols);
    bench::fill(r.data(), r.size(), 0.02f, seed++);
    return r;
  };
  const Index kv = c.n_kv_heads * c.head_dim();
  w.token_embedding = random(c.vocab_size, c.dim);
  for (Index l = 0; l < c.n_layers; ++l) {
    kvattn::LlamaLayerWeights<float> lw;
    lw.attention_norm = kvattn::Vector<float>::Ones(c.dim);
    lw.ffn_norm = kvattn::Vector<float>::Ones(c.dim);
    lw.attention.wq = random(c.dim, c.dim);
    lw.attention.wk = random(kv, c.dim);
    lw.attention.wv = random(kv, c.dim);
    lw.attention.wo = random(c.dim, c.dim);
    lw.w1 = random(c.hidden_dim, c.dim);
    lw.w2 = random(c.dim, c.hidden_dim);
    lw.w3 = random(c.hidden_dim, c.dim);
    w.layers.push_back(std::move(lw));
  }
  w.final_norm = kvattn::Vector<float>::Ones(c.dim);
  w.classifier = random(c.vocab_size, c.dim);
  m = std::make_unique<kvattn::Llama<float, kvattn::Stored>>(kvattn::to_stored(std::move(w), type));
  return *m;
}

// Bytes of weights one decode step reads: every matrix but the embedding.
double step_bytes(uint32_t type) {
  const double per_value = type == kvattn::ggml::F32    ? 4
                           : type == kvattn::ggml::Q8_0 ? 34.0 / 32
                           : type == kvattn::ggml::Q4_0 ? 18.0 / 32
                                                        : 2;
  const double d = 2048, h = 5632, kv = 512, vocab = 32000;
  return per_value * (4 * (2 * d * d + 2 * kv * d + 3 * h * d) + vocab * d);
}

const uint32_t kModelTypes[] = {kvattn::ggml::F32, kvattn::ggml::F16, kvattn::ggml::BF16,
                                kvattn::ggml::Q8_0, kvattn::ggml::Q4_0};

void BM_ModelDecode(benchmark::State& state) {
  const uint32_t type = kModelTypes[state.range(0)];
  const int threads = int(state.range(1));
  bench::set_threads(threads);
  kvattn::Llama<float, kvattn::Stored>& model = tiny_model(type);
  kvattn::LlamaState<float> s = model.make_state(256);
  const std::vector<int> prompt = {1, 400, 1234, 9000, 17, 31000, 5,  6,
                                   7, 8,   9,    10,   11, 12,    13, 14};
  model.prefill(prompt, s);
  int token = 42;
  for (auto _ : state) {
    if (s.pos() >= 200) s.truncate(16);
    benchmark::DoNotOptimize(model.step(token, s).data());
    token = (token * 37 + 11) % 32000;
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel(kvattn::ggml_type_name(type));
  const double bw = bench::read_bandwidth(threads);
  if (bw > 0) {
    state.counters["read_fraction"] =
        benchmark::Counter(step_bytes(type) / bw, benchmark::Counter::kIsIterationInvariantRate);
  }
}

void model_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"weights", "threads"})->Unit(benchmark::kMillisecond)->UseRealTime();
  for (int threads : {1, 2})
    for (int kind = 0; kind < 5; ++kind) b->Args({kind, threads});
}

}  // namespace

BENCHMARK(bench::BM_ReadBandwidth)->Apply(bench::read_bandwidth_args);
BENCHMARK(BM_LayerProducts)->Apply(args);
BENCHMARK(BM_ModelDecode)->Apply(model_args);
BENCHMARK_MAIN();
