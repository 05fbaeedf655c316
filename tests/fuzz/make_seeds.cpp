// Writes small valid inputs for the fuzz targets' seed corpora:
//   make_seeds OUT_DIR [MODELS_DIR]
// OUT_DIR/{checkpoint,tokenizer,cache}/ receive a tiny checkpoint, a tiny
// tokenizer (behind its two vocabulary bytes) and saved caches; with
// MODELS_DIR, the shared tok512.bin is added too (the checkpoints themselves
// are large; the fuzz run copies them).
#include <kvattn/cache/paged_serialization.hpp>
#include <kvattn/cache/serialization.hpp>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

namespace fs = std::filesystem;

static void put(std::string& s, const void* p, size_t n) {
  s.append(static_cast<const char*>(p), n);
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const fs::path out = argv[1];
  for (const char* d : {"checkpoint", "tokenizer", "cache", "state", "attention", "gguf"})
    fs::create_directories(out / d);

  // dim 8, hidden 12, 1 layer, 2 heads, 1 KV head, vocab 6 (shared classifier), seq_len 4.
  std::string ckpt;
  const int32_t h[7] = {8, 12, 1, 2, 1, 6, 4};
  put(ckpt, h, sizeof h);
  const long floats = 6 * 8 + 8 + 64 + 32 + 32 + 64 + 8 + 3 * 12 * 8 + 8 + 4 * 4;
  for (long i = 0; i < floats; ++i) {
    const float f = float(i % 7) * 0.01f;
    put(ckpt, &f, 4);
  }
  std::ofstream(out / "checkpoint" / "tiny.bin", std::ios::binary) << ckpt;

  // 259 pieces: <unk>, <s>, </s>, <0x00>..<0xFF>, vocabulary bytes 0 0 first.
  std::string tok("\0\0", 2);
  const int32_t max_len = 6;
  put(tok, &max_len, 4);
  auto piece = [&](const std::string& p) {
    const float score = 0;
    const int32_t len = int32_t(p.size());
    put(tok, &score, 4);
    put(tok, &len, 4);
    tok += p;
  };
  piece("<unk>");
  piece("<s>");
  piece("</s>");
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    piece(name);
  }
  std::ofstream(out / "tokenizer" / "tiny.bin", std::ios::binary) << tok;
  if (argc > 2) {
    std::ifstream shared(fs::path(argv[2]) / "tok512.bin", std::ios::binary);
    if (shared) {
      // vocab 512 = 259 + 253: bytes 253, 0.
      std::ofstream f(out / "tokenizer" / "tok512.bin", std::ios::binary);
      f << std::string("\xfd\0", 2) << shared.rdbuf();
    }
  }

  kvattn::KVCache<float> c32(2, 4, 8);
  kvattn::KVCache<float, std::int8_t> c8(2, 4, 8);
  const kvattn::RowMatrix<float> k = kvattn::RowMatrix<float>::Random(3, 8);
  c32.append(k, k * 2.0f);
  c8.append(k, k * 2.0f);
  kvattn::save_file(c32, (out / "cache" / "f32.bin").string());
  kvattn::save_file(c8, (out / "cache" / "int8.bin").string());

  // fuzz_state_load: byte 0 even, a Llama state (2 layers, 1 KV head of 4,
  // int8, capacity 8); odd, a paged sequence (2 layers, 1 KV head of 4, f32).
  {
    std::ostringstream st;
    const uint32_t version = 1, layers = 2;
    const uint64_t pos = 3;
    st.write("KVATTNLS", 8);
    st.write(reinterpret_cast<const char*>(&version), 4);
    st.write(reinterpret_cast<const char*>(&layers), 4);
    st.write(reinterpret_cast<const char*>(&pos), 8);
    for (int l = 0; l < 2; ++l) {
      kvattn::KVCache<float, std::int8_t> c(1, 4, 8);
      c.append(k.leftCols(4), k.leftCols(4) * 0.5f);
      kvattn::save(c, st);
    }
    std::ofstream(out / "state" / "llama_state.bin", std::ios::binary) << '\0' << st.str();
    kvattn::PagedKVCache<float> pool({2, 1, 4, 16, 2});
    const kvattn::SeqId s = pool.add_sequence();
    for (Eigen::Index l = 0; l < 2; ++l) pool.layer(l).append(s, k.leftCols(4), k.leftCols(4));
    std::ostringstream seq;
    kvattn::save(pool, s, seq);
    std::ofstream(out / "state" / "sequence.bin", std::ios::binary) << '\1' << seq.str();
  }
  // fuzz_gguf: a minimal version-3 file, two metadata keys and one F32
  // tensor of 32 values (the shared GGUF files are copied in by the run).
  {
    std::string g = "GGUF";
    const uint32_t version = 3, string_type = 8, u32_type = 4, align = 32, one_dim = 1, f32 = 0;
    const uint64_t tensors = 1, keys = 2, n = 32, offset = 0;
    auto str = [&g](const std::string& x) {
      const uint64_t len = x.size();
      put(g, &len, 8);
      g += x;
    };
    put(g, &version, 4);
    put(g, &tensors, 8);
    put(g, &keys, 8);
    str("general.architecture");
    put(g, &string_type, 4);
    str("llama");
    str("general.alignment");
    put(g, &u32_type, 4);
    put(g, &align, 4);
    str("t");
    put(g, &one_dim, 4);
    put(g, &n, 8);
    put(g, &f32, 4);
    put(g, &offset, 8);
    g.resize((g.size() + 31) / 32 * 32, '\0');
    for (uint64_t i = 0; i < n; ++i) {
      const float f = float(i) * 0.25f;
      put(g, &f, 4);
    }
    std::ofstream(out / "gguf" / "tiny.gguf", std::ios::binary) << g;
  }
  // fuzz_attention: a few operation scripts (any bytes are a valid script).
  for (int i = 0; i < 4; ++i) {
    std::string script;
    for (int j = 0; j < 200; ++j) script += char((j * 37 + i * 11) % 251);
    std::ofstream(out / "attention" / ("script" + std::to_string(i)), std::ios::binary) << script;
  }
  return 0;
}
