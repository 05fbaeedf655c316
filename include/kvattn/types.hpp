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

}  // namespace kvattn
