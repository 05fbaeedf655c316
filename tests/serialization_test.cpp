#include <kvattn/cache/serialization.hpp>
#include <kvattn/layers/multi_head_attention.hpp>

#include "test_util.hpp"

#include <sstream>

using kvattn::KVCache;

TEST(Crc32c, StandardCheckValue) {
  // The CRC-32C of the ASCII digits "123456789" is 0xE3069283 (RFC 3720, B.4).
  EXPECT_EQ(kvattn::detail::crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(kvattn::detail::crc32c("", 0), 0u);
}

namespace {

template <class Storage>
KVCache<float, Storage> filled(Eigen::Index n_kv, Eigen::Index hd, Eigen::Index cap, Eigen::Index n,
                               uint32_t seed) {
  std::mt19937 rng(seed);
  KVCache<float, Storage> c(n_kv, hd, cap);
  c.append(test::random_matrix<float>(n, n_kv * hd, rng),
           test::random_matrix<float>(n, n_kv * hd, rng));
  return c;
}

template <class Storage>
void expect_same(const KVCache<float, Storage>& a, const KVCache<float, Storage>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (Eigen::Index h = 0; h < a.n_kv_heads(); ++h) {
    EXPECT_EQ(a.keys(h), b.keys(h));
    EXPECT_EQ(a.values(h), b.values(h));
    if constexpr (KVCache<float, Storage>::is_quantized) {
      EXPECT_EQ(a.key_scales(h), b.key_scales(h));
      EXPECT_EQ(a.value_scales(h), b.value_scales(h));
    }
  }
}

}  // namespace

template <class S>
class Serialization : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, Eigen::bfloat16, Eigen::half, std::int8_t>;
TYPED_TEST_SUITE(Serialization, StorageTypes);

// Save, restore into a fresh cache (another capacity), and keep decoding: the
// outputs equal those of a run that never stopped.
TYPED_TEST(Serialization, RoundTripResumesExactly) {
  using S = TypeParam;
  std::mt19937 rng(3);
  const kvattn::AttentionConfig c{32, 4, 2, 8, kvattn::RopeStyle::Interleaved};
  const kvattn::MultiHeadAttention<float> layer(c, test::random_weights<float>(c, rng));
  const kvattn::RowMatrix<float> x = test::random_matrix<float>(20, 32, rng);
  kvattn::AttentionWorkspace<float> ws;
  KVCache<float, S> original = layer.template make_cache<S>(24);
  kvattn::RowMatrix<float> y(12, 32);
  layer.forward(x.topRows(12), original, y, ws);

  std::stringstream buffer;
  kvattn::save(original, buffer);
  KVCache<float, S> restored = layer.template make_cache<S>(40);
  kvattn::load(restored, buffer);
  expect_same(original, restored);
  EXPECT_EQ(restored.capacity(), 40);

  kvattn::Vector<float> a(32), b(32);
  for (Eigen::Index t = 12; t < 20; ++t) {
    layer.step(x.row(t).transpose(), original, a, ws);
    layer.step(x.row(t).transpose(), restored, b, ws);
    EXPECT_EQ(a, b) << "token " << t;
  }
}

// A cache that holds no tokens yet saves and restores (issue: restore_raw
// used to memcpy from the empty payload's null pointer, undefined even for
// 0 bytes; UBSan stopped on it). The restored cache is empty, replaces
// earlier contents, and keeps working: the file is exactly header + CRC.
TYPED_TEST(Serialization, EmptyCacheRoundTrips) {
  using S = TypeParam;
  const KVCache<float, S> empty(2, 4, 35);
  std::stringstream buffer;
  kvattn::save(empty, buffer);
  EXPECT_EQ(buffer.str().size(), 64u + 4u);  // header, no payload, checksum
  KVCache<float, S> target = filled<S>(2, 4, 35, 5, 7);
  kvattn::load(target, buffer);
  EXPECT_EQ(target.size(), 0);
  EXPECT_EQ(target.capacity(), 35);
  // Every truncation of the empty file is still rejected, changing nothing.
  const std::string bytes = buffer.str();
  KVCache<float, S> kept = filled<S>(2, 4, 35, 3, 8);
  const KVCache<float, S> before = kept.copy();
  for (size_t len = 0; len < bytes.size(); ++len) {
    std::istringstream in(bytes.substr(0, len));
    EXPECT_THROW(kvattn::load(kept, in), std::runtime_error) << "length " << len;
  }
  expect_same(kept, before);
  // The restored empty cache takes appends like a new one.
  std::mt19937 rng(9);
  const kvattn::RowMatrix<float> k = test::random_matrix<float>(4, 8, rng);
  const kvattn::RowMatrix<float> v = test::random_matrix<float>(4, 8, rng);
  KVCache<float, S> reference(2, 4, 35);
  reference.append(k, v);
  target.append(k, v);
  expect_same(target, reference);
}

// Any single flipped byte, and any truncation, is rejected and leaves the
// target exactly as it was.
TYPED_TEST(Serialization, CorruptOrTruncatedInputChangesNothing) {
  using S = TypeParam;
  const KVCache<float, S> saved = filled<S>(2, 4, 5, 3, 1);
  std::stringstream buffer;
  kvattn::save(saved, buffer);
  const std::string bytes = buffer.str();
  KVCache<float, S> target = filled<S>(2, 4, 5, 2, 2);
  const KVCache<float, S> before = target.copy();
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (unsigned char bit : {0x01, 0x80}) {
      std::string bad = bytes;
      bad[i] = char(bad[i] ^ bit);
      std::istringstream in(bad);
      EXPECT_THROW(kvattn::load(target, in), std::runtime_error) << "byte " << i;
    }
  }
  for (size_t len = 0; len < bytes.size(); ++len) {
    std::istringstream in(bytes.substr(0, len));
    EXPECT_THROW(kvattn::load(target, in), std::runtime_error) << "length " << len;
  }
  expect_same(target, before);
  std::istringstream good(bytes);
  kvattn::load(target, good);
  expect_same(target, saved);
}

