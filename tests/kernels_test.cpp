// Every kernel of every kernel target against its plain twin
// (kernels/reference.hpp: scalar loops in double), on every target this CPU
// can run; a target it cannot run, or that this architecture does not
// compile, is reported as a skipped test named after it.
//
// Bounds (u = 2^-24, float's unit roundoff; stated in docs/kernels.md):
//  - a score s = scale q.k is off by at most 8 (hd + 2) u scale sum_d |q_d k_d|;
//    int8 in the integer domain adds the query's int16 rounding,
//    scale c sum_d |k_d| qs / 2;
//  - an output o = acc / l (a softmax-weighted mean of values) is off by at
//    most (4 ds + (n + 16) 8u) max_j |v_j[d]|, ds the largest score error
//    plus exp's (8u); int8 in the integer domain adds the weights' int16
//    rounding, sum_j |code_j[d]| ws / 2 / l;
//  - a product w.x is off by at most 2 in u sum_d |w_d x_d| (+ tiny).
// And the bitwise properties the layers rely on: splitting a chunk into
// spans (as a paged cache's blocks do) changes no bit, a batch column equals
// the one-vector product, and a row's result does not depend on which rows
// are computed with it.
#include <kvattn/kernels/kernels.hpp>
#include <kvattn/kernels/reference.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

using kvattn::kernels::Index;
using kvattn::kernels::KernelTable;
using kvattn::kernels::KVSpan;

const char* const kAllTargets[] = {"portable", "avx2", "avx512", "avx512vnni", "neon"};
constexpr double kU = 1.0 / (1 << 24);

// The table of a target, or a skip saying why there is none.
const KernelTable* target_or_skip(const std::string& name, std::string* why) {
  for (const kvattn::kernels::Target& t : kvattn::kernels::compiled_targets()) {
    if (name == t.name) {
      if (t.supported()) return &t.table();
      *why = "this CPU lacks the instructions of target " + name;
      return nullptr;
    }
  }
  *why = "target " + name + " is not compiled for this architecture";
  return nullptr;
}

#define KVATTN_TARGET_OR_SKIP(table)                           \
  std::string why;                                             \
  const KernelTable* table = target_or_skip(GetParam(), &why); \
  if (table == nullptr) GTEST_SKIP() << why

class Kernels : public ::testing::TestWithParam<const char*> {};

TEST(KernelTargets, ListsWhatThisMachineRuns) {
  std::string compiled, supported;
  for (const kvattn::kernels::Target& t : kvattn::kernels::compiled_targets()) {
    compiled += std::string(compiled.empty() ? "" : ", ") + t.name;
    if (t.supported()) supported += std::string(supported.empty() ? "" : ", ") + t.name;
  }
  std::printf("kernel targets compiled: %s; supported by this CPU: %s; active: %s\n",
              compiled.c_str(), supported.c_str(), kvattn::kernel_target());
  EXPECT_EQ(std::string(kvattn::kernels::compiled_targets().back().name), "portable");
  EXPECT_NE(supported.find(kvattn::kernel_target()), std::string::npos);
}

// Rows of one KV head as a cache stores them, with their float reading.
template <class S>
struct Rows {
  std::vector<S> k, v;
  std::vector<float> ks, vs;  // int8 row scales
  Index n, hd;

