// batch_generate: many prompts at once through one paged KV cache, greedy,
// with continuous batching.
//
//   batch_generate MODEL.bin|MODEL.gguf [-z TOKENIZER.bin] --prompts FILE [-n N]
//                  [--max-batch B] [--blocks N] [--block-tokens N] [--print-ids]
//
// FILE holds one prompt per line (text with a tokenizer: -z, or a GGUF
// file's own; else space-separated ids);
// BOS goes first. Every call of Llama::forward_batch carries the decode
// token of each running sequence and the whole prompt of each sequence
// admitted since the last call; a sequence that finishes (it produced BOS,
// or a GGUF file's EOS id, or reached N positions) frees its blocks at once and the next waiting
// prompt joins. A prompt is admitted only when the pool can hold it up to N
// positions beside the running ones, so no running sequence ever waits for
// a block; with a small pool prompts wait their turn. Completions print in
// input order: "#k", then the text (or, with --print-ids, one id per line,
// exactly as `generate --print-ids` prints them for that prompt alone).
#include <kvattn/io/model_file.hpp>
#include <kvattn/kvattn.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

void usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s MODEL.bin --prompts FILE [options]\n"
               "  -z PATH             tokenizer (prompts are text; without it, ids)\n"
               "  --prompts FILE      one prompt per line\n"
               "  -n N                positions per sequence, BOS included (default: seq_len;\n"
               "                      a GGUF file's context_length, at most 4096)\n"
               "  --max-batch B       sequences running at once (default 16)\n"
               "  --blocks N          blocks in the KV pool (default: max-batch sequences of N)\n"
               "  --block-tokens N    positions per block, a multiple of 16 (default 16)\n"
               "  --print-ids         print ids, one per line, after a line #k per prompt\n",
               argv0);
  std::exit(2);
}

bool parse_long(const char* s, long& out) {
  char* end = nullptr;
  out = std::strtol(s, &end, 10);
  return end != s && *end == '\0';
}

struct Options {
  std::string model, tokenizer, prompts;
  long steps = 0, max_batch = 16, blocks = 0, block_tokens = 16;
  bool print_ids = false;
};

Options parse(int argc, char** argv) {
  Options o;
  if (argc < 2 || argv[1][0] == '-') usage(argv[0]);
  o.model = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage(argv[0]);
      return argv[++i];
    };
    long l = 0;
    auto positive = [&](long& field) {
      if (!parse_long(value(), l) || l < 1) usage(argv[0]);
      field = l;
    };
    if (a == "-z") {
      o.tokenizer = value();
    } else if (a == "--prompts") {
      o.prompts = value();
    } else if (a == "-n") {
      positive(o.steps);
    } else if (a == "--max-batch") {
      positive(o.max_batch);
    } else if (a == "--blocks") {
      positive(o.blocks);
    } else if (a == "--block-tokens") {
      positive(o.block_tokens);
      if (o.block_tokens % 16 != 0) usage(argv[0]);
    } else if (a == "--print-ids") {
      o.print_ids = true;
    } else {
      usage(argv[0]);
    }
  }
  if (o.prompts.empty()) usage(argv[0]);
  return o;
}

// One prompt's generation, following generate's conventions.
struct Sequence {
  std::vector<int> prompt;  // BOS first
  std::vector<int> out;     // what generate --print-ids prints: ids after BOS
  kvattn::SeqId seq = 0;
  long pos = 0;  // position of the last token fed
  int next = 0;  // the token that follows it
  bool done = false;
};

int argmax(const float* x, Eigen::Index n) { return int(std::max_element(x, x + n) - x); }

// After the logits of position `pos` (sequence s, row r of logits): emit and
// decide what to feed next; returns false when the sequence is finished.
bool advance(Sequence& s, const float* logits, Eigen::Index vocab, long steps, int eos) {
  s.next = s.pos + 1 < long(s.prompt.size()) ? s.prompt[size_t(s.pos + 1)] : argmax(logits, vocab);
  if (s.next == kvattn::Tokenizer::kBos || s.next == eos) return false;
  s.out.push_back(s.next);
  return s.pos + 1 < steps;
}

std::vector<std::vector<int>> read_prompts(const std::string& path, const kvattn::Tokenizer* tok,
                                           long vocab) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::vector<std::vector<int>> prompts;
  std::string line;
  while (std::getline(in, line)) {
    if (tok) {
      prompts.push_back(tok->encode(line, /*bos=*/true));
      continue;
    }
    std::vector<int> ids{kvattn::Tokenizer::kBos};
    std::istringstream words(line);
    std::string w;
    while (words >> w) {
      long id = 0;
      if (!parse_long(w.c_str(), id) || id < 0 || id >= vocab) {
        throw std::runtime_error(path + ": line " + std::to_string(prompts.size() + 1) + ": '" + w +
                                 "' is not a token id in [0, " + std::to_string(vocab) + ")");
      }
      ids.push_back(int(id));
    }
    prompts.push_back(ids);
  }
  return prompts;
}

