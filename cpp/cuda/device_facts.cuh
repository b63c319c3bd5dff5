// Facts about the current device the launchers size grids and cache policies from, queried once per
// (device, fact) and kept: a launch outside a CUDA graph pays a lookup, not a driver query.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

namespace qkrope::cuda {

// `attr` of the current device.
inline cudaError_t cached_device_attribute(cudaDeviceAttr attr, int* value) {
  static std::mutex mutex;
  static std::map<std::pair<int, int>, int> known;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const std::pair<int, int> key(device, static_cast<int>(attr));
  std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = known.find(key); it != known.end()) {
    *value = it->second;
    return cudaSuccess;
  }
  err = cudaDeviceGetAttribute(value, attr, device);
  if (err == cudaSuccess) known.emplace(key, *value);
  return err;
}

// Blocks of `threads` threads of `kernel` (no dynamic shared memory) resident on the current device at once.
template <typename Kernel>
cudaError_t resident_blocks(Kernel kernel, int threads, int64_t* blocks) {
  static std::mutex mutex;
  static std::map<std::tuple<int, const void*, int>, int64_t> known;
  int device = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const std::tuple<int, const void*, int> key(device, reinterpret_cast<const void*>(kernel), threads);
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (const auto it = known.find(key); it != known.end()) {
      *blocks = it->second;
      return cudaSuccess;
    }
  }
  err = cached_device_attribute(cudaDevAttrMultiProcessorCount, &sms);
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0);
  if (err != cudaSuccess) return err;
  *blocks = static_cast<int64_t>(sms) * per_sm;
  std::lock_guard<std::mutex> lock(mutex);
  known.emplace(key, *blocks);
  return cudaSuccess;
}

}  // namespace qkrope::cuda
