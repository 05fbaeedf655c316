#pragma once
// Helpers shared by the tests: seeded random data, conversions, and a
// comparison that reports the first coordinate that differs.

#include <kvattn/layers/multi_head_attention.hpp>
#include <kvattn/models/llama.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <sstream>
#include <string>

namespace test {

template <class T>
kvattn::RowMatrix<T> random_matrix(Eigen::Index rows, Eigen::Index cols, std::mt19937& rng,
                                   double scale = 1.0) {
  std::uniform_real_distribution<double> u(-scale, scale);
  kvattn::RowMatrix<T> m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(u(rng));
  return m;
}

template <class T>
kvattn::Vector<T> random_vector(Eigen::Index n, std::mt19937& rng, double scale = 1.0) {
  kvattn::RowMatrix<T> m = random_matrix<T>(n, 1, rng, scale);
  return Eigen::Map<kvattn::Vector<T>>(m.data(), n);
}

// Random weights for a config, scaled like a trained layer (~1/sqrt(fan_in)).
template <class T>
kvattn::AttentionWeights<T> random_weights(const kvattn::AttentionConfig& c, std::mt19937& rng,
                                           bool bias = false) {
  const double s_in = 1.0 / std::sqrt(double(c.d_model));
  const double s_out = 1.0 / std::sqrt(double(c.q_dim()));
  kvattn::AttentionWeights<T> w;
  w.wq = random_matrix<T>(c.q_dim(), c.d_model, rng, s_in);
  w.wk = random_matrix<T>(c.kv_dim(), c.d_model, rng, s_in);
  w.wv = random_matrix<T>(c.kv_dim(), c.d_model, rng, s_in);
  w.wo = random_matrix<T>(c.d_model, c.q_dim(), rng, s_out);
  if (bias) {
    w.bq = random_vector<T>(c.q_dim(), rng, 0.5);
    w.bk = random_vector<T>(c.kv_dim(), rng, 0.5);
    w.bv = random_vector<T>(c.kv_dim(), rng, 0.5);
    w.bo = random_vector<T>(c.d_model, rng, 0.5);
  }
  return w;
}

// Random weights of a small Llama (unit norms), for tests that need a model
// without the shared checkpoints.
inline kvattn::LlamaWeights<float> random_llama(Eigen::Index dim, Eigen::Index hidden,
                                                Eigen::Index layers, Eigen::Index heads,
                                                Eigen::Index kv_heads, Eigen::Index vocab,
                                                std::mt19937& rng) {
  kvattn::LlamaWeights<float> w;
  w.config.dim = dim;
  w.config.hidden_dim = hidden;
  w.config.n_layers = layers;
  w.config.n_heads = heads;
  w.config.n_kv_heads = kv_heads;
  w.config.vocab_size = vocab;
  w.config.seq_len = 32;
  w.token_embedding = random_matrix<float>(vocab, dim, rng);
  w.final_norm = kvattn::Vector<float>::Ones(dim);
  for (Eigen::Index l = 0; l < layers; ++l) {
    kvattn::LlamaLayerWeights<float> lw;
    lw.attention_norm = kvattn::Vector<float>::Ones(dim);
    lw.ffn_norm = kvattn::Vector<float>::Ones(dim);
    lw.attention = random_weights<float>(w.config.attention(), rng);
    lw.w1 = random_matrix<float>(hidden, dim, rng, 0.3);
    lw.w2 = random_matrix<float>(dim, hidden, rng, 0.3);
    lw.w3 = random_matrix<float>(hidden, dim, rng, 0.3);
    w.layers.push_back(lw);
  }
  return w;
}

template <class To, class From>
kvattn::AttentionWeights<To> cast_weights(const kvattn::AttentionWeights<From>& w) {
  return {w.wq.template cast<To>(), w.wk.template cast<To>(), w.wv.template cast<To>(),
          w.wo.template cast<To>(), w.bq.template cast<To>(), w.bk.template cast<To>(),
          w.bv.template cast<To>(), w.bo.template cast<To>()};
}

// Relative tolerance for comparing a T computation with a double reference.
template <class T>
double tolerance() {
  return std::is_same<T, float>::value ? 1e-5 : 1e-12;
}

// Passes when max|a - b| <= tol * max(1, max|b|) (b is the reference);
// otherwise reports the first coordinate past that bound.
template <class A, class B>
::testing::AssertionResult close(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b,
                                 double tol) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) {
    return ::testing::AssertionFailure()
           << "shape " << a.rows() << "x" << a.cols() << " vs " << b.rows() << "x" << b.cols();
  }
  const auto ad = a.template cast<double>().eval();
  const auto bd = b.template cast<double>().eval();
  const double bound = tol * std::max(1.0, bd.cwiseAbs().maxCoeff());
  for (Eigen::Index i = 0; i < ad.rows(); ++i) {
    for (Eigen::Index j = 0; j < ad.cols(); ++j) {
      const double diff = std::abs(ad(i, j) - bd(i, j));
      if (!(diff <= bound)) {
        return ::testing::AssertionFailure()
               << "first difference at (" << i << ", " << j << "): " << ad(i, j) << " vs "
               << bd(i, j) << ", |diff| = " << diff << " > bound " << bound;
      }
    }
  }
  return ::testing::AssertionSuccess();
}

// Expects `call` to throw E whose what() contains every one of `parts`.
template <class E, class F>
void expect_throw_with(F&& call, std::initializer_list<std::string> parts) {
  try {
    call();
    ADD_FAILURE() << "expected an exception";
  } catch (const E& e) {
    const std::string what = e.what();
    for (const std::string& p : parts) {
      EXPECT_NE(what.find(p), std::string::npos)
          << "message \"" << what << "\" lacks \"" << p << "\"";
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type, message: " << e.what();
  }
}

using ScalarTypes = ::testing::Types<float, double>;

}  // namespace test
