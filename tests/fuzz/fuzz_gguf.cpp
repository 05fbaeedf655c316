// libFuzzer target: the GGUF reader on arbitrary bytes. A file that parses
// has every tensor's first rows dequantized (the view must lie inside the
// bytes: ASan checks it), and, where it claims to be a Llama model, its
// config, tokenizer and weights read (small shapes only, so that a run
// stays fast). Any std::runtime_error or std::invalid_argument is a clean
// rejection; anything else, or a sanitizer report, is a finding.
#include <kvattn/io/gguf_llama.hpp>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace {

void touch_tensors(const kvattn::GgufFile& f) {
  std::vector<float> row;
  for (const kvattn::GgufTensor& t : f.tensors()) {
    const kvattn::GgmlTypeInfo* info = kvattn::ggml_type_info(t.type);
    if (info == nullptr || t.row_length() % uint64_t(info->block) != 0) continue;
    const uint64_t n = std::min<uint64_t>(t.elements(), 4096) / t.row_length() * t.row_length();
    if (n == 0) continue;
    row.resize(size_t(n));
    kvattn::dequantize_row(t.type, t.data, int64_t(n), row.data());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const kvattn::GgufFile f =
        kvattn::GgufFile::from_buffer(std::vector<char>(reinterpret_cast<const char*>(data),
                                                        reinterpret_cast<const char*>(data) + size),
                                      "fuzz.gguf");
    touch_tensors(f);
    for (const std::string& key : f.keys()) (void)f.value(key);
    if (!f.has("general.architecture")) return 0;
    const kvattn::LlamaConfig c = kvattn::gguf_llama_config(f);
    if (c.dim * c.vocab_size > (1 << 20) || c.dim * c.hidden_dim * c.n_layers > (1 << 22)) return 0;
    (void)kvattn::gguf_tokenizer(f);
    (void)kvattn::gguf_llama_weights<float>(f);
  } catch (const std::runtime_error&) {
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
