// The same library under different compiler flags, in one process, step by
// step. Each set of flags builds its own shared module of the library
// (flags_module.cpp); this driver loads every module, gives them the same
// caches and weights (one copy, which every module reads) and, round after round, runs one step of
// each module in turn (caches flushed before each step; the order rotates through every
// permutation), so that a noisy host slows every module alike. It prints,
// per case and thread count, each module's median step time and the median
// over rounds of its time divided by the first module's in the same round.
//
//   bench_flags [rounds (40)] [substring of the case names to run]
//
// The modules and their flags come from bench/CMakeLists.txt; the environment
// variable KVATTN_FLAGS_MODULES="label=path|label=path|..." replaces them, for
// example with the modules of another commit's build (same flags_cases.hpp).
#include <kvattn/kvattn.hpp>

#include "bench_common.hpp"
#include "flags_cases.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Module {
  std::string flags;
  flags::RunFn run = nullptr;
  flags::OutputFn output = nullptr;
  const char* target = nullptr;
};

template <class Fn>
Fn symbol(void* handle, const char* name) {
  void* p = dlsym(handle, name);
  if (p == nullptr) throw std::runtime_error(std::string("bench_flags: no symbol ") + name);
  return reinterpret_cast<Fn>(p);
}

// "flags=path|flags=path|...", from the build.
std::vector<Module> load_modules(const std::string& spec, const flags::Inputs& in) {
  std::vector<Module> modules;
  size_t start = 0;
  while (start < spec.size()) {
    const size_t end = std::min(spec.find('|', start), spec.size());
    const std::string item = spec.substr(start, end - start);
    const size_t eq = item.rfind('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == item.size()) {
      throw std::invalid_argument("bench_flags: module = \"" + item + "\", expected label=path");
    }
    void* h = dlopen(item.substr(eq + 1).c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) throw std::runtime_error(std::string("bench_flags: ") + dlerror());
    Module m;
    m.flags = item.substr(0, eq);
    symbol<flags::PrepareFn>(h, "kvattn_flags_prepare")(&in);
    m.run = symbol<flags::RunFn>(h, "kvattn_flags_run");
    m.output = symbol<flags::OutputFn>(h, "kvattn_flags_output");
    m.target = symbol<flags::TargetFn>(h, "kvattn_flags_target")();
    modules.push_back(m);
    start = end + 1;
  }
  if (modules.empty()) {
    throw std::invalid_argument("bench_flags: modules = \"" + spec +
                                "\", expected at least one label=path");
  }
  return modules;
}

template <class S>
std::unique_ptr<kvattn::KVCache<float, S>> make_cache(const kvattn::RowMatrix<float>& rows) {
  auto c = std::make_unique<kvattn::KVCache<float, S>>(flags::kKv, flags::kHeadDim, flags::kCtx);
  c->append(rows, rows);
  return c;
}

// Weights on huge pages where the OS allows, like the caches.
template <class W>
kvattn::detail::LargeBuffer<W> converted(const kvattn::RowMatrix<float>& w) {
  kvattn::detail::LargeBuffer<W> b(w.size());
  for (Eigen::Index i = 0; i < w.size(); ++i) b.data()[i] = W(w.data()[i]);
  return b;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double quantile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[size_t(p * double(v.size() - 1) + 0.5)];
}

