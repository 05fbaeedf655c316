// generate: run a llama2.c checkpoint or a Llama GGUF file with kvattn.
//
//   generate MODEL.bin|MODEL.gguf [-z TOKENIZER.bin] [-n N] [-t T] [-p P] [-s SEED]
//            [-i TEXT | --prompt-ids "ID ID ..."] [--print-ids] [--no-cache]
//            [--weights stored|f32|bf16|f16|q8_0|q4_0]
//
// BOS (id 1) is put first; the prompt is processed with one batched prefill,
// then one step per token. Position p yields the token for position p + 1:
// the prompt's own next token while inside the prompt, the sampler's choice
// after it. Generation stops when the model produces BOS (or a GGUF file's
// EOS id) or after N positions.
#include <kvattn/io/model_file.hpp>
#include <kvattn/kvattn.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

void usage(const char* argv0) {
  std::fprintf(
      stderr,
      "usage: %s MODEL.bin [options]\n"
      "  -z PATH            tokenizer file (without it, output is ids)\n"
      "  -n N               positions run through the model, BOS included\n"
      "                     (default: seq_len; a GGUF file's context_length, at most 4096)\n"
      "                     (default and maximum: the model's seq_len)\n"
      "  -t T               temperature, 0 = greedy (default 0)\n"
      "  -p P               top-p in (0, 1] (default 0.9)\n"
      "  -s SEED            random seed (default: time)\n"
      "  -i TEXT            prompt text (needs -z, or a GGUF file's tokenizer)\n"
      "  --prompt-ids IDS   prompt as ids, e.g. \"368 430 281\"\n"
      "  --print-ids        print each token id after BOS, one per line\n"
      "  --no-cache         recompute the whole sequence every step (slow)\n"
      "  --weights W        keep the matrices as stored in the file (default for\n"
      "                     GGUF: its Q8_0, Q4_0, F16 ... multiplied as stored),\n"
      "                     f32 (default for llama2.c files), bf16 or f16, or\n"
      "                     quantized at load to q8_0 or q4_0 (fewer bytes a step\n"
      "                     reads; logits move by the rounding, see the README)\n"
      "  --save-state FILE  at the end, save the state (caches and tokens) to FILE\n"
      "  --load-state FILE  resume a saved state (the prompt options are ignored)\n",
      argv0);
  std::exit(2);
}

bool parse_long(const char* s, long& out) {
  char* end = nullptr;
  out = std::strtol(s, &end, 10);
  return end != s && *end == '\0';
}
bool parse_double(const char* s, double& out) {
  char* end = nullptr;
  out = std::strtod(s, &end);
  return end != s && *end == '\0';
}

struct Options {
  std::string model, tokenizer, prompt_text, prompt_ids, save_state, load_state;
  std::string weights;  // empty: stored for GGUF files, f32 otherwise
  long steps = 0;
  double temperature = 0.0, top_p = 0.9;
  unsigned long long seed = 0;
  bool has_text = false, has_ids = false, print_ids = false, no_cache = false;
};

Options parse(int argc, char** argv) {
  Options o;
  if (argc < 2 || argv[1][0] == '-') usage(argv[0]);
  o.model = argv[1];
  o.seed =
      static_cast<unsigned long long>(std::chrono::steady_clock::now().time_since_epoch().count());
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage(argv[0]);
      return argv[++i];
    };
    long l = 0;
    double d = 0;
    if (a == "-z") {
      o.tokenizer = value();
    } else if (a == "-n") {
      if (!parse_long(value(), l) || l < 1) usage(argv[0]);
      o.steps = l;
    } else if (a == "-t") {
      if (!parse_double(value(), d) || !(d >= 0)) usage(argv[0]);
      o.temperature = d;
    } else if (a == "-p") {
      if (!parse_double(value(), d) || !(d > 0 && d <= 1)) usage(argv[0]);
      o.top_p = d;
    } else if (a == "-s") {
      if (!parse_long(value(), l) || l < 0) usage(argv[0]);
      o.seed = static_cast<unsigned long long>(l);
    } else if (a == "-i") {
      o.prompt_text = value();
      o.has_text = true;
    } else if (a == "--prompt-ids") {
      o.prompt_ids = value();
      o.has_ids = true;
    } else if (a == "--print-ids") {
      o.print_ids = true;
    } else if (a == "--no-cache") {
      o.no_cache = true;
    } else if (a == "--weights") {
      o.weights = value();
      if (o.weights != "stored" && o.weights != "f32" && o.weights != "bf16" &&
          o.weights != "f16" && o.weights != "q8_0" && o.weights != "q4_0")
        usage(argv[0]);
    } else if (a == "--save-state") {
      o.save_state = value();
    } else if (a == "--load-state") {
      o.load_state = value();
    } else {
      usage(argv[0]);
    }
  }
  if (o.has_text && o.has_ids) usage(argv[0]);

  if (o.no_cache && !(o.save_state.empty() && o.load_state.empty())) usage(argv[0]);
  return o;
}

