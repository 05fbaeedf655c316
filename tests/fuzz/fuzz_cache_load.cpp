// libFuzzer target: restoring a KV cache (fp32 and int8 storage) from
// arbitrary bytes. Every input must load or throw std::runtime_error, and a
// failed load must leave the cache exactly as it was.
#include <kvattn/cache/serialization.hpp>
#include <kvattn/ops/attention.hpp>

#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>

namespace {

template <class Storage>
void check(const std::string& bytes) {
  kvattn::KVCache<float, Storage> cache(2, 4, 8);
  kvattn::RowMatrix<float> k = kvattn::RowMatrix<float>::Constant(3, 8, 0.5f);
  cache.append(k, -k);
  const kvattn::KVCache<float, Storage> before = cache.copy();
  std::istringstream in(bytes);
  try {
    kvattn::load(cache, in, "fuzz.bin");
  } catch (const std::runtime_error&) {
    if (cache.size() != before.size()) __builtin_trap();
    for (Eigen::Index h = 0; h < 2; ++h) {
      if (cache.keys(h) != before.keys(h) || cache.values(h) != before.values(h)) __builtin_trap();
    }
    return;
  }
  if (cache.size() > cache.capacity()) __builtin_trap();
  if (cache.size() > 0) {  // a loaded cache can be attended over
    kvattn::ops::AttentionScratch<float> scratch;
    scratch.reserve_decode(cache.size(), 2, 2, 4);
    float q[16] = {}, out[16];
    kvattn::ops::attend_decode<float>(q, cache, cache.size(), 4, 0.5f, out, scratch);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  check<float>(bytes);
  check<std::int8_t>(bytes);
  return 0;
}
