// libFuzzer target: the llama2.c checkpoint reader on arbitrary bytes. A file
// must load or be rejected with std::runtime_error; one that loads must run.
#include <kvattn/io/llama2c.hpp>
#include <kvattn/models/llama.hpp>

#include <cstdint>
#include <sstream>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  try {
    kvattn::Llama<float> model(kvattn::read_llama2c_checkpoint<float>(in, size, "fuzz.bin"));
    kvattn::LlamaState<float> state = model.make_state(2);
    const kvattn::Vector<float> logits =
        model.prefill({0, int(model.config().vocab_size - 1)}, state);
    if (logits.size() != model.config().vocab_size) __builtin_trap();
  } catch (const std::runtime_error&) {
  }
  return 0;
}
