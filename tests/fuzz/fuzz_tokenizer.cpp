// libFuzzer target: the llama2.c tokenizer reader, then encode and decode.
// The first two bytes choose the vocabulary size (259..65794); the rest is
// the file. A file that loads encodes the input itself as text and decodes it.
#include <kvattn/io/llama2c.hpp>

#include <cstdint>
#include <sstream>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const int vocab = 259 + (int(data[0]) | int(data[1]) << 8);
  const std::string file(reinterpret_cast<const char*>(data + 2), size - 2);
  std::istringstream in(file);
  try {
    const kvattn::Tokenizer tok =
        kvattn::read_llama2c_tokenizer(in, file.size(), "fuzz.bin", vocab);
    const std::vector<int> ids = tok.encode(file.substr(0, 256));
    for (int id : ids) {
      if (id < 0 || id >= tok.vocab_size()) __builtin_trap();
    }
    (void)tok.decode(ids);
  } catch (const std::runtime_error&) {
  }
  return 0;
}
