#pragma once
/// \file
/// StoredMatrix: a weight matrix kept in the encoding it came in, the matrix
/// type of the layers' and Llama's Weight = kvattn::Stored. A GGUF file's
/// tensors are viewed in place (the file's mapping stays alive as long as a
/// matrix that views it); the products (ops/stored_linear.hpp) read them as
/// stored, dequantizing in registers.
///
/// A matrix is a stack of bands of consecutive rows, each band in one ggml
/// type, so that Wq, Wk and Wv of different types still form the one stacked
/// q | k | v projection, with no copy. Types with a product kernel: F32, F16,
/// BF16 (the float kernels) and Q8_0, Q4_0 (integer dot products against
/// Q8_0 activations, as llama.cpp's CPU kernels do). The other types kvattn
/// reads (Q4_1, Q5_0, Q5_1, IQ4_NL) are dequantized to an owned F32 copy.

#include <kvattn/cache/storage.hpp>
#include <kvattn/error.hpp>
#include <kvattn/io/ggml_quants.hpp>
#include <kvattn/kernels/quantize.hpp>
#include <kvattn/types.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <utility>
#include <vector>

namespace kvattn {

class StoredMatrix {
 public:
  /// Rows [first, first + rows) of the matrix, in ggml type `type`; row r at
  /// data + (r - first) * row_bytes.
  struct Band {
    uint32_t type = ggml::F32;
    Eigen::Index first = 0, rows = 0;
    const unsigned char* data = nullptr;
    Eigen::Index row_bytes = 0;
  };

  StoredMatrix() = default;

  /// Whether the products read `type` as stored (F32, F16, BF16, Q8_0, Q4_0).
  static bool has_kernel(uint32_t type) {
    return type == ggml::F32 || type == ggml::F16 || type == ggml::BF16 || type == ggml::Q8_0 ||
           type == ggml::Q4_0;
  }

  /// rows x cols values of ggml type `type` at data (ggml_row_bytes(type,
  /// cols) per row), kept alive by `owner` (not copied). A type without a
  /// product kernel is dequantized to an owned F32 copy, and F32 / F16 /
  /// BF16 bytes not aligned for their type are copied. Throws
  /// std::invalid_argument for a type kvattn does not read, a block that
  /// does not divide cols, or an empty matrix.
  static StoredMatrix view(uint32_t type, Eigen::Index rows, Eigen::Index cols,
                           const unsigned char* data, std::shared_ptr<const void> owner) {
    check_shape("StoredMatrix::view", rows, cols);
    const Eigen::Index row_bytes = Eigen::Index(ggml_row_bytes(type, cols));  // checks the type
    const uintptr_t align =
        type == ggml::F32 ? 4 : (type == ggml::F16 || type == ggml::BF16 ? 2 : 1);
    if (reinterpret_cast<uintptr_t>(data) % align != 0) {  // a file with general.alignment 1
      auto copy = std::make_shared<std::vector<float>>(size_t((rows * row_bytes + 3) / 4));
      std::memcpy(copy->data(), data, size_t(rows * row_bytes));
      const auto* bytes = reinterpret_cast<const unsigned char*>(copy->data());
      return view(type, rows, cols, bytes, std::move(copy));
    }
    if (!has_kernel(type)) {
      auto copy = std::make_shared<std::vector<float>>(size_t(rows * cols));
      for (Eigen::Index r = 0; r < rows; ++r) {
        dequantize_row(type, data + r * row_bytes, cols, copy->data() + r * cols);
      }
      const auto* bytes = reinterpret_cast<const unsigned char*>(copy->data());
      return single(ggml::F32, rows, cols, bytes, cols * 4, std::move(copy));
    }
    return single(type, rows, cols, data, row_bytes, std::move(owner));
  }

  /// m encoded as `type`, owned: F32 copied, F16 and BF16 rounded to nearest
  /// even (F16 saturating at +-65504, as the caches and dense half weights), Q8_0 and Q4_0
  /// quantized per 32 values of a row (Q8_0: d = max|x| / 127; Q4_0: kernels::quantize_q4_0).
  /// Throws std::invalid_argument for another type, cols not a multiple of 32 for Q8_0 / Q4_0, or
  /// an empty m.
  static StoredMatrix encode(const Eigen::Ref<const RowMatrix<float>>& m,
                             uint32_t type = ggml::F32) {
    const Eigen::Index rows = m.rows(), cols = m.cols();
    check_shape("StoredMatrix::encode", rows, cols);
    if (!has_kernel(type)) {
      throw std::invalid_argument(detail::concat("StoredMatrix::encode: type ",
                                                 detail::ggml_type_desc(type),
                                                 ", expected F32, F16, BF16, Q8_0 or Q4_0"));
    }
    if ((type == ggml::Q8_0 || type == ggml::Q4_0) && cols % kernels::kQuantBlock != 0) {
      throw std::invalid_argument(detail::concat("StoredMatrix::encode: cols = ", cols,
                                                 ", expected a multiple of 32 for ",
                                                 ggml_type_name(type)));
    }
    const Eigen::Index row_bytes = Eigen::Index(ggml_row_bytes(type, cols));
    // Whole floats, so that an F32 copy is aligned for its loads.
    auto buf = std::make_shared<std::vector<float>>(size_t((rows * row_bytes + 3) / 4));
    auto* out = reinterpret_cast<unsigned char*>(buf->data());
    for (Eigen::Index r = 0; r < rows; ++r)
      encode_row(type, m.row(r).data(), cols, out + r * row_bytes);
    return single(type, rows, cols, out, row_bytes, std::move(buf));
  }

