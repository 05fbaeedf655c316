#pragma once
/// \file
/// kvattn::dist::Communicator: the few collectives tensor parallelism needs,
/// over an MPI communicator (MPI_COMM_WORLD by default). Optional part of
/// kvattn: CMake target kvattn::mpi (option KVATTN_MPI), which links MPI.
///
/// Deterministic: allreduce_sum gathers every rank's partial buffer and adds
/// them in rank order 0, 1, ..., R-1 on every rank, so for a fixed rank
/// count the same inputs give bitwise the same sums on every rank and in
/// every run (an MPI_Allreduce may reorder the additions by message size,
/// topology or library version).
///
/// Failure: abort() prints "kvattn rank r: message" and calls MPI_Abort, so
/// one rank's error ends the whole job instead of leaving the others waiting
/// in a collective.

#include <kvattn/error.hpp>

#include <mpi.h>
#include <Eigen/Core>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace kvattn::dist {

class Communicator {
 public:
  /// Wraps `comm` (not duplicated, not freed). MPI must be initialized.
  explicit Communicator(MPI_Comm comm = MPI_COMM_WORLD) : comm_(comm) {
    check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm comm() const { return comm_; }

  /// data[i] = sum over ranks r = 0, 1, ... of rank r's data[i] (floats or
  /// doubles), in that order, on every rank. n elements.
  template <class T>
  void allreduce_sum(T* data, Eigen::Index n) {
    static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                  "allreduce_sum sums float or double");
    if (size_ == 1 || n == 0) return;
    gathered_.resize(size_t(size_) * size_t(n) * sizeof(T));
    T* all = reinterpret_cast<T*>(gathered_.data());
    allgather(data, n, all);
    for (Eigen::Index i = 0; i < n; ++i) {
      T sum = all[i];
      for (int r = 1; r < size_; ++r) sum += all[Eigen::Index(r) * n + i];
      data[i] = sum;
    }
  }

  /// recv[r*n .. r*n + n) = rank r's send[0 .. n), on every rank.
  template <class T>
  void allgather(const T* send, Eigen::Index n, T* recv) {
    const double t0 = MPI_Wtime();
    check(MPI_Allgather(send, int(n * Eigen::Index(sizeof(T))), MPI_BYTE, recv,
                        int(n * Eigen::Index(sizeof(T))), MPI_BYTE, comm_),
          "MPI_Allgather");
    collective_seconds_ += MPI_Wtime() - t0;
  }

  /// Seconds this rank has spent in all-gathers (the all-reduces' exchange)
  /// since construction: for benchmarks.
  double collective_seconds() const { return collective_seconds_; }

  /// Copies root's data[0 .. n) to every rank.
  template <class T>
  void broadcast(T* data, Eigen::Index n, int root = 0) {
    static_assert(std::is_trivially_copyable<T>::value, "broadcast copies bytes");
    check(MPI_Bcast(data, int(n * Eigen::Index(sizeof(T))), MPI_BYTE, root, comm_), "MPI_Bcast");
  }

  void barrier() { check(MPI_Barrier(comm_), "MPI_Barrier"); }

  /// Every rank's value, in rank order.
  std::vector<uint64_t> gather_values(uint64_t value) {
    std::vector<uint64_t> all(size_t(size_), 0);
    allgather(&value, 1, all.data());
    return all;
  }

  /// Throws std::invalid_argument on every rank if some rank's `value`
  /// differs from rank 0's, naming `what`, both values and both ranks.
  void check_same(uint64_t value, const char* fn, const char* what) {
    const std::vector<uint64_t> all = gather_values(value);
    for (int r = 1; r < size_; ++r) {
      if (all[size_t(r)] != all[0]) {
        throw std::invalid_argument(detail::concat(fn, ": ", what,
                                                   " differs between ranks: rank 0 has ", all[0],
                                                   ", rank ", r, " has ", all[size_t(r)]));
      }
    }
  }

  /// Prints "kvattn rank r: message" on stderr and ends the whole job with
  /// exit status `code` (MPI_Abort): no rank is left waiting.
  [[noreturn]] void abort(const std::string& message, int code = 1) const {
    std::fprintf(stderr, "kvattn rank %d of %d: %s\n", rank_, size_, message.c_str());
    std::fflush(stderr);
    MPI_Abort(comm_, code);
    std::abort();  // MPI_Abort does not return
  }

 private:
  static void check(int rc, const char* call) {
    if (rc != MPI_SUCCESS) {
      char text[MPI_MAX_ERROR_STRING];
      int len = 0;
      MPI_Error_string(rc, text, &len);
      throw std::runtime_error(
          detail::concat("kvattn::dist: ", call, " failed: ", std::string(text, size_t(len))));
    }
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  std::vector<unsigned char> gathered_;  // [size][n] partials, reused
  double collective_seconds_ = 0;
};

/// A 64-bit FNV-1a hash of values, to compare configurations across ranks.
class Fingerprint {
 public:
  template <class T>
  Fingerprint& add(const T& value) {
    static_assert(std::is_trivially_copyable<T>::value, "hash plain values");
    const auto* p = reinterpret_cast<const unsigned char*>(&value);
    for (size_t i = 0; i < sizeof(T); ++i) h_ = (h_ ^ p[i]) * 0x100000001b3ull;
    return *this;
  }
  uint64_t value() const { return h_; }

 private:
  uint64_t h_ = 0xcbf29ce484222325ull;
};

}  // namespace kvattn::dist