  Rows(Index n_, Index hd_, std::mt19937& rng, double range) : n(n_), hd(hd_) {
    std::uniform_real_distribution<float> u(-float(range), float(range));
    k.resize(size_t(n * hd));
    v.resize(size_t(n * hd));
    if constexpr (std::is_same<S, std::int8_t>::value) {
      std::uniform_real_distribution<float> scale(0.001f, 0.05f);
      std::uniform_int_distribution<int> code(-127, 127);
      for (auto& x : k) x = std::int8_t(code(rng));
      for (auto& x : v) x = std::int8_t(code(rng));
      for (Index j = 0; j < n; ++j) {
        ks.push_back(scale(rng));
        vs.push_back(scale(rng));
      }
    } else {
      for (auto& x : k) x = S(u(rng));
      for (auto& x : v) x = S(u(rng));
    }
  }
  bool scaled() const { return !ks.empty(); }
  // Spans of at most `block` rows (all rows when block >= n).
  std::vector<KVSpan<S>> spans(Index block) const {
    std::vector<KVSpan<S>> out;
    for (Index j = 0; j < n; j += block) {
      KVSpan<S> s;
      s.k = k.data() + j * hd;
      s.v = v.data() + j * hd;
      s.k_scales = scaled() ? ks.data() + j : nullptr;
      s.v_scales = scaled() ? vs.data() + j : nullptr;
      s.rows = std::min(block, n - j);
      s.stride = hd;
      out.push_back(s);
    }
    return out;
  }
  double key(Index j, Index d) const {
    return double(static_cast<float>(k[size_t(j * hd + d)])) * (scaled() ? ks[size_t(j)] : 1.0);
  }
  double value(Index j, Index d) const {
    return double(static_cast<float>(v[size_t(j * hd + d)])) * (scaled() ? vs[size_t(j)] : 1.0);
  }
};

struct ChunkResult {
  std::vector<float> acc, m, l;
};

template <class S>
ChunkResult run_chunk(void (*fn)(const kvattn::kernels::ChunkTask<S>&), const std::vector<float>& q,
                      Index g, Index hd, const std::vector<KVSpan<S>>& spans, Index n,
                      float scale) {
  ChunkResult r;
  r.acc.assign(size_t(g * hd), -7.0f);
  r.m.assign(size_t(g), -7.0f);
  r.l.assign(size_t(g), -7.0f);
  std::vector<std::max_align_t> scratch(
      size_t(kvattn::kernels::chunk_scratch_bytes(g, hd)) / sizeof(std::max_align_t) + 8);
  kvattn::kernels::ChunkTask<S> t;
  t.q = q.data();
  t.g = g;
  t.hd = hd;
  t.spans = spans.data();
  t.n_spans = Index(spans.size());
  t.n = n;
  t.scale = scale;
  t.acc = r.acc.data();
  t.m = r.m.data();
  t.l = r.l.data();
  // 64-byte aligned scratch
  const std::uintptr_t at = (reinterpret_cast<std::uintptr_t>(scratch.data()) + 63) / 64 * 64;
  t.scratch = reinterpret_cast<void*>(at);
  fn(t);
  return r;
}