// The state file of generate: the model's LlamaState (every layer's KV cache),
// then the tokens fed so far and the next token (int32 count, int32 ids).
void save_generation(const std::string& path, const kvattn::LlamaState<float>& state,
                     std::vector<int> tokens, int next) {
  tokens.push_back(next);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(path + ": cannot open " + tmp + " for writing");
    state.save(out);
    const int32_t n = int32_t(tokens.size());
    out.write(reinterpret_cast<const char*>(&n), 4);
    out.write(reinterpret_cast<const char*>(tokens.data()), std::streamsize(tokens.size() * 4));
    if (!out.flush()) throw std::runtime_error(path + ": writing failed");
  }
  std::filesystem::rename(tmp, path);  // a crash before this line keeps the old file
}

// Returns the tokens fed so far, followed by the next token.
std::vector<int> load_generation(const std::string& path, kvattn::LlamaState<float>& state,
                                 long vocab) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  kvattn::LlamaState<float> loaded = state.copy();
  loaded.load(in, path);
  int32_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 4);
  if (!in || n != loaded.pos() + 1)
    throw std::runtime_error(path + ": the token list does not match the state");
  std::vector<int> tokens(static_cast<size_t>(n));
  in.read(reinterpret_cast<char*>(tokens.data()), std::streamsize(tokens.size() * 4));
  if (!in) throw std::runtime_error(path + ": truncated token list");
  for (int t : tokens) {
    if (t < 0 || t >= vocab) throw std::runtime_error(path + ": token id out of range");
  }
  state = std::move(loaded);
  return tokens;
}

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// What a model file brings besides its weights.
struct Extras {
  std::unique_ptr<kvattn::Tokenizer> tokenizer;  // a GGUF file's own
  int eos = kvattn::Tokenizer::kBos;             // generation also stops at this id
  bool gguf = false;
};

// Generates with a model whose matrices are kept as Model::WeightType.
template <class Model>
int run(Model& model, const Options& opt, Extras& extras, const char* argv0) {
  {
    const kvattn::LlamaConfig& c = model.config();
    std::unique_ptr<kvattn::Tokenizer> tok = std::move(extras.tokenizer);
    if (!opt.tokenizer.empty()) {
      tok = std::make_unique<kvattn::Tokenizer>(
          kvattn::read_llama2c_tokenizer(opt.tokenizer, int(c.vocab_size)));
    }
    if (opt.has_text && !tok) {
      std::fprintf(stderr, "-i needs a tokenizer (-z, or a GGUF file's own)\n");
      usage(argv0);
    }
    // The KV cache is allocated for every position up front: a GGUF file's
    // context_length (128 k for some) is not a default to allocate for.
    const long default_steps = extras.gguf ? std::min<long>(c.seq_len, 4096) : long(c.seq_len);
    const long steps = opt.steps == 0 ? default_steps : opt.steps;
    if (steps > c.seq_len && !extras.gguf) {
      std::fprintf(stderr, "-n %ld exceeds the model's seq_len %ld\n", steps, long(c.seq_len));
      usage(argv0);
    }
    if (steps > c.seq_len) {  // GGUF: context_length is advice (llama2.c conversions say 128)
      std::fprintf(stderr, "warning: -n %ld exceeds the file's context_length %ld\n", steps,
                   long(c.seq_len));
    }

    // The prompt: BOS, then the text's or the given ids.
    std::vector<int> prompt{kvattn::Tokenizer::kBos};
    if (opt.has_text) {
      prompt = tok->encode(opt.prompt_text, /*bos=*/true);
    } else if (opt.has_ids) {
      std::istringstream ids(opt.prompt_ids);
      std::string word;
      while (ids >> word) {
        long id = 0;
        if (!parse_long(word.c_str(), id) || id < 0 || id >= c.vocab_size) {
          std::fprintf(stderr, "--prompt-ids: '%s' is not a token id in [0, %ld)\n", word.c_str(),
                       long(c.vocab_size));
          usage(argv0);
        }
        prompt.push_back(int(id));
      }
    }

    kvattn::Sampler sampler(opt.temperature, opt.top_p, opt.seed);
    kvattn::LlamaState<float> state = model.make_state(steps);
    std::vector<int> sequence;  // every token fed so far
    auto emit = [&](int prev, int next) {
      if (opt.print_ids) {
        std::printf("%d\n", next);
      } else if (tok) {
        std::fputs(tok->decode(prev, next).c_str(), stdout);
      } else {
        std::printf("%d ", next);
      }
      std::fflush(stdout);
    };

    long pos = 0;  // position of the last token fed
    int next = 0;  // the token that follows it
    bool resumed = false;
    double prefill_s = 0;
    long n_prompt = 0;
    kvattn::Vector<float> logits;
    if (!opt.load_state.empty()) {
      // Resume: the saved state already holds every fed token; `next` was emitted before saving.
      std::vector<int> saved = load_generation(opt.load_state, state, long(c.vocab_size));
      next = saved.back();
      saved.pop_back();
      sequence = saved;
      pos = long(sequence.size()) - 1;
      prompt = sequence;
      resumed = true;
    } else {
      // Prefill: the prompt positions that fit, in one batched pass.
      n_prompt = std::min<long>(long(prompt.size()), steps);
      sequence.assign(prompt.begin(), prompt.begin() + n_prompt);
      const auto t_prefill = Clock::now();
      if (opt.no_cache) {
        logits = model.forward(sequence, state).bottomRows(1).transpose();
      } else {
        logits = model.prefill(sequence, state);
      }
      prefill_s = seconds_since(t_prefill);
      for (long p = 0; p + 1 < n_prompt; ++p) emit(prompt[size_t(p)], prompt[size_t(p + 1)]);
      pos = n_prompt - 1;
      next =
          pos + 1 < long(prompt.size()) ? prompt[size_t(pos + 1)] : sampler.sample<float>(logits);
    }
    const auto t_decode = Clock::now();
    long decoded = 0;
    while (next != kvattn::Tokenizer::kBos && next != extras.eos) {
      if (!resumed) emit(sequence.back(), next);
      resumed = false;
      if (pos + 1 >= steps) break;
      sequence.push_back(next);
      ++pos;
      if (opt.no_cache) {
        kvattn::LlamaState<float> fresh = model.make_state(steps);
        logits = model.forward(sequence, fresh).bottomRows(1).transpose();
      } else {
        logits = model.step(next, state);
      }
      ++decoded;
      next =
          pos + 1 < long(prompt.size()) ? prompt[size_t(pos + 1)] : sampler.sample<float>(logits);
    }
    if (!opt.save_state.empty()) save_generation(opt.save_state, state, sequence, next);
    const double decode_s = seconds_since(t_decode);
    if (!opt.print_ids) std::printf("\n");
    std::fflush(stdout);
    std::fprintf(stderr,
                 "prefill: %ld tokens, %.1f tokens/s; decode: %ld tokens, %.1f tokens/s%s\n",
                 n_prompt, n_prompt / std::max(prefill_s, 1e-9), decoded,
                 decoded / std::max(decode_s, 1e-9), opt.no_cache ? " (no cache)" : "");
    return 0;
  }
}

