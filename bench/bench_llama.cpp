// The Llama decoder on the shared real checkpoints (shared/models), against a
// plain single-file C implementation of the same forward pass (plain_llama.c,
// built with the same flags), in one binary.
//
//   BM_LlamaDecode/model       kvattn: BOS prefilled, then one step per token for
//                              `positions` positions; items/s = tokens/s
//   BM_PlainDecode/model       plain C: one token per call, the same positions
//   BM_PlainDecodeOfast/model  the same C built with -Ofast (llama2.c's "runfast")
//   BM_LlamaPrefill/model      kvattn: the same tokens as one batched prefill
//   BM_GgufDecode/file/stored  kvattn decode of aidreams260K's GGUF files by weight type,
//                              stored = 1: the matrices as the file stores them
//                              (Llama<float, Stored>), 0: decoded to float at load
//
// model 0 = aidreams260K.bin (MHA, 128 positions), 1 = stories260K.bin (GQA, 256).
// One thread.
#include <kvattn/io/model_file.hpp>
#include <kvattn/kvattn.hpp>

#include "plain_llama.h"

#include <benchmark/benchmark.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace {

struct Model {
  const char* file;
  int positions;
};
const Model kModels[] = {{"aidreams260K.bin", 128}, {"stories260K.bin", 256}};

std::string path_of(int64_t id) { return std::string(KVATTN_MODELS_DIR) + "/" + kModels[id].file; }

// A fixed token sequence: BOS, then ids spread over the vocabulary.
std::vector<int> tokens(int n, int vocab) {
  std::vector<int> t{1};
  for (int i = 1; i < n; ++i) t.push_back(3 + (i * 37) % (vocab - 3));
  return t;
}

bool skip_without_models(benchmark::State& state, int64_t id) {
  if (std::filesystem::exists(path_of(id))) return false;
  state.SkipWithError(("shared checkpoint not found: " + path_of(id)).c_str());
  return true;
}

void BM_LlamaDecode(benchmark::State& state) {
  const int64_t id = state.range(0);
  if (skip_without_models(state, id)) return;
  kvattn::Llama<float> model(kvattn::read_llama2c_checkpoint<float>(path_of(id)));
  const int n = kModels[id].positions;
  const std::vector<int> seq = tokens(n, int(model.config().vocab_size));
  kvattn::LlamaState<float> s = model.make_state(n);
  for (auto _ : state) {
    s.clear();
    for (int p = 0; p < n; ++p) benchmark::DoNotOptimize(model.step(seq[size_t(p)], s).data());
  }
  state.SetItemsProcessed(state.iterations() * n);
}

// The plain C loop: one forward call per position, open/forward/close being
// one of the two builds of plain_llama.c.
void plain_decode(benchmark::State& state, PlainLlama* (*open)(const char*),
                  const float* (*forward)(PlainLlama*, int, int), void (*close)(PlainLlama*)) {
  const int64_t id = state.range(0);
  if (skip_without_models(state, id)) return;
  PlainLlama* m = open(path_of(id).c_str());
  const int n = kModels[id].positions;
  const std::vector<int> seq = tokens(n, plain_llama_vocab_size(m));
  for (auto _ : state) {
    for (int p = 0; p < n; ++p) benchmark::DoNotOptimize(forward(m, seq[size_t(p)], p));
  }
  state.SetItemsProcessed(state.iterations() * n);
  close(m);
}

void BM_PlainDecode(benchmark::State& state) {
  plain_decode(state, plain_llama_open, plain_llama_forward, plain_llama_close);
}

void BM_PlainDecodeOfast(benchmark::State& state) {
  plain_decode(state, plain_llama_fast_open, plain_llama_fast_forward, plain_llama_fast_close);
}

void BM_LlamaPrefill(benchmark::State& state) {
  const int64_t id = state.range(0);
  if (skip_without_models(state, id)) return;
  kvattn::Llama<float> model(kvattn::read_llama2c_checkpoint<float>(path_of(id)));
  const int n = kModels[id].positions;
  const std::vector<int> seq = tokens(n, int(model.config().vocab_size));
  kvattn::LlamaState<float> s = model.make_state(n);
  for (auto _ : state) {
    s.clear();
    benchmark::DoNotOptimize(model.prefill(seq, s).data());
  }
  state.SetItemsProcessed(state.iterations() * n);
}

// The GGUF files llama.cpp wrote from aidreams260K.bin, one per weight type.
const char* const kGgufFiles[] = {"f32", "f16", "bf16", "q8_0", "q4_0"};

void BM_GgufDecode(benchmark::State& state) {
  const std::string path =
      std::string(KVATTN_MODELS_DIR) + "/gguf/aidreams260K-" + kGgufFiles[state.range(0)] + ".gguf";
  if (!std::filesystem::exists(path)) {
    state.SkipWithError(("shared GGUF file not found: " + path).c_str());
    return;
  }
  auto decode = [&state](auto& model) {
    const int n = kModels[0].positions;
    const std::vector<int> seq = tokens(n, int(model.config().vocab_size));
    kvattn::LlamaState<float> s = model.make_state(n);
    for (auto _ : state) {
      s.clear();
      for (int p = 0; p < n; ++p) benchmark::DoNotOptimize(model.step(seq[size_t(p)], s).data());
    }
    state.SetItemsProcessed(state.iterations() * n);
  };
  if (state.range(1) != 0) {
    kvattn::Llama<float, kvattn::Stored> model(kvattn::read_model_file_stored(path).weights);
    decode(model);
  } else {
    kvattn::Llama<float> model(kvattn::read_model_file<float>(path).weights);
    decode(model);
  }
  state.SetLabel(std::string(kGgufFiles[state.range(0)]) +
                 (state.range(1) != 0 ? " as stored" : " decoded to f32"));
}

}  // namespace

BENCHMARK(BM_LlamaDecode)->ArgName("model")->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PlainDecode)->ArgName("model")->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PlainDecodeOfast)->ArgName("model")->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GgufDecode)
    ->ArgNames({"file", "stored"})
    ->ArgsProduct({{0, 1, 2, 3, 4}, {0, 1}})
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LlamaPrefill)->ArgName("model")->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
