#pragma once
/// \file
/// Matrix-vector products with weights kept in llama.cpp's Q8_0 or Q4_0
/// blocks, as a GGUF file stores them (a view: the bytes stay where they
/// are, e.g. in the file's mapping). The vector is quantized to Q8_0 blocks
/// first and each block pair is dotted in int32 by the active kernel target
/// (VNNI vpdpbusd, AVX2 vpmaddubsw, NEON widening multiplies), as llama.cpp's
/// CPU kernels do; kernels::gemv_q_float_ref is the float-activation twin.

#include <kvattn/kernels/kernels.hpp>
#include <kvattn/kernels/quantize.hpp>
#include <kvattn/types.hpp>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvattn {

/// The block formats quant_gemv multiplies as stored.
enum class QuantType { Q8_0, Q4_0 };

/// rows x cols weights in blocks of 32 along each row (cols % 32 == 0), row
/// i at data + i * row_bytes(). Owns nothing.
struct QuantMatrixView {
  QuantType type = QuantType::Q8_0;
  const std::uint8_t* data = nullptr;
  Eigen::Index rows = 0, cols = 0;

  Eigen::Index block_bytes() const {
    return type == QuantType::Q8_0 ? kernels::kQ8_0Bytes : kernels::kQ4_0Bytes;
  }
  Eigen::Index row_bytes() const { return cols / kernels::kQuantBlock * block_bytes(); }
  Eigen::Index bytes() const { return rows * row_bytes(); }
};

/// y[0..rows) = W x[0..cols), x quantized to Q8_0 into `scratch` (resized
/// once, then reused). Rows are split over OpenMP threads in blocks of 64; a
/// row's bits do not depend on the split or the thread count. Throws
/// std::invalid_argument if cols is not a positive multiple of 32.
inline void quant_gemv(const QuantMatrixView& w, const float* x, float* y,
                       std::vector<kernels::BlockQ8_0>& scratch) {
  if (w.cols <= 0 || w.cols % kernels::kQuantBlock != 0) {
    throw std::invalid_argument("quant_gemv: cols = " + std::to_string(w.cols) +
                                ", expected a positive multiple of 32");
  }
  const Eigen::Index nb = w.cols / kernels::kQuantBlock;
  scratch.resize(size_t(nb));
  kernels::quantize_q8_0(x, w.cols, scratch.data());
  const kernels::KernelTable& k = kernels::active();
  const kernels::QGemvFn fn = w.type == QuantType::Q8_0 ? k.gemv_q8_0 : k.gemv_q4_0;
  constexpr Eigen::Index kBlock = 64;
  const Eigen::Index parts = (w.rows + kBlock - 1) / kBlock;
  const Eigen::Index row_bytes = w.row_bytes();
  const kernels::BlockQ8_0* xq = scratch.data();
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (w.bytes() >= (Eigen::Index(1) << 20))
#endif
  for (Eigen::Index p = 0; p < parts; ++p) {
    const Eigen::Index r0 = p * kBlock, n = std::min(kBlock, w.rows - r0);
    fn(w.data + r0 * row_bytes, row_bytes, n, xq, nb, y + r0);
  }
}

}  // namespace kvattn
