// What a streaming copy reaches on this GPU, by the way it moves its bytes: the driver's memcpy, plain
// register copies with more or fewer 16-byte words in flight per thread, and bulk (TMA) copies staged in
// shared memory with the bytes in flight set by stages x stage size rather than by registers. The question
// it answers: on the H200 the forward streams at 77% of DRAM peak and memcpy at 88% (results/run22_h200_
// calibration); is the gap the way the kernel loads (registers) or something no SM kernel gets past?
//
//   nvcc -O3 -std=c++17 -arch=sm_90 benchmarks/bandwidth_probe.cu -o /tmp/bandwidth_probe && /tmp/bandwidth_probe
//
// Every copy is checked against its source once; times are medians of CUDA-event timings of single launches.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

// Each thread moves U 16-byte words per step, all loaded before any is stored; grid-stride over the buffer.
template <int U>
__global__ void __launch_bounds__(256) register_copy(const uint4* __restrict__ in, uint4* __restrict__ out,
                                                     int64_t words) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * U;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x * U + threadIdx.x; base < words;
       base += stride) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = base + static_cast<int64_t>(u) * blockDim.x;
      v[u] = i < words ? in[i] : uint4{};
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = base + static_cast<int64_t>(u) * blockDim.x;
      if (i < words) out[i] = v[u];
    }
  }
}

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Bulk copy: one thread per block runs a pipeline of `stages` shared-memory buffers of `tile` bytes; tile k
// loads into buffer k % stages (completion counted by that buffer's mbarrier) and is stored from there by a
// bulk store; a buffer is loaded again once the store that read it has finished reading. Grid-stride over
// tiles. tile: a multiple of 16 bytes, the buffer a multiple of tile.
__global__ void bulk_copy(const char* __restrict__ in, char* __restrict__ out, int64_t tiles, int tile, int stages) {
  extern __shared__ __align__(128) char buffer[];
  __shared__ __align__(8) uint64_t full[16];
  if (threadIdx.x != 0) return;
  for (int s = 0; s < stages; ++s) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_address(&full[s])));
  }
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  const auto load = [&](int64_t t, int s) {
    const uint32_t bar = smem_address(&full[s]);
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(tile) : "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
            smem_address(buffer + static_cast<int64_t>(s) * tile)),
        "l"(in + t * tile), "r"(tile), "r"(bar)
        : "memory");
  };
  const int64_t step = gridDim.x;
  int64_t k = 0;  // this block's tiles: blockIdx.x + k * step
  for (int s = 0; s < stages && blockIdx.x + s * step < tiles; ++s) load(blockIdx.x + s * step, s);
  for (int64_t t = blockIdx.x; t < tiles; t += step, ++k) {
    const int s = static_cast<int>(k % stages);
    const uint32_t parity = static_cast<uint32_t>((k / stages) & 1);
    asm volatile(
        "{\n .reg .pred done;\n wait:\n"
        " mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        " @!done bra wait;\n}" ::"r"(smem_address(&full[s])),
        "r"(parity)
        : "memory");
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(out + t * tile),
                 "r"(smem_address(buffer + static_cast<int64_t>(s) * tile)), "r"(tile)
                 : "memory");
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    // The previous tile's buffer is free once its store has read it: load the tile `stages` after it.
    if (k > 0) {
      asm volatile("cp.async.bulk.wait_group.read 1;" ::: "memory");
      const int64_t again = t - step + stages * step;
      if (again < tiles) load(again, static_cast<int>((k - 1) % stages));
    }
  }
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}

struct Timer {
  cudaEvent_t start, stop;
  Timer() {
    check(cudaEventCreate(&start), "event");
    check(cudaEventCreate(&stop), "event");
  }
  template <typename F>
  float median_us(F launch, int reps) {
    for (int i = 0; i < 3; ++i) launch();
    std::vector<float> times;
    for (int i = 0; i < reps; ++i) {
      check(cudaEventRecord(start), "record");
      launch();
      check(cudaEventRecord(stop), "record");
      check(cudaEventSynchronize(stop), "sync");
      float ms = 0;
      check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
      times.push_back(ms * 1e3f);
    }
    check(cudaGetLastError(), "launch");
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  }
};

}  // namespace

