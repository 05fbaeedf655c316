#pragma once
/// \file
/// Matrix and vector aliases used throughout kvattn.
///
/// A row is a token and a column a feature: a batch of n tokens of width d is a
/// row-major `[n x d]` matrix. Weights are `[out x in]`, row-major, as
/// PyTorch's nn.Linear and llama2.c store them.

#include <Eigen/Core>

namespace kvattn {

/// Row-major dynamic matrix: rows are tokens (or output features of a weight).
template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Dynamic column vector: one token's features.
template <class T>
using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

/// Dynamic row vector, used for views of a single cached key or value.
template <class T>
using RowVector = Eigen::Matrix<T, 1, Eigen::Dynamic>;

/// The Weight argument of the layers and of Llama (with T = float) that keeps
/// every matrix as a StoredMatrix (ops/stored_matrix.hpp): in the encoding it
/// came in, chosen per matrix at run time -- F32, F16, BF16, Q8_0 or Q4_0, as
/// a GGUF file stores them, viewed in place.
struct Stored {};

}  // namespace kvattn
