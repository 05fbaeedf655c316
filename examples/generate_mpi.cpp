// generate_mpi: generate's greedy and sampled decoding with the model split
// across MPI ranks (tensor parallelism: dist::ShardedLlama). Every rank reads
// only its slices of the checkpoint; rank 0 prints.
//
//   mpirun -np R ./build/examples/generate_mpi MODEL.bin [-z TOKENIZER.bin] [-n N]
//          [-t T] [-p P] [-s SEED] [-i TEXT | --prompt-ids "ID ..."] [--print-ids]
//
// The tokens are generate's for the same options: every rank gets all the
// logits and draws with the same seed. A rank that fails prints why and ends
// the whole job (MPI_Abort); --die-at-step K (for testing) makes the last
// rank kill itself at step K, which ends the job too.
#include <kvattn/dist/sharded_llama.hpp>
#include <kvattn/kvattn.hpp>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Options {
  std::string model, tokenizer, text, ids;
  long steps = 0, die_at = -1;
  double temperature = 0.0, top_p = 0.9;
  unsigned long long seed = 1;
  bool has_text = false, has_ids = false, print_ids = false;
};

[[noreturn]] void usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: mpirun -np R %s MODEL.bin [-z TOKENIZER] [-n N] [-t T] [-p P] [-s SEED]\n"
               "       [-i TEXT | --prompt-ids IDS] [--print-ids] [--die-at-step K]\n",
               argv0);
  MPI_Finalize();
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  if (argc < 2 || argv[1][0] == '-') usage(argv[0]);
  o.model = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(argv[0]);
      return argv[++i];
    };
    if (a == "-z")
      o.tokenizer = value();
    else if (a == "-n")
      o.steps = std::stol(value());
    else if (a == "-t")
      o.temperature = std::stod(value());
    else if (a == "-p")
      o.top_p = std::stod(value());
    else if (a == "-s")
      o.seed = std::stoull(value());
    else if (a == "-i")
      o.text = value(), o.has_text = true;
    else if (a == "--prompt-ids")
      o.ids = value(), o.has_ids = true;
    else if (a == "--print-ids")
      o.print_ids = true;
    else if (a == "--die-at-step")
      o.die_at = std::stol(value());
    else
      usage(argv[0]);
  }
  if (o.has_text && (o.has_ids || o.tokenizer.empty())) usage(argv[0]);
  return o;
}

int run(kvattn::dist::Communicator& comm, const Options& opt) {
  auto model = kvattn::dist::ShardedLlama<float>::read_llama2c(comm, opt.model);
  const kvattn::LlamaConfig& c = model.config();
  std::unique_ptr<kvattn::Tokenizer> tok;
  if (!opt.tokenizer.empty()) {
    tok = std::make_unique<kvattn::Tokenizer>(
        kvattn::read_llama2c_tokenizer(opt.tokenizer, int(c.vocab_size)));
  }
  const long steps = opt.steps > 0 ? std::min<long>(opt.steps, long(c.seq_len)) : long(c.seq_len);
  std::vector<int> prompt{kvattn::Tokenizer::kBos};
  if (opt.has_text) prompt = tok->encode(opt.text, true);
  if (opt.has_ids) {
    std::istringstream words(opt.ids);
    for (long id; words >> id;) prompt.push_back(int(id));
  }
  const bool root = comm.rank() == 0;
  auto emit = [&](int prev, int next) {
    if (!root) return;
    if (opt.print_ids) {
      std::printf("%d\n", next);
    } else if (tok) {
      std::fputs(tok->decode(prev, next).c_str(), stdout);
    } else {
      std::printf("%d ", next);
    }
    std::fflush(stdout);
  };
  kvattn::Sampler sampler(opt.temperature, opt.top_p, opt.seed);
  auto state = model.make_state(steps);
  const long n_prompt = std::min<long>(long(prompt.size()), steps);
  std::vector<int> fed(prompt.begin(), prompt.begin() + n_prompt);
  kvattn::Vector<float> logits = model.prefill(fed, state);
  for (long p = 0; p + 1 < n_prompt; ++p) emit(prompt[size_t(p)], prompt[size_t(p + 1)]);
  long pos = n_prompt - 1;
  int next =
      pos + 1 < long(prompt.size()) ? prompt[size_t(pos + 1)] : sampler.sample<float>(logits);
  while (next != kvattn::Tokenizer::kBos) {
    emit(fed.back(), next);
    if (pos + 1 >= steps) break;
    if (pos == opt.die_at && comm.rank() == comm.size() - 1) std::raise(SIGKILL);
    fed.push_back(next);
    ++pos;
    logits = model.step(next, state);
    next = pos + 1 < long(prompt.size()) ? prompt[size_t(pos + 1)] : sampler.sample<float>(logits);
  }
  if (root && !opt.print_ids) std::printf("\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const Options opt = parse(argc, argv);
  kvattn::dist::Communicator comm;
  int rc = 0;
  try {
    rc = run(comm, opt);
  } catch (const std::exception& e) {
    comm.abort(std::string("generate_mpi: ") + e.what());
  }
  MPI_Finalize();
  return rc;
}
