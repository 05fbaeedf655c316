#pragma once
/// \file
/// kvattn: transformer self-attention for inference, with a KV cache.
/// Includes every public header.

#include <kvattn/cache/kv_cache.hpp>
#include <kvattn/cache/paged_kv_cache.hpp>
#include <kvattn/cache/paged_layer.hpp>
#include <kvattn/cache/paged_serialization.hpp>
#include <kvattn/cache/serialization.hpp>
#include <kvattn/cache/storage.hpp>
#include <kvattn/config.hpp>
#include <kvattn/error.hpp>
#include <kvattn/io/llama2c.hpp>
#include <kvattn/kernels/kernels.hpp>
#include <kvattn/layers/multi_head_attention.hpp>
#include <kvattn/layers/projection.hpp>
#include <kvattn/models/llama.hpp>
#include <kvattn/models/sampler.hpp>
#include <kvattn/models/tokenizer.hpp>
#include <kvattn/ops/attention.hpp>
#include <kvattn/ops/linear.hpp>
#include <kvattn/ops/rmsnorm.hpp>
#include <kvattn/ops/rope.hpp>
#include <kvattn/ops/softmax.hpp>
#include <kvattn/types.hpp>
#include <kvattn/version.hpp>