// The tokenizer and stop id a model file brings.
template <class M>
Extras extras_of(kvattn::ModelFile<float, M>& file) {
  Extras extras;
  if (file.tokenizer)
    extras.tokenizer = std::make_unique<kvattn::Tokenizer>(std::move(*file.tokenizer));
  extras.eos = file.eos;
  extras.gguf = file.gguf;
  return extras;
}

// Weights kept as StoredMatrix: as the file stores them, or quantized at load.
int run_stored(const Options& opt, const char* argv0) {
  const bool quantize = opt.weights == "q8_0" || opt.weights == "q4_0";
  kvattn::ModelFile<float, kvattn::StoredMatrix> file;
  if (quantize) {
    kvattn::ModelFile<float> dense = kvattn::read_model_file<float>(opt.model);
    file.weights = kvattn::to_stored(
        std::move(dense.weights), opt.weights == "q8_0" ? kvattn::ggml::Q8_0 : kvattn::ggml::Q4_0);
    file.tokenizer = std::move(dense.tokenizer);
    file.eos = dense.eos;
    file.gguf = dense.gguf;
  } else {
    file = kvattn::read_model_file_stored(opt.model);
  }
  Extras extras = extras_of(file);
  kvattn::Llama<float, kvattn::Stored> model(std::move(file.weights));
  return run(model, opt, extras, argv0);
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  try {
    if (opt.weights == "stored" || opt.weights == "q8_0" || opt.weights == "q4_0" ||
        (opt.weights.empty() && kvattn::is_gguf_file(opt.model))) {
      return run_stored(opt, argv[0]);
    }
    kvattn::ModelFile<float> file = kvattn::read_model_file<float>(opt.model);
    Extras extras = extras_of(file);
    kvattn::LlamaWeights<float> weights = std::move(file.weights);
    if (opt.weights == "bf16") {
      kvattn::Llama<float, Eigen::bfloat16> model(std::move(weights));
      return run(model, opt, extras, argv[0]);
    }
    if (opt.weights == "f16") {
      kvattn::Llama<float, Eigen::half> model(std::move(weights));
      return run(model, opt, extras, argv[0]);
    }
    kvattn::Llama<float> model(std::move(weights));
    return run(model, opt, extras, argv[0]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "generate: %s\n", e.what());
    return 1;
  }
}
