// Asynchronous global -> shared memory copies (cp.async, sm_80 on): the bytes in flight wait in shared
// memory rather than in registers, and a thread sees its own copies once it has waited for them.
#pragma once

#include <cstdint>

namespace qkrope::cuda {

// Copies kBytes (4, 8 or 16, both addresses aligned to it) from global src to shared dst. 16-byte copies
// bypass L1 (each byte is read once); the smaller ones cannot.
template <int kBytes>
__device__ __forceinline__ void copy_async(void* dst, const void* src) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async moves 4, 8 or 16 bytes");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const auto to = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  if constexpr (kBytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(to), "l"(src) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;" ::"r"(to), "l"(src), "n"(kBytes) : "memory");
  }
#else
  struct alignas(kBytes) Word {
    unsigned char b[kBytes];
  };
  *static_cast<Word*>(dst) = *static_cast<const Word*>(src);
#endif
}

// Closes the group of copies issued since the last commit.
__device__ __forceinline__ void copy_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// Waits until every committed group of the calling thread has landed.
__device__ __forceinline__ void copy_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group 0;" ::: "memory");
#endif
}

}  // namespace qkrope::cuda
