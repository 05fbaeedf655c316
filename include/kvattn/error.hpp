#pragma once
/// \file
/// Checks that throw with a message naming the function, the argument, the
/// expected and the actual value. All are O(1) and are meant for public entry
/// points; inner loops use eigen_assert (debug only).

#include <Eigen/Core>
#include <sstream>
#include <stdexcept>
#include <string>

namespace kvattn::detail {

/// Concatenates the arguments with operator<<.
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

/// "RxC" for a shape.
inline std::string shape_str(Eigen::Index rows, Eigen::Index cols) {
  return concat(rows, "x", cols);
}

/// Throws std::invalid_argument("fn: arg has shape RxC, expected what = ERxEC").
inline void check_shape(const char* fn, const char* arg, Eigen::Index rows, Eigen::Index cols,
                        const char* what, Eigen::Index expected_rows, Eigen::Index expected_cols) {
  if (rows != expected_rows || cols != expected_cols) {
    throw std::invalid_argument(concat(fn, ": ", arg, " has shape ", shape_str(rows, cols),
                                       ", expected ", what, " = ",
                                       shape_str(expected_rows, expected_cols)));
  }
}

/// Throws std::invalid_argument("fn: arg has N columns, expected what = M").
inline void check_cols(const char* fn, const char* arg, Eigen::Index cols, const char* what,
                       Eigen::Index expected) {
  if (cols != expected) {
    throw std::invalid_argument(
        concat(fn, ": ", arg, " has ", cols, " columns, expected ", what, " = ", expected));
  }
}

/// Throws std::invalid_argument("fn: arg has N elements, expected what = M").
inline void check_size(const char* fn, const char* arg, Eigen::Index size, const char* what,
                       Eigen::Index expected) {
  if (size != expected) {
    throw std::invalid_argument(
        concat(fn, ": ", arg, " has ", size, " elements, expected ", what, " = ", expected));
  }
}

/// Throws std::invalid_argument("fn: arg = V, expected condition") unless ok.
template <class V>
void check_arg(bool ok, const char* fn, const char* arg, const V& value, const char* condition) {
  if (!ok) {
    throw std::invalid_argument(concat(fn, ": ", arg, " = ", value, ", expected ", condition));
  }
}

}  // namespace kvattn::detail
