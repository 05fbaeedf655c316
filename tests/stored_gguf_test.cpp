// The shared GGUF files as stored (Llama<float, kvattn::Stored>) against the
// double reference on the same decoded weights that rounds the inputs of
// Q8_0 / Q4_0 products to Q8_0 as llama.cpp does: a measured max bound and
// an RMS check that tells the rounding from its absence (docs/gguf.md).
#include <kvattn/io/gguf_llama.hpp>
#include <kvattn/models/llama.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gguf_reference.hpp"
#include "models.hpp"

namespace {

using kvattn::RowMatrix;
using kvattn::StoredMatrix;
namespace ggml = kvattn::ggml;
// The shared GGUF files as stored, against the double reference on the same
// decoded weights in which the input of every Q8_0 / Q4_0 product is rounded
// to Q8_0 blocks (llama.cpp's arithmetic). Bound per position: kBound
// max(1, max |reference logit|). kvattn rounds float activations where the
// reference rounds doubles, so an activation near a rounding boundary can take
// the neighbouring code: one term of a product moves by its scale d = max|x| / 127
// times the weight, which the bound covers; the float-only files keep 1e-4.
// Logits of float-weight files agree to float summation error.
constexpr double kFloatBound = 1e-4;
// kvattn's RMS distance from the Q8-activation reference, as a fraction of
// that reference's RMS distance from the one without the rounding.
constexpr double kRmsFraction = 0.5;

// Largest |a - b| / max(1, max|b|) over positions and tokens.
double scaled_gap(const std::vector<std::vector<double>>& a,
                  const std::vector<std::vector<double>>& b) {
  double gap = 0;
  for (size_t p = 0; p < b.size(); ++p) {
    double scale = 1;
    for (double v : b[p]) scale = std::max(scale, std::abs(v));
    for (size_t v = 0; v < b[p].size(); ++v)
      gap = std::max(gap, std::abs(a[p][v] - b[p][v]) / scale);
  }
  return gap;
}

// Root mean square of (a - b) / max(1, max|b|) over positions and tokens.
double scaled_rms(const RowMatrix<float>& a, const std::vector<std::vector<double>>& b) {
  double sum = 0;
  size_t n = 0;
  for (size_t p = 0; p < b.size(); ++p) {
    double scale = 1;
    for (double v : b[p]) scale = std::max(scale, std::abs(v));
    for (size_t v = 0; v < b[p].size(); ++v, ++n) {
      const double e = (a(Eigen::Index(p), Eigen::Index(v)) - b[p][v]) / scale;
      sum += e * e;
    }
  }
  return std::sqrt(sum / double(n));
}

// How far float-sized differences in the inputs of Q8_0 rounding can move
// the logits. kvattn computes those inputs in float, the reference in
// double; where one lands within float rounding of a code boundary the two
// pick neighbouring codes, and on these 64-wide models a flipped code moves
// the logits about as much as the Q8 rounding as a whole does (numbers in
// docs/gguf.md). So the reference measures its own sensitivity: it reruns
// with every such input scaled by 1 +- 2^-17 (more than the float error of
// kvattn's activations, so at least as many codes flip), and the bound is
// the float bound plus twice the largest change seen over four such runs.
double flip_bound(reference::LlamaFile ref, const std::vector<int>& tokens,
                  const std::vector<std::vector<double>>& want) {
  double spread = 0;
  ref.q8_jitter = std::ldexp(1.0, -17);
  for (std::uint64_t seed = 1; seed <= 4; ++seed) {
    ref.jitter_seed = seed * 0x2545F4914F6CDD1Dull;
    spread = std::max(spread, scaled_gap(reference::llama_logits(ref, tokens), want));
  }
  return kFloatBound + 2 * spread;
}

TEST(StoredLlama, SharedGgufFilesMatchTheQ8ActivationReference) {
  const std::string dir = test::model_path("gguf");
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "shared GGUF files not found in " << dir;
  for (const char* model : {"aidreams260K", "stories260K"}) {
    for (const char* type : {"f32", "f16", "bf16", "q8_0", "q4_0", "q5_1"}) {
      const std::string path = dir + "/" + model + "-" + type + ".gguf";
      const auto file = std::make_shared<const kvattn::GgufFile>(kvattn::GgufFile::open(path));
      kvattn::LlamaWeights<float, StoredMatrix> sw = kvattn::gguf_llama_stored_weights(file);
      // The reference: the file's matrices decoded by the dense reader
      // (gguf_llama_weights, not StoredMatrix), the inputs of the products
      // whose tensors are Q8_0 / Q4_0 rounded to Q8_0 (the shared files use
      // one type per kind of matrix in every layer).
      const kvattn::LlamaWeights<float> dw = kvattn::gguf_llama_weights<float>(*file);
      unsigned q8 = 0;
      auto mark = [&](const std::string& name, unsigned bit) {
        const kvattn::GgufTensor* t = file->find_tensor(name);
        if (t != nullptr && (t->type == ggml::Q8_0 || t->type == ggml::Q4_0)) q8 |= bit;
      };
      mark("blk.0.attn_q.weight", reference::kQ8Wq);
      mark("blk.0.attn_k.weight", reference::kQ8Wk);
      mark("blk.0.attn_v.weight", reference::kQ8Wv);
      mark("blk.0.attn_output.weight", reference::kQ8Wo);
      mark("blk.0.ffn_gate.weight", reference::kQ8W1);
      mark("blk.0.ffn_down.weight", reference::kQ8W2);
      mark("blk.0.ffn_up.weight", reference::kQ8W3);
      mark(dw.classifier.size() != 0 ? "output.weight" : "token_embd.weight", reference::kQ8Cls);
      reference::LlamaFile ref = test::reference_of(dw);
      ref.q8 = q8;
      kvattn::Llama<float, kvattn::Stored> llama(std::move(sw));
      // The max bound above can be as wide as the Q8 rounding's whole effect;
      // the RMS tells them apart. Codes flip rarely, so kvattn sits far closer
      // in RMS to this reference than the reference that skips the rounding.
      reference::LlamaFile unrounded = ref;
      unrounded.q8 = 0;
      double worst = 0, widest = 0, rms = 0, rms_effect = 0;
      int checked = 0, positions = 0;
      for (const std::vector<int>& prompt :
           {std::vector<int>{1}, std::vector<int>{1, 368, 430, 281, 269, 435, 447}}) {
        const std::vector<int> tokens = test::greedy_tokens(llama, prompt, 40);
        kvattn::LlamaState<float> again = llama.make_state(64);
        const RowMatrix<float> got = llama.forward(tokens, again);
        const std::vector<std::vector<double>> want = reference::llama_logits(ref, tokens);
        const double bound = q8 != 0 ? flip_bound(ref, tokens, want) : kFloatBound;
        widest = std::max(widest, bound);
        if (q8 != 0) {
          const std::vector<std::vector<double>> plain = reference::llama_logits(unrounded, tokens);
          RowMatrix<float> plain_f(got.rows(), got.cols());
          for (size_t p = 0; p < plain.size(); ++p)
            for (size_t v = 0; v < plain[p].size(); ++v)
              plain_f(Eigen::Index(p), Eigen::Index(v)) = float(plain[p][v]);
          const double r = scaled_rms(got, want), effect = scaled_rms(plain_f, want);
          rms = std::max(rms, r);
          rms_effect = std::max(rms_effect, effect);
          EXPECT_LT(r, kRmsFraction * effect)
              << path << ": RMS error " << r << " against the rounding's own effect " << effect;
        }
        for (size_t p = 0; p < tokens.size(); ++p) {
          const std::vector<double>& r = want[p];
          const size_t best = size_t(std::max_element(r.begin(), r.end()) - r.begin());
          double scale = 1, second = -1e300;
          for (size_t v = 0; v < r.size(); ++v) {
            scale = std::max(scale, std::abs(r[v]));
            if (v != best) second = std::max(second, r[v]);
          }
          for (size_t v = 0; v < r.size(); ++v) {
            const double err = std::abs(got(Eigen::Index(p), Eigen::Index(v)) - r[v]) / scale;
            worst = std::max(worst, err);
            ASSERT_LE(err, bound) << path << " position " << p << " token " << v;
          }
          if (p + 1 < tokens.size() && p + 1 >= prompt.size()) {
            ++positions;
            if (r[best] - second > 2 * bound * scale) {
              ++checked;
              ASSERT_EQ(tokens[p + 1], int(best)) << path << " position " << p;
            }
          }
        }
      }
      std::printf(
          "%-26s stored: max |logit - reference| / scale %.2e (bound %.2e), RMS %.2e (rounding's "
          "effect %.2e); greedy token checked at %d of %d positions\n",
          (std::string(model) + "-" + type + ".gguf").c_str(), worst, widest, rms, rms_effect,
          checked, positions);
    }
  }
}

}  // namespace
