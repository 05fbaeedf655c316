#include <kvattn/config.hpp>

#include "test_util.hpp"

using kvattn::AttentionConfig;
using kvattn::RopeStyle;

TEST(AttentionConfig, DerivedSizes) {
  const AttentionConfig c{4096, 32, 8, 128};
  EXPECT_EQ(c.group_size(), 4);
  EXPECT_EQ(c.q_dim(), 4096);
  EXPECT_EQ(c.kv_dim(), 1024);
  EXPECT_DOUBLE_EQ(c.scale(), 1.0 / std::sqrt(128.0));
  AttentionConfig scaled = c;
  scaled.score_scale = 0.25;
  EXPECT_DOUBLE_EQ(scaled.scale(), 0.25);
  EXPECT_NO_THROW(c.validate());
}

TEST(AttentionConfig, RejectsZeroSizes) {
  test::expect_throw_with<std::invalid_argument>(
      [] {
        AttentionConfig{0, 2, 2, 4}.validate();
      },
      {"AttentionConfig", "d_model = 0", "> 0"});
  test::expect_throw_with<std::invalid_argument>(
      [] {
        AttentionConfig{8, 0, 1, 4}.validate();
      },
      {"n_heads = 0"});
  test::expect_throw_with<std::invalid_argument>(
      [] {
        AttentionConfig{8, 2, 0, 4}.validate();
      },
      {"n_kv_heads = 0"});
  test::expect_throw_with<std::invalid_argument>(
      [] {
        AttentionConfig{8, 2, 2, -1}.validate();
      },
      {"head_dim = -1"});
}

TEST(AttentionConfig, RejectsHeadsNotAMultipleOfKVHeads) {
  test::expect_throw_with<std::invalid_argument>(
      [] {
        AttentionConfig{8, 6, 4, 2}.validate();
      },
      {"n_heads = 6", "not a multiple of n_kv_heads = 4"});
}

TEST(AttentionConfig, RejectsOddHeadDimOnlyWithRope) {
  EXPECT_NO_THROW((AttentionConfig{6, 2, 2, 3}.validate()));
  test::expect_throw_with<std::invalid_argument>(
      [] {
        AttentionConfig{6, 2, 2, 3, RopeStyle::Interleaved}.validate();
      },
      {"head_dim = 3", "even"});
  test::expect_throw_with<std::invalid_argument>(
      [] { AttentionConfig{8, 2, 2, 4, RopeStyle::HalfSplit, -1.0}.validate(); },
      {"rope_theta = -1"});
}

TEST(AttentionConfig, RejectsNonFiniteScale) {
  AttentionConfig c{8, 2, 2, 4};
  c.score_scale = std::nan("");
  test::expect_throw_with<std::invalid_argument>([&] { c.validate(); }, {"score_scale"});
}