// A GGUF file's matrices are kept as stored (Q8_0, Q4_0, F16 ...), as generate keeps them.
template <class Weight, class M>
int run_with(kvattn::ModelFile<float, M> file, const Options& opt) {
  kvattn::Llama<float, Weight> model(std::move(file.weights));
  const kvattn::LlamaConfig& c = model.config();
  std::unique_ptr<kvattn::Tokenizer> tok;
  if (file.tokenizer) tok = std::make_unique<kvattn::Tokenizer>(std::move(*file.tokenizer));
  if (!opt.tokenizer.empty()) {
    tok = std::make_unique<kvattn::Tokenizer>(
        kvattn::read_llama2c_tokenizer(opt.tokenizer, int(c.vocab_size)));
  }
  const long default_steps = file.gguf ? std::min<long>(c.seq_len, 4096) : long(c.seq_len);
  const long steps = opt.steps == 0 ? default_steps : opt.steps;
  if (steps > c.seq_len && !file.gguf) {  // GGUF: context_length is advice
    std::fprintf(stderr, "batch_generate: -n %ld exceeds the model's seq_len %ld\n", steps,
                 long(c.seq_len));
    return 2;
  }
  const long per_seq =
      (steps + opt.block_tokens - 1) / opt.block_tokens;  // blocks a sequence may need
  const long blocks = opt.blocks > 0 ? opt.blocks : per_seq * opt.max_batch;
  if (blocks < per_seq) {
    std::fprintf(
        stderr,
        "batch_generate: --blocks %ld cannot hold one sequence of %ld positions (%ld blocks)\n",
        blocks, steps, per_seq);
    return 1;
  }
  std::vector<Sequence> seqs;
  for (auto& p : read_prompts(opt.prompts, tok.get(), long(c.vocab_size))) {
    seqs.push_back(Sequence{p, {}, 0, 0, 0, false});
  }
  kvattn::PagedKVCache<float> pool = model.make_paged_cache(blocks, opt.block_tokens);

  std::deque<size_t> waiting;
  for (size_t i = 0; i < seqs.size(); ++i) waiting.push_back(i);
  std::vector<size_t> running;
  long reserved = 0, peak_blocks = 0, tokens = 0, generated = 0, calls = 0, waited = 0;
  const auto start = std::chrono::steady_clock::now();
  while (!waiting.empty() || !running.empty()) {
    std::vector<kvattn::SeqTokens> batch;
    std::vector<size_t> owner;
    for (size_t i : running) {  // decode tokens of the running sequences
      batch.push_back({seqs[i].seq, {seqs[i].next}});
      owner.push_back(i);
    }
    while (!waiting.empty() && long(running.size()) < opt.max_batch &&
           reserved + per_seq <= blocks) {
      Sequence& s = seqs[waiting.front()];  // admit: the whole prompt in this call
      s.seq = pool.add_sequence();
      const long n_prompt = std::min<long>(long(s.prompt.size()), steps);
      batch.push_back({s.seq, std::vector<int>(s.prompt.begin(), s.prompt.begin() + n_prompt)});
      owner.push_back(waiting.front());
      for (long p = 1; p < n_prompt; ++p) s.out.push_back(s.prompt[size_t(p)]);
      s.pos = n_prompt - 1 - 1;  // advanced below, like a decode step
      running.push_back(waiting.front());
      waiting.pop_front();
      reserved += per_seq;
    }
    if (!waiting.empty() && long(running.size()) < opt.max_batch) {
      waited = std::max(waited, long(waiting.size()));  // held back by the pool, not the batch size
    }
    const kvattn::RowMatrix<float> logits = model.forward_batch(batch, pool);
    ++calls;
    peak_blocks = std::max<long>(peak_blocks, long(pool.n_blocks() - pool.free_blocks()));
    for (size_t b = 0; b < batch.size(); ++b) {
      Sequence& s = seqs[owner[b]];
      tokens += long(batch[b].tokens.size());
      ++s.pos;
      if (s.pos + 1 >= long(s.prompt.size())) ++generated;
      if (!advance(s, logits.row(Eigen::Index(b)).data(), logits.cols(), steps, file.eos)) {
        s.done = true;
        pool.release(s.seq);
        reserved -= per_seq;
      }
    }
    running.erase(
        std::remove_if(running.begin(), running.end(), [&](size_t i) { return seqs[i].done; }),
        running.end());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  for (size_t k = 0; k < seqs.size(); ++k) {
    std::printf("#%zu\n", k);
    if (opt.print_ids) {
      for (int id : seqs[k].out) std::printf("%d\n", id);
    } else if (tok) {
      int prev = kvattn::Tokenizer::kBos;
      for (int id : seqs[k].out) {
        std::fputs(tok->decode(prev, id).c_str(), stdout);
        prev = id;
      }
      std::printf("\n");
    } else {
      for (int id : seqs[k].out) std::printf("%d ", id);
      std::printf("\n");
    }
  }
  std::fflush(stdout);
  std::fprintf(stderr,
               "sequences: %zu, tokens: %ld (%ld generated) in %ld batched calls, %.1f tokens/s, "
               "peak blocks in use: %ld of %ld\n",
               seqs.size(), tokens, generated, calls, tokens / std::max(seconds, 1e-9), peak_blocks,
               blocks);
  if (waited > 0) {
    std::fprintf(stderr,
                 "the pool of %ld blocks (%ld per sequence of %ld positions) could not hold every "
                 "prompt at once: up to %ld waited for room\n",
                 blocks, per_seq, steps, waited);
  }
  return 0;
}

int run(const Options& opt) {
  if (kvattn::is_gguf_file(opt.model)) {
    return run_with<kvattn::Stored>(kvattn::read_model_file_stored(opt.model), opt);
  }
  return run_with<float>(kvattn::read_model_file<float>(opt.model), opt);
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  try {
    return run(opt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "batch_generate: %s\n", e.what());
    return 1;
  }
}