int main() {
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "properties");
  const int sms = prop.multiProcessorCount;
  // The bytes of q and k for (32, 8, 128) bf16 at T = 65536, and at T = 16384.
  for (const int64_t bytes : {int64_t{671088640}, int64_t{167772160}}) {
    char *in = nullptr, *out = nullptr;
    check(cudaMalloc(&in, bytes), "malloc");
    check(cudaMalloc(&out, bytes), "malloc");
    std::vector<uint32_t> host(bytes / 4);
    for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<uint32_t>(i * 2654435761u);
    check(cudaMemcpy(in, host.data(), bytes, cudaMemcpyHostToDevice), "upload");
    std::vector<uint32_t> back(bytes / 4);
    const auto verify = [&](const char* name, auto launch) {
      check(cudaMemset(out, 0, bytes), "memset");
      launch();
      check(cudaDeviceSynchronize(), name);
      check(cudaMemcpy(back.data(), out, bytes, cudaMemcpyDeviceToHost), "download");
      if (back != host) {
        std::fprintf(stderr, "%s: wrong copy\n", name);
        std::exit(1);
      }
    };
    Timer timer;
    const int reps = 30;
    const auto report = [&](const char* name, float us, float memcpy_us) {
      const double gbps = 2.0 * bytes / (us * 1e-6) / 1e9;
      std::printf("%-64s %7.1f MB %9.2f us %7.1f GB/s %6.1f%% of memcpy\n", name, bytes / 1e6, us, gbps,
                  100.0 * memcpy_us / us);
    };
    const float memcpy_us =
        timer.median_us([&] { check(cudaMemcpyAsync(out, in, bytes, cudaMemcpyDeviceToDevice), "memcpy"); }, reps);
    report("memcpy", memcpy_us, memcpy_us);

    const int64_t words = bytes / 16;
    // grid_blocks_per_sm: a grid-stride grid of that many blocks per SM, 0 for a one-shot grid (one step per
    // thread); resident_warps: resident warps per SM capped through dynamic shared memory (0: no cap).
    const auto run_register = [&](auto kernel, int u, int block, int grid_blocks_per_sm, int resident_warps,
                                  const char* name) {
      const int64_t one_shot = (words + static_cast<int64_t>(block) * u - 1) / (static_cast<int64_t>(block) * u);
      const unsigned grid = static_cast<unsigned>(
          grid_blocks_per_sm == 0 ? one_shot
                                  : std::min<int64_t>(one_shot, static_cast<int64_t>(sms) * grid_blocks_per_sm));
      const int blocks_cap = resident_warps * 32 / block;
      const size_t smem = resident_warps == 0 ? 0 : prop.sharedMemPerMultiprocessor / blocks_cap - 2048;
      check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
            "smem opt-in");
      int resident = 0;
      check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, block, smem), "occupancy");
      const auto launch = [&] {
        kernel<<<grid, block, smem>>>(reinterpret_cast<const uint4*>(in), reinterpret_cast<uint4*>(out), words);
      };
      verify(name, launch);
      char label[96];
      std::snprintf(label, sizeof label, "%s, %u x %d, %d warps/SM", name, grid, block, resident * block / 32);
      report(label, timer.median_us(launch, reps), memcpy_us);
    };
    for (int blocks : {8, 2}) {
      run_register(register_copy<1>, 1, 256, blocks, 0, "grid-stride, 1 word/thread");
      run_register(register_copy<4>, 4, 256, blocks, 0, "grid-stride, 4 words/thread");
    }
    // One step per thread, as the forward's plain grid runs (128 threads; 4 words a thread at N = 8 for
    // 128-dim heads, 24 resident warps per SM at its 80 registers).
    for (int block : {256, 128}) {
      run_register(register_copy<1>, 1, block, 0, 0, "one-shot, 1 word/thread");
      run_register(register_copy<2>, 2, block, 0, 0, "one-shot, 2 words/thread");
      run_register(register_copy<4>, 4, block, 0, 0, "one-shot, 4 words/thread");
      run_register(register_copy<8>, 8, block, 0, 0, "one-shot, 8 words/thread");
    }
    for (int warps : {48, 32, 24, 16}) {
      run_register(register_copy<1>, 1, 128, 0, warps, "one-shot, 1 word/thread, capped");
      run_register(register_copy<4>, 4, 128, 0, warps, "one-shot, 4 words/thread, capped");
    }

    for (const int tile : {4096, 8192, 16384}) {
      for (const int stages : {2, 4, 8}) {
        const int smem = tile * stages;
        if (smem > 200 * 1024) continue;
        check(cudaFuncSetAttribute(bulk_copy, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), "smem opt-in");
        int resident = 0;
        check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, bulk_copy, 32, smem), "occupancy");
        const int64_t tiles = bytes / tile;
        const unsigned grid = static_cast<unsigned>(std::min<int64_t>(tiles, static_cast<int64_t>(sms) * resident));
        const auto launch = [&] { bulk_copy<<<grid, 32, smem>>>(in, out, tiles, tile, stages); };
        char label[96];
        std::snprintf(label, sizeof label, "bulk, %2d KiB x %d stages, %d blocks/SM", tile / 1024, stages, resident);
        verify(label, launch);
        report(label, timer.median_us(launch, reps), memcpy_us);
      }
    }
    check(cudaFree(in), "free");
    check(cudaFree(out), "free");
  }
  std::printf("device: %s, %d SMs\n", prop.name, sms);
  return 0;
}