TEST(SerializationErrors, ForeignAndMismatchedInputsAreNamed) {
  const KVCache<float> saved = filled<float>(2, 4, 8, 6, 1);
  std::stringstream buffer;
  kvattn::save(saved, buffer);
  const std::string bytes = buffer.str();
  auto load_into = [&](auto& target, const std::string& data) {
    std::istringstream in(data);
    kvattn::load(target, in, "state.bin");
  };
  KVCache<float> other_heads(1, 4, 8), other_dim(2, 8, 8), small(2, 4, 5);
  KVCache<float, Eigen::half> other_storage(2, 4, 8);
  KVCache<double> other_compute(2, 4, 8);
  test::expect_throw_with<std::runtime_error>(
      [&] { load_into(other_heads, bytes); },
      {"state.bin: holds n_kv_heads = 2, head_dim = 4", "expected n_kv_heads = 1, head_dim = 4"});
  test::expect_throw_with<std::runtime_error>([&] { load_into(other_dim, bytes); },
                                              {"expected n_kv_heads = 2, head_dim = 8"});
  test::expect_throw_with<std::runtime_error>([&] { load_into(small, bytes); },
                                              {"holds 6 tokens, more than the capacity 5"});
  test::expect_throw_with<std::runtime_error>([&] { load_into(other_storage, bytes); },
                                              {"storage type 1", "(f16)"});
  test::expect_throw_with<std::runtime_error>([&] { load_into(other_compute, bytes); },
                                              {"compute type 1"});
  test::expect_throw_with<std::runtime_error>([&] { load_into(small, std::string(100, 'x')); },
                                              {"state.bin: not a kvattn cache file"});
  test::expect_throw_with<std::runtime_error>([&] { load_into(small, "KVATTN"); },
                                              {"truncated: shorter than the 64-byte header"});
  std::string v2 = bytes;
  v2[8] = 2;
  test::expect_throw_with<std::runtime_error>([&] { load_into(small, v2); },
                                              {"format version 2 is not supported"});
  EXPECT_EQ(small.size(), 0);
  EXPECT_EQ(other_heads.size(), 0);
}

TEST(SerializationFiles, SaveReplacesAtomicallyAndLoadNamesThePath) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("kvattn_ser_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "cache.bin").string();
  const KVCache<float, std::int8_t> first = filled<std::int8_t>(2, 4, 8, 3, 1);
  const KVCache<float, std::int8_t> second = filled<std::int8_t>(2, 4, 8, 5, 2);
  kvattn::save_file(first, path);
  kvattn::save_file(second, path);  // replaces the first save
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  KVCache<float, std::int8_t> loaded(2, 4, 8);
  kvattn::load_file(loaded, path);
  expect_same(loaded, second);
  test::expect_throw_with<std::runtime_error>(
      [&] { kvattn::load_file(loaded, (dir / "missing.bin").string()); },
      {"missing.bin: cannot open"});
  std::filesystem::remove_all(dir);
}
