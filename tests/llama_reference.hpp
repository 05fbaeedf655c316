#pragma once
// A plain double-precision Llama forward pass written from the description in
// shared/models/README.md, independent of kvattn: it reads the checkpoint
// itself, keeps no cache and recomputes the whole sequence. It returns the
// logits after every token: [n][vocab].

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace reference {

struct LlamaFile {
  int dim, hidden, layers, heads, kv_heads, vocab, seq_len;
  bool shared;
  std::vector<double> w;  // every float after the header, as double
  // offsets into w
  size_t emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, cls;
  // Products whose input is first rounded to Q8_0 blocks, as llama.cpp
  // multiplies Q8_0 / Q4_0 weights: a mask of the Q8 bits below.
  unsigned q8 = 0;
  // When nonzero, each input of a Q8_0 rounding is first scaled by
  // 1 + q8_jitter or 1 - q8_jitter (a sign hashed from the value and
  // jitter_seed): float-sized noise that lets a caller measure how far codes
  // flipping on a rounding boundary move the logits.
  double q8_jitter = 0;
  std::uint64_t jitter_seed = 0;
};

enum : unsigned {
  kQ8Wq = 1,
  kQ8Wk = 2,
  kQ8Wv = 4,
  kQ8Wo = 8,
  kQ8W1 = 16,
  kQ8W2 = 32,
  kQ8W3 = 64,
  kQ8Cls = 128
};

// x rounded to IEEE half precision (round to nearest even; no overflow here).
inline double round_half(double x) {
  if (x == 0) return 0;
  int e = 0;
  std::frexp(x, &e);                       // |x| in [2^(e-1), 2^e)
  const int step = std::max(e - 11, -24);  // 11 significant bits; subnormal step 2^-24
  return std::ldexp(std::nearbyint(std::ldexp(x, -step)), step);
}

// x as Q8_0 blocks give it back: per 32 values, codes round(x * 127 / max|x|)
// times the scale max|x| / 127 rounded to half.
inline std::vector<double> q8_round(std::vector<double> x, double jitter = 0,
                                    std::uint64_t seed = 0) {
  if (jitter != 0) {
    for (double& v : x) {
      std::uint64_t h = 0;
      std::memcpy(&h, &v, sizeof h);
      h = (h ^ seed) * 0x9E3779B97F4A7C15ull;  // Fibonacci hashing: the top bit is the sign
      v *= (h >> 63) != 0 ? 1 + jitter : 1 - jitter;
    }
  }
  std::vector<double> y(x.size(), 0.0);
  for (size_t b = 0; b + 32 <= x.size(); b += 32) {
    double amax = 0;
    for (size_t j = b; j < b + 32; ++j) amax = std::max(amax, std::abs(x[j]));
    if (amax == 0) continue;
    const double d = round_half(amax / 127);
    for (size_t j = b; j < b + 32; ++j) y[j] = std::nearbyint(x[j] * 127 / amax) * d;
  }
  return y;
}

inline LlamaFile read_llama(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("reference: cannot open " + path);
  int32_t h[7];
  in.read(reinterpret_cast<char*>(h), sizeof h);
  LlamaFile f{h[0], h[1], h[2], h[3], h[4], std::abs(h[5]), h[6], h[5] > 0, {}, 0, 0, 0, 0, 0, 0, 0,
              0,    0,    0,    0,    0};
  std::vector<float> raw;
  float v;
  while (in.read(reinterpret_cast<char*>(&v), sizeof v)) raw.push_back(v);
  f.w.assign(raw.begin(), raw.end());
  const size_t dim = size_t(f.dim), hs = dim / size_t(f.heads), kv = size_t(f.kv_heads) * hs;
  const size_t L = size_t(f.layers), hid = size_t(f.hidden), voc = size_t(f.vocab);
  size_t o = 0;
  auto take = [&](size_t n) {
    const size_t at = o;
    o += n;
    return at;
  };
  f.emb = take(voc * dim);
  f.rms_att = take(L * dim);
  f.wq = take(L * dim * dim);
  f.wk = take(L * kv * dim);
  f.wv = take(L * kv * dim);
  f.wo = take(L * dim * dim);
  f.rms_ffn = take(L * dim);
  f.w1 = take(L * hid * dim);
  f.w2 = take(L * dim * hid);
  f.w3 = take(L * hid * dim);
  f.rms_final = take(dim);
  take(size_t(f.seq_len) * hs);  // legacy RoPE tables
  f.cls = f.shared ? f.emb : take(voc * dim);
  if (o != f.w.size()) throw std::runtime_error("reference: size mismatch in " + path);
  return f;
}

// y = W x, W at offset `at`, [rows][cols].
inline std::vector<double> matvec(const LlamaFile& f, size_t at, size_t rows, size_t cols,
                                  const std::vector<double>& x) {
  std::vector<double> y(rows, 0.0);
  for (size_t r = 0; r < rows; ++r) {
    double acc = 0;
    for (size_t c = 0; c < cols; ++c) acc += f.w[at + r * cols + c] * x[c];
    y[r] = acc;
  }
  return y;
}

// matvec, the input first rounded to Q8_0 when f.q8 has `bit`.
inline std::vector<double> matvec_as(const LlamaFile& f, unsigned bit, size_t at, size_t rows,
                                     size_t cols, const std::vector<double>& x) {
  return matvec(f, at, rows, cols, (f.q8 & bit) != 0 ? q8_round(x, f.q8_jitter, f.jitter_seed) : x);
}

inline std::vector<double> rmsnorm(const LlamaFile& f, size_t at, const std::vector<double>& x) {
  double ss = 0;
  for (double e : x) ss += e * e;
  const double inv = 1.0 / std::sqrt(ss / double(x.size()) + 1e-5);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * f.w[at + i];
  return y;
}

inline std::vector<std::vector<double>> llama_logits(const LlamaFile& f,
                                                     const std::vector<int>& tokens) {
  const size_t n = tokens.size(), dim = size_t(f.dim), hs = dim / size_t(f.heads);
  const size_t kv = size_t(f.kv_heads) * hs, hid = size_t(f.hidden),
               group = size_t(f.heads / f.kv_heads);
  std::vector<std::vector<double>> x(n);
  for (size_t t = 0; t < n; ++t) {
    x[t].assign(f.w.begin() + long(f.emb + size_t(tokens[t]) * dim),
                f.w.begin() + long(f.emb + size_t(tokens[t]) * dim + dim));
  }
  auto rope = [&](std::vector<double>& v, size_t pos) {
    for (size_t i = 0; i < v.size(); i += 2) {
      const double j = double(i % hs);
      const double angle = double(pos) * std::pow(10000.0, -j / double(hs));
      const double a = v[i], b = v[i + 1];
      v[i] = a * std::cos(angle) - b * std::sin(angle);
      v[i + 1] = a * std::sin(angle) + b * std::cos(angle);
    }
  };
  for (size_t l = 0; l < size_t(f.layers); ++l) {
    std::vector<std::vector<double>> q(n), k(n), v(n);
    for (size_t t = 0; t < n; ++t) {
      const std::vector<double> xb = rmsnorm(f, f.rms_att + l * dim, x[t]);
      q[t] = matvec_as(f, kQ8Wq, f.wq + l * dim * dim, dim, dim, xb);
      k[t] = matvec_as(f, kQ8Wk, f.wk + l * kv * dim, kv, dim, xb);
      v[t] = matvec_as(f, kQ8Wv, f.wv + l * kv * dim, kv, dim, xb);
      rope(q[t], t);
      rope(k[t], t);
    }
    for (size_t t = 0; t < n; ++t) {
      std::vector<double> heads(dim, 0.0);
      for (size_t h = 0; h < size_t(f.heads); ++h) {
        const size_t kvh = h / group;
        std::vector<double> s(t + 1);
        double m = -INFINITY, sum = 0;
        for (size_t j = 0; j <= t; ++j) {
          double dot = 0;
          for (size_t d = 0; d < hs; ++d) dot += q[t][h * hs + d] * k[j][kvh * hs + d];
          s[j] = dot / std::sqrt(double(hs));
          m = std::max(m, s[j]);
        }
        for (double& e : s) sum += (e = std::exp(e - m));
        for (size_t j = 0; j <= t; ++j) {
          for (size_t d = 0; d < hs; ++d) heads[h * hs + d] += s[j] / sum * v[j][kvh * hs + d];
        }
      }
      const std::vector<double> o = matvec_as(f, kQ8Wo, f.wo + l * dim * dim, dim, dim, heads);
      for (size_t i = 0; i < dim; ++i) x[t][i] += o[i];
    }
    for (size_t t = 0; t < n; ++t) {
      const std::vector<double> xb = rmsnorm(f, f.rms_ffn + l * dim, x[t]);
      std::vector<double> h1 = matvec_as(f, kQ8W1, f.w1 + l * hid * dim, hid, dim, xb);
      const std::vector<double> h3 = matvec_as(f, kQ8W3, f.w3 + l * hid * dim, hid, dim, xb);
      for (size_t i = 0; i < hid; ++i) h1[i] = h1[i] / (1.0 + std::exp(-h1[i])) * h3[i];
      const std::vector<double> down = matvec_as(f, kQ8W2, f.w2 + l * dim * hid, dim, hid, h1);
      for (size_t i = 0; i < dim; ++i) x[t][i] += down[i];
    }
  }
  std::vector<std::vector<double>> logits(n);
  for (size_t t = 0; t < n; ++t) {
    logits[t] = matvec_as(f, kQ8Cls, f.cls, size_t(f.vocab), dim, rmsnorm(f, f.rms_final, x[t]));
  }
  return logits;
}

}  // namespace reference
