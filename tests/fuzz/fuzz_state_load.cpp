// libFuzzer target: restoring a Llama state (LlamaState::load) and a paged
// sequence (load(pool, stream)) from arbitrary bytes. The first byte picks
// which. Every input must load or throw std::runtime_error (a pool without
// room: std::length_error); a failed load must leave the state, or the pool
// and its sequences, exactly as they were; what loads can be decoded from.
#include <kvattn/kvattn.hpp>

#include <cstdint>
#include <random>
#include <sstream>
#include <string>

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

kvattn::Llama<float>& model() {
  static kvattn::Llama<float> m = [] {
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-0.3f, 0.3f);
    kvattn::LlamaWeights<float> w;
    w.config = {8, 12, 2, 2, 1, 6, 8};
    auto mat = [&](Eigen::Index r, Eigen::Index c) {
      kvattn::RowMatrix<float> m(r, c);
      for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = u(rng);
      return m;
    };
    w.token_embedding = mat(6, 8);
    w.final_norm = kvattn::Vector<float>::Ones(8);
    for (int l = 0; l < 2; ++l) {
      kvattn::LlamaLayerWeights<float> lw;
      lw.attention_norm = lw.ffn_norm = kvattn::Vector<float>::Ones(8);
      lw.attention.wq = mat(8, 8);
      lw.attention.wk = mat(4, 8);
      lw.attention.wv = mat(4, 8);
      lw.attention.wo = mat(8, 8);
      lw.w1 = mat(12, 8);
      lw.w2 = mat(8, 12);
      lw.w3 = mat(12, 8);
      w.layers.push_back(lw);
    }
    return kvattn::Llama<float>(w);
  }();
  return m;
}

void state_load(const std::string& bytes) {
  kvattn::LlamaState<float, std::int8_t> state = model().make_state<std::int8_t>(8);
  model().prefill({1, 2, 3}, state);
  const kvattn::Vector<float> before = model().step(4, state);
  state.truncate(3);
  std::istringstream in(bytes);
  try {
    state.load(in, "fuzz.state");
  } catch (const std::runtime_error&) {
    check(state.pos() == 3);
    check(model().step(4, state) == before);  // unchanged, bit for bit
    return;
  }
  check(state.pos() <= state.capacity());
  if (state.pos() < state.capacity()) (void)model().step(5, state);  // arbitrary rows: any value
}

void sequence_load(const std::string& bytes) {
  kvattn::PagedKVCache<float> pool = model().make_paged_cache(4);
  const kvattn::SeqId kept = pool.add_sequence();
  model().forward_batch({{kept, {1, 2, 3}}}, pool);
  const auto blocks = pool.blocks_of(kept);
  const Eigen::Index free = pool.free_blocks();
  std::istringstream in(bytes);
  kvattn::SeqId loaded = 0;
  try {
    loaded = kvattn::load(pool, in, "fuzz.seq");
  } catch (const std::runtime_error&) {
    check(pool.sequences().size() == 1 && pool.blocks_of(kept) == blocks &&
          pool.free_blocks() == free);
    return;
  } catch (const std::length_error&) {
    check(pool.sequences().size() == 1 && pool.free_blocks() == free);
    return;
  }
  check(pool.length(loaded) <= pool.n_blocks() * pool.block_tokens());
  if (pool.free_blocks() > 0) model().forward_batch({{loaded, {1}}}, pool);
  pool.release(loaded);
  pool.release(kept);
  check(pool.free_blocks() == pool.n_blocks());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] % 2 == 0) {
    state_load(bytes);
  } else {
    sequence_load(bytes);
  }
  return 0;
}
