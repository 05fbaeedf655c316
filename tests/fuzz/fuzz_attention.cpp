// libFuzzer target: differential fuzzing of the numerics. The input chooses
// a layer (n_kv_heads 1-4, group 1-4, head_dim 1-24 odd ones included,
// d_model, RoPE style, cache storage, kernel target among those the CPU
// runs) and a sequence of operations -- prefill chunks, single steps,
// truncations, a copy of the sequence, save/load round trips -- with
// bounded values, and runs them three ways:
//   a contiguous KVCache (MultiHeadAttention::forward / step),
//   the paged pool (forward(x, pool.layer(0), seq) / step_batch, with the
//     copy as a fork sharing blocks),
//   the double-precision reference over the sequence's whole history.
// It traps when an output is NaN or infinite (all inputs are finite), when
// paged and contiguous steps differ in any bit or their prefills by more
// than float rounding (1e-5 relative), or when the library differs from
// the reference by more than the storage type's bound: 1e-4 relative to
// max(1, max |output|) for float, 2e-2 for bfloat16, half and int8 (the
// attention errors tests/storage_test.cpp asserts, with margin).
#include <kvattn/kvattn.hpp>

#include "../reference.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

namespace {

using kvattn::RowMatrix;
using Index = Eigen::Index;

// Reads bounded values from the input; zeros once it runs out.
struct Bytes {
  const uint8_t* p;
  size_t n;
  unsigned take(unsigned range) {  // in [0, range)
    if (n == 0) return 0;
    --n;
    return unsigned(*p++) % range;
  }
  float value() { return float(int(take(255)) - 127) / 127.0f; }  // in [-1, 1]
};

void check(bool ok) {
  if (!ok) __builtin_trap();
}

double max_abs(const RowMatrix<double>& m) { return m.size() ? m.cwiseAbs().maxCoeff() : 0.0; }

template <class S>
void run(Bytes& in) {
  const Index n_kv = 1 + Index(in.take(4)), group = 1 + Index(in.take(4));
  Index hd = 1 + Index(in.take(24));
  kvattn::RopeStyle rope = kvattn::RopeStyle(in.take(3));
  if (hd % 2 == 1 && rope != kvattn::RopeStyle::None) ++hd;
  const Index d_model = 1 + Index(in.take(32));
  const kvattn::AttentionConfig c{d_model, n_kv * group, n_kv, hd, rope};
  kvattn::AttentionWeights<double> w;
  auto fill = [&](Index rows, Index cols) {
    RowMatrix<double> m(rows, cols);
    const double s = 1.0 / std::sqrt(double(cols));
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = double(in.value()) * s;
    return m;
  };
  w.wq = fill(c.q_dim(), d_model);
  w.wk = fill(c.kv_dim(), d_model);
  w.wv = fill(c.kv_dim(), d_model);
  w.wo = fill(d_model, c.q_dim());
  kvattn::AttentionWeights<float> wf{w.wq.cast<float>(),
                                     w.wk.cast<float>(),
                                     w.wv.cast<float>(),
                                     w.wo.cast<float>(),
                                     {},
                                     {},
                                     {},
                                     {}};
  w = kvattn::AttentionWeights<double>{wf.wq.cast<double>(),
                                       wf.wk.cast<double>(),
                                       wf.wv.cast<double>(),
                                       wf.wo.cast<double>(),
                                       {},
                                       {},
                                       {},
                                       {}};
  kvattn::MultiHeadAttention<float> layer(c, wf);
  constexpr Index kCap = 64;
  const double bound = std::is_same<S, float>::value ? 1e-4 : 2e-2;

  kvattn::KVCache<float, S> flat = layer.make_cache<S>(kCap);
  kvattn::PagedKVCache<float, S> pool({1, n_kv, hd, 16, 2 * kCap / 16 + 2});
  kvattn::SeqId seq = pool.add_sequence();
  RowMatrix<double> history(0, d_model);  // every token the sequence has seen
  for (int op = 0; op < 10 && in.n > 0; ++op) {
    const unsigned kind = in.take(6);
    const Index len = flat.size();
    if (kind <= 2) {  // a prefill chunk (kind 0-1) or one step (kind 2)
      const Index n = kind == 2 ? 1 : 1 + Index(in.take(8));
      if (len + n > kCap) continue;
      RowMatrix<float> x(n, d_model);
      for (Index i = 0; i < x.size(); ++i) x.data()[i] = in.value();
      RowMatrix<float> y_flat, y_pool(n, d_model);
      if (n == 1) {
        const kvattn::Vector<float> y = layer.step(x.row(0).transpose(), flat);
        y_flat = y.transpose();
        layer.step_batch(x, pool.layer(0), {seq}, y_pool);
        check(std::memcmp(y_flat.data(), y_pool.data(), size_t(d_model) * sizeof(float)) == 0);
      } else {
        y_flat = layer.forward(x, flat);
        y_pool = layer.forward(x, pool.layer(0), seq);
        const double scale = std::max(1.0, double(y_flat.cwiseAbs().maxCoeff()));
        check((y_flat - y_pool).cwiseAbs().maxCoeff() <= 1e-5 * scale);
      }
      check(y_flat.allFinite() && y_pool.allFinite());
      history.conservativeResize(len + n, Eigen::NoChange);
      history.bottomRows(n) = x.cast<double>();
      const RowMatrix<double> want = reference::attention(c, w, history).bottomRows(n);
      const double scale = std::max(1.0, max_abs(want));
      check((y_flat.cast<double>() - want).cwiseAbs().maxCoeff() <= bound * scale);
    } else if (kind == 3) {  // truncate
      const Index n = Index(in.take(unsigned(len + 1)));
      flat.truncate(n);
      pool.truncate(seq, n);
      history.conservativeResize(n, Eigen::NoChange);
    } else if (kind == 4) {  // continue on a copy: a deep copy / a fork sharing blocks
      kvattn::KVCache<float, S> copy = flat.copy();
      flat = std::move(copy);
      const kvattn::SeqId fork = pool.fork(seq);
      pool.release(seq);
      seq = fork;
    } else {  // save and load both
      std::stringstream a, b;
      kvattn::save(flat, a);
      kvattn::KVCache<float, S> restored = layer.make_cache<S>(kCap);
      kvattn::load(restored, a);
      flat = std::move(restored);
      kvattn::save(pool, seq, b);
      const kvattn::SeqId loaded = kvattn::load(pool, b);
      pool.release(seq);
      seq = loaded;
    }
    check(pool.length(seq) == flat.size());
  }
  pool.release(seq);
  check(pool.free_blocks() == pool.n_blocks());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in{data, size};
  const std::vector<std::string> targets = kvattn::kernels::supported_targets();
  kvattn::kernels::set_active(targets[in.take(unsigned(targets.size()))]);
  switch (in.take(4)) {
    case 0:
      run<float>(in);
      break;
    case 1:
      run<Eigen::bfloat16>(in);
      break;
    case 2:
      run<Eigen::half>(in);
      break;
    default:
      run<std::int8_t>(in);
  }
  return 0;
}