template <class S>
void check_attend(const KernelTable& table, const char* name) {
  std::mt19937 rng(21);
  const Index groups[] = {1, 2, 3, 4, 5, 8, 12, 13, 32};
  const Index dims[] = {8, 13, 24, 36, 64, 80, 128};
  const Index lengths[] = {1, 7, 16, 100, 256};
  for (Index g : groups) {
    for (Index hd : dims) {
      for (Index n : lengths) {
        const Rows<S> rows(n, hd, rng, 2.0);
        std::vector<float> q(size_t(g * hd));
        std::uniform_real_distribution<float> u(-2.0f, 2.0f);
        for (float& x : q) x = u(rng);
        const float scale = float(1.0 / std::sqrt(double(hd)));
        auto fn = [&] {
          if constexpr (std::is_same<S, float>::value)
            return table.attend_f32;
          else if constexpr (std::is_same<S, Eigen::bfloat16>::value)
            return table.attend_bf16;
          else if constexpr (std::is_same<S, Eigen::half>::value)
            return table.attend_f16;
          else
            return table.attend_i8;
        }();
        const ChunkResult got = run_chunk<S>(fn, q, g, hd, rows.spans(n), n, scale);
        const ChunkResult want =
            run_chunk<S>(&kvattn::kernels::attend_ref<S>, q, g, hd, rows.spans(n), n, scale);
        // Blocks of 16 and of 48 rows, as a paged cache hands them over: the same bits.
        for (Index block : {Index(16), Index(48)}) {
          const ChunkResult split = run_chunk<S>(fn, q, g, hd, rows.spans(block), n, scale);
          ASSERT_EQ(std::memcmp(split.acc.data(), got.acc.data(), got.acc.size() * 4), 0)
              << name << " block " << block << " g " << g << " hd " << hd << " n " << n;
          ASSERT_EQ(std::memcmp(split.l.data(), got.l.data(), got.l.size() * 4), 0);
        }
        for (Index r = 0; r < g; ++r) {
          double dmax = 0, vrange_all = 0;
          for (Index j = 0; j < n; ++j) {
            double mag = 0, kabs = 0;
            for (Index d = 0; d < hd; ++d) {
              mag += std::abs(double(q[size_t(r * hd + d)]) * rows.key(j, d));
              kabs += std::abs(rows.key(j, d));
            }
            double ds = 8 * double(hd + 2) * kU * scale * mag;
            if (rows.scaled()) {  // int8: the integer kernels round the query to int16
              double amax = 0;
              for (Index d = 0; d < hd; ++d)
                amax = std::max(amax, std::abs(double(q[size_t(r * hd + d)])));
              ds += scale * kabs * amax / 32767 / 2;
            }
            dmax = std::max(dmax, ds);
          }
          ASSERT_NEAR(got.m[size_t(r)], want.m[size_t(r)], dmax + 1e-30)
              << name << " g " << g << " hd " << hd << " n " << n << " head " << r;
          const double delta = 2 * dmax + 8 * kU;
          double wmax = 0;
          for (Index j = 0; j < n; ++j) {
            if (rows.scaled()) wmax = std::max(wmax, double(rows.vs[size_t(j)]) / 32767);
          }
          for (Index d = 0; d < hd; ++d) {
            double vmax = 0, codes = 0;
            for (Index j = 0; j < n; ++j) {
              vmax = std::max(vmax, std::abs(rows.value(j, d)));
              codes += std::abs(double(static_cast<float>(rows.v[size_t(j * hd + d)])));
            }
            vrange_all = std::max(vrange_all, vmax);
            const double o = double(got.acc[size_t(r * hd + d)]) / got.l[size_t(r)];
            const double o_ref = double(want.acc[size_t(r * hd + d)]) / want.l[size_t(r)];
            double tol = (4 * delta + double(n + 16) * 8 * kU) * vmax;
            if (rows.scaled())
              tol += codes * wmax / 2 / want.l[size_t(r)];  // int16 weight rounding
            ASSERT_NEAR(o, o_ref, tol + 1e-30)
                << name << " g " << g << " hd " << hd << " n " << n << " head " << r << " d " << d;
          }
        }
      }
    }
  }
}

TEST_P(Kernels, AttendFloatMatchesTwin) {
  KVATTN_TARGET_OR_SKIP(table);
  check_attend<float>(*table, GetParam());
}
TEST_P(Kernels, AttendBfloat16MatchesTwin) {
  KVATTN_TARGET_OR_SKIP(table);
  check_attend<Eigen::bfloat16>(*table, GetParam());
}
TEST_P(Kernels, AttendHalfMatchesTwin) {
  KVATTN_TARGET_OR_SKIP(table);
  check_attend<Eigen::half>(*table, GetParam());
}
TEST_P(Kernels, AttendInt8MatchesTwin) {
  KVATTN_TARGET_OR_SKIP(table);
  check_attend<std::int8_t>(*table, GetParam());
}

// NaN policy: a NaN in a query head makes that head's output NaN, and
// finite inputs never give a NaN.
TEST_P(Kernels, AttendPropagatesNaN) {
  KVATTN_TARGET_OR_SKIP(table);
  std::mt19937 rng(22);
  const Index g = 4, hd = 64, n = 40;
  const Rows<std::int8_t> r8(n, hd, rng, 1.0);
  const Rows<float> r32(n, hd, rng, 1.0);
  std::vector<float> q(size_t(g * hd), 0.5f);
  q[size_t(1 * hd + 3)] = std::numeric_limits<float>::quiet_NaN();
  const ChunkResult a = run_chunk<float>(table->attend_f32, q, g, hd, r32.spans(n), n, 0.1f);
  const ChunkResult b = run_chunk<std::int8_t>(table->attend_i8, q, g, hd, r8.spans(n), n, 0.1f);
  for (const ChunkResult* c : {&a, &b}) {
    for (Index r = 0; r < g; ++r) {
      const double o = double(c->acc[size_t(r * hd)]) / c->l[size_t(r)];
      EXPECT_EQ(std::isnan(o), r == 1) << GetParam() << " head " << r;
    }
  }
}

