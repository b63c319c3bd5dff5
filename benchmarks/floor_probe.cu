// Skeleton kernels behind XLA FFI custom calls, to time what a small-T call of the op cannot go below
// inside XLA's command buffers (benchmarks/floor_probe.py builds this file with nvcc and registers it).
// One warp per (token, head) pair, as the single-pair forward runs, each lane moving the bytes it moves there;
// each probe adds one step of the forward's critical path to the one before:
//   0 store: the launch and the store, no load;
//   1 load: the data's load, then the store;
//   2 chain: also the position's load and, dependent on it, a cos/sin row's load (two round trips);
//   3 chain+norm: also the norm's reduction over the warp (five shuffles and an rsqrt) on the data.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace floor_probe {
namespace ffi = ::xla::ffi;

constexpr int kRowFloats = 128;  // the table's row: a 128-dim head's cos and sin as float32
constexpr int kBlock = 256;      // 8 warps, as the single-pair forward's blocks

// V floats of data a lane: 4, 8 or 16 bytes, as the single-pair forward's lanes move for 64-, 128- and
// 256-dim bf16 heads.
template <int V>
struct Words {
  float f[V];
};

template <int Steps, int V>
__global__ void skeleton(const Words<V>* x, const int32_t* positions, const float* table, int64_t rows,
                         int64_t heads, Words<V>* y, int64_t threads) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (i >= threads) return;  // whole warps: the reduction's shuffles see every lane
  float angle = 1.0f;
  if constexpr (Steps >= 2) {
    int64_t p = positions[i / 32 / heads];
    p = p < 0 ? 0 : (p >= rows ? rows - 1 : p);
    angle = table[p * kRowFloats + (threadIdx.x % 32) * 4];
  }
  Words<V> d;
#pragma unroll
  for (int j = 0; j < V; ++j) d.f[j] = 1.0f;
  if constexpr (Steps >= 1) d = x[i];
  float scale = 1.0f;
  if constexpr (Steps >= 3) {
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < V; ++j) s += d.f[j] * d.f[j];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    scale = rsqrtf(s / (32.0f * V) + 1e-6f);
  }
#pragma unroll
  for (int j = 0; j < V; ++j) d.f[j] = d.f[j] * scale + angle;
  y[i] = d;
}

template <int Steps, int V>
void launch_skeleton(cudaStream_t stream, const ffi::AnyBuffer& x, const ffi::AnyBuffer& positions,
                     const ffi::AnyBuffer& table, ffi::AnyBuffer& y, int64_t rows, int64_t heads, int64_t threads) {
  const auto blocks = static_cast<unsigned>((threads + kBlock - 1) / kBlock);
  skeleton<Steps, V><<<blocks, kBlock, 0, stream>>>(
      static_cast<const Words<V>*>(x.untyped_data()), static_cast<const int32_t*>(positions.untyped_data()),
      static_cast<const float*>(table.untyped_data()), rows, heads, static_cast<Words<V>*>(y.untyped_data()),
      threads);
}

// One warp per (token, head) pair: heads warps a position, x and y of V floats a thread (V = 1, 2 or 4).
template <int Steps>
ffi::Error launch(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer positions, ffi::AnyBuffer table,
                  ffi::Result<ffi::AnyBuffer> y, int64_t heads) {
  const int64_t threads = static_cast<int64_t>(positions.element_count()) * heads * 32;
  const int64_t rows = static_cast<int64_t>(table.element_count()) / kRowFloats;
  const int64_t v = threads > 0 ? static_cast<int64_t>(x.element_count()) / threads : 0;
  if (x.element_count() != y->element_count() || heads < 1 || rows < 1 || threads < 1 ||
      v * threads != static_cast<int64_t>(x.element_count()) || (v != 1 && v != 2 && v != 4)) {
    return ffi::Error::InvalidArgument(
        "floor_probe: x and y of 1, 2 or 4 floats a thread, 32 * heads threads a position");
  }
  if (v == 1) launch_skeleton<Steps, 1>(stream, x, positions, table, *y, rows, heads, threads);
  if (v == 2) launch_skeleton<Steps, 2>(stream, x, positions, table, *y, rows, heads, threads);
  if (v == 4) launch_skeleton<Steps, 4>(stream, x, positions, table, *y, rows, heads, threads);
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return ffi::Error::Success();
  return ffi::Error::Internal(std::string("floor_probe: launch failed: ") + cudaGetErrorString(err));
}

auto bind() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::PlatformStream<cudaStream_t>>()
      .Arg<ffi::AnyBuffer>()
      .Arg<ffi::AnyBuffer>()
      .Arg<ffi::AnyBuffer>()
      .Ret<ffi::AnyBuffer>()
      .Attr<int64_t>("heads");
}

}  // namespace floor_probe

// Command-buffer compatible, as the op's handlers: each call is one kernel node of XLA's CUDA graph.
XLA_FFI_DEFINE_HANDLER_SYMBOL(FloorProbeStore, floor_probe::launch<0>, floor_probe::bind(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(FloorProbeLoad, floor_probe::launch<1>, floor_probe::bind(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(FloorProbeChain, floor_probe::launch<2>, floor_probe::bind(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(FloorProbeChainNorm, floor_probe::launch<3>, floor_probe::bind(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