// Largest |module m's output - module 0's|, relative to module 0's largest |value|.
double output_difference(const std::vector<Module>& modules, size_t m, int c) {
  long n0 = 0, n = 0;
  const float* a = modules[0].output(c, &n0);
  const float* b = modules[m].output(c, &n);
  double diff = 0, scale = 0;
  for (long i = 0; i < std::min(n0, n); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::abs(double(a[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

void measure(const std::vector<Module>& modules, int c, int threads, int rounds) {
  using Clock = std::chrono::steady_clock;
  const size_t k = modules.size();
  std::vector<std::vector<double>> ms(k), ratio(k);
  std::vector<size_t> order(k);
  for (size_t i = 0; i < k; ++i) order[i] = i;
  for (int r = -2; r < rounds; ++r) {  // two warm-up rounds
    std::vector<double> t(k);
    for (size_t i : order) {
      bench::flush_caches();
      const auto t0 = Clock::now();
      modules[i].run(c, threads);
      t[i] = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    }
    std::next_permutation(order.begin(), order.end());
    if (r < 0) continue;
    for (size_t i = 0; i < k; ++i) {
      ms[i].push_back(t[i]);
      ratio[i].push_back(t[i] / t[0]);
    }
  }
  std::printf("| %s | %d |", flags::kCaseNames[c], threads);
  for (size_t i = 0; i < k; ++i) std::printf(" %.3f |", median(ms[i]));
  for (size_t i = 1; i < k; ++i) {
    std::printf(" %.3f (%.3f-%.3f) %.0e |", median(ratio[i]), quantile(ratio[i], 0.25),
                quantile(ratio[i], 0.75), output_difference(modules, i, c));
  }
  std::printf("\n");
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 40;
  const std::string only = argc > 2 ? argv[2] : "";
  if (rounds < 1) {
    std::fprintf(stderr, "bench_flags: rounds = %s, expected a positive number\n", argv[1]);
    return 2;
  }
  kvattn::RowMatrix<float> rows(flags::kCtx, flags::kKv * flags::kHeadDim);
  kvattn::RowMatrix<float> weights(flags::kGemvRows, flags::kGemvCols);
  std::vector<float> query(size_t(flags::kHeads * flags::kHeadDim)), x(size_t(flags::kQuantCols));
  bench::fill(rows.data(), rows.size(), 1.0f, 11);
  bench::fill(weights.data(), weights.size(), 0.05f, 7);
  bench::fill(query.data(), Eigen::Index(query.size()), 1.0f, 3);
  bench::fill(x.data(), Eigen::Index(x.size()), 1.0f, 5);
  const auto f32 = make_cache<float>(rows);
  const auto bf16 = make_cache<Eigen::bfloat16>(rows);
  const auto f16 = make_cache<Eigen::half>(rows);
  const auto i8 = make_cache<std::int8_t>(rows);
  const auto w_bf16 = converted<Eigen::bfloat16>(weights);
  const auto w_f16 = converted<Eigen::half>(weights);
  const std::vector<std::uint8_t> q8 =
      bench::quant_blocks(34, flags::kQuantRows, flags::kQuantCols, 1);
  const std::vector<std::uint8_t> q4 =
      bench::quant_blocks(18, flags::kQuantRows, flags::kQuantCols, 2);
  const flags::Inputs in{{f32.get(), bf16.get(), f16.get(), i8.get()},
                         query.data(),
                         w_bf16.data(),
                         w_f16.data(),
                         q8.data(),
                         q4.data(),
                         x.data()};
  const char* spec = std::getenv("KVATTN_FLAGS_MODULES");  // e.g. modules of two commits
  const std::vector<Module> modules =
      load_modules(spec != nullptr && *spec != '\0' ? spec : KVATTN_FLAGS_MODULES, in);

  std::printf(
      "Rounds: %d; ms are medians; a ratio is the median over rounds of a module's\n"
      "time over the first module's in the same round (quartiles in brackets), then\n"
      "the largest output difference relative to the first module's largest value.\n\n",
      rounds);
  std::printf("| case | threads |");
  for (const Module& m : modules) std::printf(" `%s` (%s) ms |", m.flags.c_str(), m.target);
  for (size_t i = 1; i < modules.size(); ++i)
    std::printf(" `%s` / first |", modules[i].flags.c_str());
  std::printf("\n|---|---|");
  for (size_t i = 0; i < 2 * modules.size() - 1; ++i) std::printf("---|");
  std::printf("\n");
  for (int c = 0; c < flags::kCases; ++c) {
    if (std::string(flags::kCaseNames[c]).find(only) == std::string::npos) continue;
    for (int threads : {1, 2}) measure(modules, c, threads, rounds);
  }
}
