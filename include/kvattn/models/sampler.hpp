#pragma once
/// \file
/// Choosing the next token from logits: greedy (temperature 0), or sampling
/// from softmax(logits / temperature) restricted to the smallest set of most
/// likely tokens whose probability reaches top_p (nucleus sampling), with a
/// seeded generator so a run can be repeated exactly.

#include <kvattn/error.hpp>
#include <kvattn/types.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace kvattn {

class Sampler {
 public:
  /// temperature >= 0 (0 = greedy), 0 < top_p <= 1. Throws std::invalid_argument.
  explicit Sampler(double temperature = 0.0, double top_p = 1.0, uint64_t seed = 1)
      : temperature_(temperature), top_p_(top_p), state_(seed != 0 ? seed : 0x9E3779B97F4A7C15ull) {
    detail::check_arg(std::isfinite(temperature) && temperature >= 0, "Sampler", "temperature",
                      temperature, ">= 0");
    detail::check_arg(top_p > 0 && top_p <= 1, "Sampler", "top_p", top_p, "in (0, 1]");
  }

  double temperature() const { return temperature_; }
  double top_p() const { return top_p_; }

  /// Index of the largest logit (the first on ties).
  template <class T>
  static int argmax(const Eigen::Ref<const Vector<T>>& logits) {
    Eigen::Index best = 0;
    logits.maxCoeff(&best);
    return int(best);
  }

  /// The next token for these logits ([vocab_size], non-empty).
  template <class T>
  int sample(const Eigen::Ref<const Vector<T>>& logits) {
    detail::check_arg(logits.size() > 0, "Sampler::sample", "logits.size()", logits.size(), "> 0");
    if (temperature_ == 0.0) return argmax<T>(logits);
    // Probabilities of logits / temperature, largest first.
    const double m = double(logits.maxCoeff());
    probs_.resize(size_t(logits.size()));
    double sum = 0;
    for (Eigen::Index i = 0; i < logits.size(); ++i) {
      const double p = std::exp((double(logits(i)) - m) / temperature_);
      probs_[size_t(i)] = {p, int(i)};
      sum += p;
    }
    std::sort(probs_.begin(), probs_.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    // The nucleus: the shortest prefix whose mass reaches top_p * sum.
    size_t n = 0;
    double mass = 0;
    while (n < probs_.size() && (n == 0 || mass < top_p_ * sum)) mass += probs_[n++].first;
    const double r = uniform() * mass;
    double acc = 0;
    for (size_t i = 0; i < n; ++i) {
      acc += probs_[i].first;
      if (r < acc) return probs_[i].second;
    }
    return probs_[n - 1].second;  // rounding at the very end of the range
  }

 private:
  // xorshift64*, top 53 bits -> [0, 1).
  double uniform() {
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return double((state_ * 0x2545F4914F6CDD1Dull) >> 11) * (1.0 / 9007199254740992.0);
  }

  double temperature_;
  double top_p_;
  uint64_t state_;
  std::vector<std::pair<double, int>> probs_;
};

}  // namespace kvattn