template <class W>
void check_gemm(const KernelTable& table, const char* name) {
  std::mt19937 rng(23);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const auto fn = table.gemm<W>();
  for (Index rows : {1, 5, 8, 17, 64}) {
    for (Index in : {1, 7, 8, 33, 100, 1000}) {
      const Index ws = in + 3;  // a row stride wider than the row
      std::vector<W> w(size_t(rows * ws));
      for (auto& x : w) x = W(u(rng));
      for (Index batch : {1, 2, 3, 5, 16}) {
        std::vector<float> x(size_t(batch * in)), y(size_t(batch * rows), -7.0f),
            ref(size_t(batch * rows));
        for (float& v : x) v = u(rng);
        fn(w.data(), ws, rows, in, x.data(), in, batch, y.data(), rows);
        kvattn::kernels::gemm_ref(w.data(), ws, rows, in, x.data(), in, batch, ref.data(), rows);
        for (Index b = 0; b < batch; ++b) {
          // The one-vector product of column b: the same bits.
          std::vector<float> one(static_cast<size_t>(rows));
          fn(w.data(), ws, rows, in, x.data() + b * in, in, 1, one.data(), rows);
          ASSERT_EQ(std::memcmp(one.data(), y.data() + b * rows, size_t(rows) * 4), 0)
              << name << " rows " << rows << " in " << in << " batch " << batch << " column " << b;
          for (Index i = 0; i < rows; ++i) {
            double mag = 0;
            for (Index d = 0; d < in; ++d) {
              mag += std::abs(double(static_cast<float>(w[size_t(i * ws + d)])) *
                              x[size_t(b * in + d)]);
            }
            ASSERT_NEAR(y[size_t(b * rows + i)], ref[size_t(b * rows + i)],
                        2 * double(in) * kU * mag + 1e-30)
                << name << " rows " << rows << " in " << in << " batch " << batch;
          }
        }
        if (rows > 1) {  // the last row alone: the same bits as with the others
          float last = 0;
          fn(w.data() + (rows - 1) * ws, ws, 1, in, x.data(), in, 1, &last, 1);
          ASSERT_EQ(last, y[size_t(rows - 1)]) << name << " rows " << rows << " in " << in;
        }
      }
    }
  }
}

TEST_P(Kernels, GemmFloatMatchesTwin) {
  KVATTN_TARGET_OR_SKIP(table);
  check_gemm<float>(*table, GetParam());
}
TEST_P(Kernels, GemmBfloat16MatchesTwin) {
  KVATTN_TARGET_OR_SKIP(table);
  check_gemm<Eigen::bfloat16>(*table, GetParam());
}
TEST_P(Kernels, GemmHalfMatchesTwin) {
  KVATTN_TARGET_OR_SKIP(table);
  check_gemm<Eigen::half>(*table, GetParam());
}

TEST_P(Kernels, SiluMulMatchesTwin) {
  KVATTN_TARGET_OR_SKIP(table);
  std::mt19937 rng(24);
  std::uniform_real_distribution<float> u(-30.0f, 30.0f);
  for (Index n : {1, 3, 8, 17, 100, 1000}) {
    std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
    for (Index i = 0; i < n; ++i) {
      a[size_t(i)] = u(rng);
      b[size_t(i)] = u(rng) / 30.0f;
    }
    std::vector<float> got = a, want = a;
    table->silu_mul(got.data(), b.data(), n);
    kvattn::kernels::silu_mul_ref(want.data(), b.data(), n);
    for (Index i = 0; i < n; ++i) {
      ASSERT_NEAR(got[size_t(i)], want[size_t(i)], 16 * kU * std::abs(want[size_t(i)]) + 1e-37)
          << GetParam() << " x " << a[size_t(i)];
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTargets, Kernels, ::testing::ValuesIn(kAllTargets),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param);
                         });

}  // namespace
