#pragma once
/// \file
/// LargeBuffer<S>: a zero-initialised array of plain values, allocated once,
/// for the KV cache.
///
/// A decode step streams the whole cache, so that is where 4 KiB pages cost
/// the most: a TLB miss every 4 KiB and hardware prefetchers that restart at
/// every page boundary. On Linux a buffer of at least 4 MiB is aligned to
/// 2 MiB and marked MADV_HUGEPAGE before it is first touched, so the kernel
/// backs it with transparent huge pages where they are enabled ("madvise" or
/// "always" in /sys/kernel/mm/transparent_hugepage/enabled; with "never", or
/// when no huge page is free, it gets ordinary pages and nothing else
/// changes). Define KVATTN_NO_HUGE_PAGES to turn the advice off.
///
/// Memory comes from the global operator new (so a replaced operator new, as
/// in the allocation tests, sees it); copies are deep, assignment has the
/// strong guarantee.

#include <Eigen/Core>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>

#if defined(__linux__) && !defined(KVATTN_NO_HUGE_PAGES)
#include <sys/mman.h>
#if defined(MADV_HUGEPAGE)
#define KVATTN_MADV_HUGEPAGE 1
#endif
#endif

namespace kvattn::detail {

template <class S>
class LargeBuffer {
  static_assert(std::is_trivially_copyable<S>::value, "LargeBuffer holds plain values");

 public:
  static constexpr std::size_t kHugePage = std::size_t(2) << 20;
  static constexpr std::size_t kHugeMin = 2 * kHugePage;  // smaller buffers: 64-byte alignment
  static constexpr std::size_t kAlign = 64;

  LargeBuffer() noexcept = default;

  /// n zeroed elements. Throws std::bad_alloc.
  explicit LargeBuffer(Eigen::Index n) {
    allocate(n);
    if (size_ > 0) std::memset(static_cast<void*>(data_), 0, bytes());
  }
  LargeBuffer(const LargeBuffer& other) {
    allocate(other.size_);
    if (size_ > 0) std::memcpy(static_cast<void*>(data_), other.data_, bytes());
  }
  LargeBuffer(LargeBuffer&& other) noexcept { swap(other); }
  /// Copy or move assignment (copy, then swap: a failed copy changes nothing).
  LargeBuffer& operator=(LargeBuffer other) noexcept {
    swap(other);
    return *this;
  }
  ~LargeBuffer() { ::operator delete(raw_); }

  void swap(LargeBuffer& other) noexcept {
    std::swap(raw_, other.raw_);
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
  }

  S* data() noexcept { return data_; }
  const S* data() const noexcept { return data_; }
  Eigen::Index size() const noexcept { return size_; }

 private:
  std::size_t bytes() const noexcept { return std::size_t(size_) * sizeof(S); }

  void allocate(Eigen::Index n) {
    if (n <= 0) return;
    const std::size_t size = std::size_t(n) * sizeof(S);
    const std::size_t align = size >= kHugeMin ? kHugePage : kAlign;
    raw_ = ::operator new(size + align);
    const std::uintptr_t at = (reinterpret_cast<std::uintptr_t>(raw_) + align - 1) / align * align;
    data_ = reinterpret_cast<S*>(at);
    size_ = n;
#if defined(KVATTN_MADV_HUGEPAGE)
    // Advice only: if the kernel declines, the memory is ordinary pages.
    if (align == kHugePage) (void)madvise(static_cast<void*>(data_), size, MADV_HUGEPAGE);
#endif
  }

  void* raw_ = nullptr;
  S* data_ = nullptr;
  Eigen::Index size_ = 0;
};

}  // namespace kvattn::detail