  /// The rows of a, then those of b, ...: the bands are shared, not copied.
  /// Throws std::invalid_argument unless every part has the same cols.
  static StoredMatrix stack(const std::vector<const StoredMatrix*>& parts) {
    StoredMatrix s;
    for (size_t i = 0; i < parts.size(); ++i) {
      const StoredMatrix* p = parts[i];
      if (i == 0) s.cols_ = p->cols_;
      if (p->cols_ != s.cols_) {
        throw std::invalid_argument(detail::concat("StoredMatrix::stack: parts[", i, "] has ",
                                                   p->cols_, " columns, expected ", s.cols_));
      }
      for (Band b : p->bands_) {
        b.first += s.rows_;
        s.bands_.push_back(b);
      }
      s.owners_.insert(s.owners_.end(), p->owners_.begin(), p->owners_.end());
      s.rows_ += p->rows_;
    }
    return s;
  }

  /// Rows [first, first + n) (a view sharing the bytes). Asserts the range.
  StoredMatrix middle_rows(Eigen::Index first, Eigen::Index n) const {
    eigen_assert(first >= 0 && n >= 0 && first + n <= rows_);
    StoredMatrix s;
    s.rows_ = n;
    s.cols_ = cols_;
    s.owners_ = owners_;
    for (const Band& b : bands_) {
      const Eigen::Index lo = std::max(b.first, first), hi = std::min(b.first + b.rows, first + n);
      if (lo >= hi) continue;
      s.bands_.push_back(
          Band{b.type, lo - first, hi - lo, b.data + (lo - b.first) * b.row_bytes, b.row_bytes});
    }
    return s;
  }

  Eigen::Index rows() const { return rows_; }
  Eigen::Index cols() const { return cols_; }
  Eigen::Index size() const { return rows_ * cols_; }
  /// Bytes a product reads: every band's rows.
  Eigen::Index bytes() const {
    Eigen::Index n = 0;
    for (const Band& b : bands_) n += b.rows * b.row_bytes;
    return n;
  }
  const std::vector<Band>& bands() const { return bands_; }

  /// Row r decoded into out[0, cols) (an embedding lookup). Asserts r.
  void row(Eigen::Index r, float* out) const {
    eigen_assert(r >= 0 && r < rows_);
    for (const Band& b : bands_) {
      if (r >= b.first && r < b.first + b.rows) {
        dequantize_row(b.type, b.data + (r - b.first) * b.row_bytes, cols_, out);
        return;
      }
    }
  }

  /// Every row decoded: [rows x cols].
  RowMatrix<float> dense() const {
    RowMatrix<float> m(rows_, cols_);
    for (Eigen::Index r = 0; r < rows_; ++r) row(r, m.row(r).data());
    return m;
  }

 private:
  static void check_shape(const char* fn, Eigen::Index rows, Eigen::Index cols) {
    if (rows <= 0 || cols <= 0) {
      throw std::invalid_argument(detail::concat(fn, ": shape ", detail::shape_str(rows, cols),
                                                 ", expected a non-empty matrix"));
    }
  }

  static void encode_row(uint32_t type, const float* x, Eigen::Index n, unsigned char* out) {
    if (type == ggml::F32) {
      std::memcpy(out, x, size_t(n) * 4);
    } else if (type == ggml::Q8_0) {
      kernels::quantize_q8_0(x, n, reinterpret_cast<kernels::BlockQ8_0*>(out));
    } else if (type == ggml::Q4_0) {
      kernels::quantize_q4_0(x, n, out);
    } else if (type == ggml::F16) {  // as the dense half weights and caches round (saturating)
      detail::encode_row<float, Eigen::half>(x, n, reinterpret_cast<Eigen::half*>(out), nullptr);
    } else {
      detail::encode_row<float, Eigen::bfloat16>(x, n, reinterpret_cast<Eigen::bfloat16*>(out),
                                                 nullptr);
    }
  }

  static StoredMatrix single(uint32_t type, Eigen::Index rows, Eigen::Index cols,
                             const unsigned char* data, Eigen::Index row_bytes,
                             std::shared_ptr<const void> owner) {
    StoredMatrix s;
    s.rows_ = rows;
    s.cols_ = cols;
    s.bands_.push_back(Band{type, 0, rows, data, row_bytes});
    if (owner) s.owners_.push_back(std::move(owner));
    return s;
  }

  Eigen::Index rows_ = 0, cols_ = 0;
  std::vector<Band> bands_;
  std::vector<std::shared_ptr<const void>> owners_;  // keep the bands' bytes alive
};

}  // namespace kvattn
