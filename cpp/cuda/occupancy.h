// Resident blocks per multiprocessor of a kernel, asked of the runtime once per kernel and block size
// and cached: the persistent kernels size their grid from it without a per-call query.
#pragma once

#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <utility>

namespace qkrope::cuda {

template <typename... Params>
cudaError_t resident_blocks_per_sm(void (*kernel)(Params...), int threads, size_t smem_bytes, int* blocks) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int> cache;
  const auto key = std::make_pair(reinterpret_cast<const void*>(kernel), threads);
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = cache.find(key); it != cache.end()) {
    *blocks = it->second;
    return cudaSuccess;
  }
  if (cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, kernel, threads, smem_bytes);
      err != cudaSuccess) {
    return err;
  }
  cache.emplace(key, *blocks);
  return cudaSuccess;
}

}  // namespace qkrope::cuda
