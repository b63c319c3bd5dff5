// Where the large-T time of the shipped kernels goes, measured next to plain copies of the same bytes.
//
// Standalone (no JAX): builds the library's kernels for bf16 directly and times each variant with CUDA
// events (median of repeats, a run of back-to-back launches each). Every variant moves the bytes of
// heads (Hq, Hk, D) bf16 at T tokens: q and k read and written (ping-pong buffers, as in a chain of
// calls), plus what the variant itself reads. Build and run: benchmarks/device_run.sh stream_probe.
//
//   probe [all]     (32, 8, 128): copies, forward variants (one read removed at a time), backward
//   probe shapes    every benchmark head shape: memcpy, a 2 KiB-per-warp copy, forward neox/gptj at three N
//                   (4 warps per block, as the library launches)
//   probe occupancy a 2 KiB-per-warp copy with the resident warps per SM capped (shared memory)
//   probe small     T = 1 and 16 under CUDA graph replay: an empty kernel (the floor) and the forward
//   probe lean      T = 1, 16, 128 under CUDA graph replay: a lean N = 1 forward against the shipped one
//   probe backward  every benchmark head shape: the backward at several persistent-grid shapes
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>

#include "cuda/launch.h"

namespace qk = qkrope::cuda;
using bf16 = __nv_bfloat16;

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(err));
    std::exit(1);
  }
}

constexpr int kRows = 65536;

struct Heads {
  int q, k, d;
};
constexpr Heads kDefaultHeads{32, 8, 128};

// "(Hq,Hk,D) ", the prefix of a shape's report lines.
std::string shape_label(Heads h) {
  return "(" + std::to_string(h.q) + "," + std::to_string(h.k) + "," + std::to_string(h.d) + ") ";
}

const char* style_name(qkrope::Style style) { return style == qkrope::Style::kNeox ? "neox" : "gptj"; }

// The library's cos/sin prefetch distance in pairs (dispatch.PREFETCH_BYTES_PER_SM of bf16 heads per SM).
int prefetch_pairs(int sms, Heads h) { return sms * 40 * 1024 / static_cast<int>(h.d * sizeof(bf16)); }

// Streaming (evict-first) loads and stores, the hints a pure copy may want.
__device__ __forceinline__ uint4 load_word(const uint4* p, bool stream) { return stream ? __ldcs(p) : *p; }
__device__ __forceinline__ void store_word(uint4* p, uint4 v, bool stream) {
  if (stream) {
    __stcs(p, v);
  } else {
    *p = v;
  }
}

// Each warp copies kWarpBytes contiguous bytes of one of two arrays: every load issued, then every store.
template <int kWarpBytes, bool kStream>
__global__ void copy_warp_runs(const uint4* a, uint4* a_out, int64_t a_words, const uint4* b, uint4* b_out,
                               int64_t b_words) {
  constexpr int kPerLane = kWarpBytes / 16 / 32;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  int64_t first = warp * (kWarpBytes / 16);
  const uint4* src = a;
  uint4* dst = a_out;
  int64_t words = a_words;
  if (first >= a_words) {
    first -= a_words;
    src = b;
    dst = b_out;
    words = b_words;
  }
  uint4 r[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t idx = first + i * 32 + lane;
    r[i] = idx < words ? load_word(src + idx, kStream) : uint4{};
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t idx = first + i * 32 + lane;
    if (idx < words) store_word(dst + idx, r[i], kStream);
  }
}

// A persistent grid striding over both arrays, four words per thread per step.
__global__ void copy_grid_stride(const uint4* a, uint4* a_out, int64_t a_words, const uint4* b, uint4* b_out,
                                 int64_t b_words) {
  const int64_t total = a_words + b_words;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x * 4 + threadIdx.x; base < total;
       base += stride * 4) {
    uint4 r[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t idx = base + i * blockDim.x;
      if (idx < total) r[i] = idx < a_words ? a[idx] : b[idx - a_words];
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t idx = base + i * blockDim.x;
      if (idx < total) {
        if (idx < a_words) {
          a_out[idx] = r[i];
        } else {
          b_out[idx - a_words] = r[i];
        }
      }
    }
  }
}

struct Buffers {
  Heads heads;
  int64_t tokens;
  bf16 *q[2], *k[2], *dq, *dk;
  float *table, *inv_freq, *weight, *dweight, *partials;
  int32_t *pos_random, *pos_sequential, *pos_zero;
  size_t q_bytes() const { return static_cast<size_t>(tokens) * heads.q * heads.d * sizeof(bf16); }
  size_t k_bytes() const { return static_cast<size_t>(tokens) * heads.k * heads.d * sizeof(bf16); }
  double qk_traffic() const { return 2.0 * static_cast<double>(q_bytes() + k_bytes()); }  // read + written
  // One f32 cos/sin row and one position per token.
  double row_traffic() const { return static_cast<double>(tokens) * (heads.d * sizeof(float) + sizeof(int32_t)); }
  double forward_traffic() const { return qk_traffic() + row_traffic(); }
  double backward_traffic() const { return 1.5 * qk_traffic() + row_traffic(); }  // x and dy read, dx written
  int64_t q_words() const { return static_cast<int64_t>(q_bytes() / 16); }
  int64_t k_words() const { return static_cast<int64_t>(k_bytes() / 16); }
};

Buffers make_buffers(Heads heads, int64_t tokens) {
  const int d = heads.d;
  Buffers b{};
  b.heads = heads;
  b.tokens = tokens;
  for (int i = 0; i < 2; ++i) {
    check(cudaMalloc(&b.q[i], b.q_bytes()), "malloc q");
    check(cudaMalloc(&b.k[i], b.k_bytes()), "malloc k");
    check(cudaMemset(b.q[i], 0x3c, b.q_bytes()), "memset q");  // bf16 0x3c3c: about 0.0115, finite
    check(cudaMemset(b.k[i], 0x3c, b.k_bytes()), "memset k");
  }
  check(cudaMalloc(&b.dq, b.q_bytes()), "malloc dq");
  check(cudaMalloc(&b.dk, b.k_bytes()), "malloc dk");
  check(cudaMemset(b.dq, 0x3c, b.q_bytes()), "memset dq");
  check(cudaMemset(b.dk, 0x3c, b.k_bytes()), "memset dk");
  check(cudaMalloc(&b.table, sizeof(float) * kRows * d), "malloc table");
  check(cudaMemset(b.table, 0, sizeof(float) * kRows * d), "memset table");
  check(cudaMalloc(&b.inv_freq, sizeof(float) * d / 2), "malloc inv_freq");
  check(cudaMemset(b.inv_freq, 0, sizeof(float) * d / 2), "memset inv_freq");
  std::vector<bf16> w(d, __float2bfloat16(1.0f));
  check(cudaMalloc(&b.weight, sizeof(bf16) * d), "malloc weight");
  check(cudaMemcpy(b.weight, w.data(), sizeof(bf16) * d, cudaMemcpyHostToDevice), "copy weight");
  check(cudaMalloc(&b.dweight, sizeof(float) * 2 * d), "malloc dweight");
  check(cudaMalloc(&b.partials, sizeof(float) * 2 * d * 132 * 16), "malloc partials");
  std::vector<int32_t> random(tokens), sequential(tokens), zero(tokens, 0);
  std::mt19937 gen(0);
  for (int64_t t = 0; t < tokens; ++t) {
    random[t] = static_cast<int32_t>(gen() % kRows);
    sequential[t] = static_cast<int32_t>(t % kRows);
  }
  int32_t** dsts[3] = {&b.pos_random, &b.pos_sequential, &b.pos_zero};
  const std::vector<int32_t>* srcs[3] = {&random, &sequential, &zero};
  for (int i = 0; i < 3; ++i) {
    check(cudaMalloc(dsts[i], sizeof(int32_t) * tokens), "malloc positions");
    check(cudaMemcpy(*dsts[i], srcs[i]->data(), sizeof(int32_t) * tokens, cudaMemcpyHostToDevice), "copy positions");
  }
  return b;
}

void free_buffers(Buffers& b) {
  for (int i = 0; i < 2; ++i) {
    cudaFree(b.q[i]);
    cudaFree(b.k[i]);
  }
  for (void* p : {static_cast<void*>(b.dq), static_cast<void*>(b.dk), static_cast<void*>(b.table),
                  static_cast<void*>(b.inv_freq), static_cast<void*>(b.weight), static_cast<void*>(b.dweight),
                  static_cast<void*>(b.partials), static_cast<void*>(b.pos_random),
                  static_cast<void*>(b.pos_sequential), static_cast<void*>(b.pos_zero)}) {
    cudaFree(p);
  }
}

// Median per-launch microseconds of `launch(i)` over 9 repeats of `reps` back-to-back launches.
float time_us(const std::function<void(int)>& launch, int reps) {
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  for (int i = 0; i < 3; ++i) launch(i);
  std::vector<float> per_call;
  for (int r = 0; r < 9; ++r) {
    check(cudaEventRecord(start), "record");
    for (int i = 0; i < reps; ++i) launch(i);
    check(cudaEventRecord(stop), "record");
    check(cudaEventSynchronize(stop), "sync");
    check(cudaGetLastError(), "launch");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
    per_call.push_back(1000.0f * ms / reps);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(per_call.begin(), per_call.end());
  return per_call[per_call.size() / 2];
}

qkrope::Problem forward_problem(const Buffers& b, int i, const int32_t* positions, bool cache, bool weights,
                                qkrope::Style style) {
  const Heads h = b.heads;
  qkrope::Problem p;
  p.group[0] = {b.q[i % 2], b.q[(i + 1) % 2], nullptr, static_cast<int64_t>(h.q) * h.d, h.q};
  p.group[1] = {b.k[i % 2], b.k[(i + 1) % 2], nullptr, static_cast<int64_t>(h.k) * h.d, h.k};
  p.weight[0] = weights ? b.weight : nullptr;
  p.weight[1] = weights ? b.weight : nullptr;
  p.weight_dtype[0] = p.weight_dtype[1] = qkrope::ElemType::kBF16;
  p.positions = positions;
  p.table = {cache ? static_cast<const void*>(b.table) : b.inv_freq, qkrope::ElemType::kF32, cache, kRows};
  p.num_tokens = b.tokens;
  p.head_dim = p.rotary_dim = h.d;
  p.style = style;
  p.dtype = qkrope::ElemType::kBF16;
  return p;
}

// The backward's persistent grid: pairs per warp, warps per block, blocks per SM.
struct BackwardGrid {
  int pairs, warps, blocks_per_sm;
};

// Median microseconds of the backward (random positions, f32 cache; with or without both weights and
// their gradients) on `grid`.
float time_backward(const Buffers& b, int sms, BackwardGrid grid, bool weights, qkrope::Style style, int reps) {
  qkrope::BackwardOutputs o;
  o.dweight[0] = weights ? b.dweight : nullptr;
  o.dweight[1] = weights ? b.dweight + b.heads.d : nullptr;
  o.partials = b.partials;
  o.blocks_per_example = static_cast<int64_t>(sms) * grid.blocks_per_sm;
  const qkrope::Launch launch{grid.pairs, grid.warps, false, 0};
  return time_us(
      [&](int i) {
        qkrope::Problem p = forward_problem(b, i, b.pos_random, true, weights, style);
        p.group[0].grad = b.dq;
        p.group[1].grad = b.dk;
        check(qk::backward(p, o, launch, nullptr), "backward");
      },
      reps);
}

void report(const char* name, int64_t tokens, double bytes, float us, double copy_gbps) {
  const double gbps = bytes / (us * 1e3);
  std::printf("%-40s T=%6lld %10.2f us %8.1f GB/s %6.1f%% of memcpy\n", name, static_cast<long long>(tokens), us, gbps,
              copy_gbps > 0 ? 100.0 * gbps / copy_gbps : 100.0);
}

// Back-to-back launches per timing at each size.
int reps_for(int64_t tokens) { return tokens >= 65536 ? 20 : (tokens >= 4096 ? 80 : 200); }

// Times cudaMemcpy of q and k (ping-pong), reports it under `label` and returns its GB/s: the 100% line.
double report_memcpy(const Buffers& b, int reps, const std::string& label) {
  const float us = time_us(
      [&](int i) {
        check(cudaMemcpyAsync(b.q[(i + 1) % 2], b.q[i % 2], b.q_bytes(), cudaMemcpyDeviceToDevice), "memcpy q");
        check(cudaMemcpyAsync(b.k[(i + 1) % 2], b.k[i % 2], b.k_bytes(), cudaMemcpyDeviceToDevice), "memcpy k");
      },
      reps);
  const double gbps = b.qk_traffic() / (us * 1e3);
  report(label.c_str(), b.tokens, b.qk_traffic(), us, gbps);
  return gbps;
}

// Blocks of `block` threads for a copy kernel moving `warp_bytes` per warp over q and k.
unsigned copy_grid(const Buffers& b, int warp_bytes, int block) {
  const int64_t warps = (b.q_words() + b.k_words()) * 16 / warp_bytes;
  return static_cast<unsigned>((warps * 32 + block - 1) / block);
}

// One launch of a copy kernel (the signature of the copies above) over q and k, from buffer i % 2 into
// the other.
template <typename Kernel>
void launch_copy(Kernel kernel, const Buffers& b, int i, unsigned grid, int block, size_t smem = 0) {
  kernel<<<grid, block, smem>>>(reinterpret_cast<const uint4*>(b.q[i % 2]), reinterpret_cast<uint4*>(b.q[(i + 1) % 2]),
                                b.q_words(), reinterpret_cast<const uint4*>(b.k[i % 2]),
                                reinterpret_cast<uint4*>(b.k[(i + 1) % 2]), b.k_words());
}

void probe(int64_t tokens, int sms) {
  Buffers b = make_buffers(kDefaultHeads, tokens);
  const int reps = reps_for(tokens);
  const double qk_bytes = b.qk_traffic();
  const double copy_gbps = report_memcpy(b, reps, "memcpy q and k");

  const auto copy_kernel = [&](const char* name, auto kernel, int warp_bytes, int block) {
    const unsigned grid = copy_grid(b, warp_bytes, block);
    const float us = time_us([&](int i) { launch_copy(kernel, b, i, grid, block); }, reps);
    report(name, tokens, qk_bytes, us, copy_gbps);
  };
  copy_kernel("copy, 1 KiB per warp", copy_warp_runs<1024, false>, 1024, 128);
  copy_kernel("copy, 2 KiB per warp (ours at N=8)", copy_warp_runs<2048, false>, 2048, 128);
  copy_kernel("copy, 4 KiB per warp", copy_warp_runs<4096, false>, 4096, 128);
  copy_kernel("copy, 2 KiB per warp, streaming hints", copy_warp_runs<2048, true>, 2048, 128);
  {
    const float us = time_us([&](int i) { launch_copy(copy_grid_stride, b, i, sms * 8, 256); }, reps);
    report("copy, persistent grid stride", tokens, qk_bytes, us, copy_gbps);
  }

  // The forward as dispatched (rows warmed a wave ahead: dispatch.PREFETCH_BYTES_PER_SM) and what each
  // of its reads costs: no prefetch, positions all 0 (the row chain always hits), no weights, no table.
  const int ahead = prefetch_pairs(sms, kDefaultHeads);
  struct FwdVariant {
    std::string name;
    const int32_t* positions;
    bool cache, weights;
    int pairs, prefetch_pairs;
    qkrope::Style style;
  };
  const qkrope::Style neox = qkrope::Style::kNeox, gptj = qkrope::Style::kGptj;
  std::vector<FwdVariant> fwd;
  for (int n : {4, 8, 16}) {
    for (qkrope::Style style : {neox, gptj}) {
      const std::string tag = std::string("forward ") + style_name(style) + " N=" + std::to_string(n);
      fwd.push_back({tag, b.pos_random, true, true, n, ahead, style});
      if (n != 8 || style != neox) continue;
      fwd.push_back({tag + ", no prefetch", b.pos_random, true, true, n, 0, style});
      fwd.push_back({tag + ", positions all 0", b.pos_zero, true, true, n, ahead, style});
      fwd.push_back({tag + ", no weights", b.pos_random, true, false, n, ahead, style});
      fwd.push_back({tag + ", cache-free", b.pos_random, false, true, n, ahead, style});
    }
  }
  for (const FwdVariant& v : fwd) {
    const qkrope::Launch launch{v.pairs, 4, false, v.prefetch_pairs};
    const float us = time_us(
        [&](int i) {
          check(qk::forward(forward_problem(b, i, v.positions, v.cache, v.weights, v.style), launch, nullptr),
                "forward");
        },
        reps);
    report(v.name.c_str(), tokens, b.forward_traffic(), us, copy_gbps);
  }

  // Backward: x and dy read, dx written (q and k), cos/sin rows and positions read; with and without
  // the weight gradients (their partials and the reduction kernel).
  for (int blocks_per_sm : {2, 4}) {
    for (bool weights : {true, false}) {
      const int warps = 16 / blocks_per_sm;
      const float us = time_backward(b, sms, {4, warps, blocks_per_sm}, weights, neox, reps);
      const std::string name = "backward neox N=4 w" + std::to_string(warps) + " b/SM " + std::to_string(blocks_per_sm) +
                               (weights ? "" : ", no weights");
      report(name.c_str(), tokens, b.backward_traffic(), us, copy_gbps);
    }
  }
  free_buffers(b);
}

// Every benchmark head shape at three pairs-per-warp values, next to memcpy and a copy kernel of the same
// bytes, at the library's 4 warps per block; probe_regs runs it from builds with capped registers.
void probe_shapes(int sms) {
  struct ShapeCase {
    Heads heads;
    int pairs[3];
  };
  const ShapeCase cases[] = {{{32, 8, 128}, {4, 8, 16}}, {{16, 2, 256}, {2, 4, 8}}, {{16, 16, 64}, {4, 8, 16}}};
  // The library's 4 warps per block: 8 was slower at nearly every point (results/run9_probe_shapes).
  constexpr int kWarpsPerBlock = 4;
  for (const ShapeCase& c : cases) {
    for (int64_t tokens : {1024, 4096, 16384, 65536}) {
      Buffers b = make_buffers(c.heads, tokens);
      const int reps = reps_for(tokens);
      const std::string shape = shape_label(c.heads);
      const double copy_gbps = report_memcpy(b, reps, shape + "memcpy q and k");
      const unsigned grid = copy_grid(b, 2048, 128);
      const float copy_us = time_us([&](int i) { launch_copy(copy_warp_runs<2048, false>, b, i, grid, 128); }, reps);
      report((shape + "copy, 2 KiB per warp").c_str(), tokens, b.qk_traffic(), copy_us, copy_gbps);
      const int ahead = prefetch_pairs(sms, c.heads);
      for (int n : c.pairs) {
        for (qkrope::Style style : {qkrope::Style::kNeox, qkrope::Style::kGptj}) {
          const qkrope::Launch launch{n, kWarpsPerBlock, false, ahead};
          const float us = time_us(
              [&](int i) {
                check(qk::forward(forward_problem(b, i, b.pos_random, true, true, style), launch, nullptr), "forward");
              },
              reps);
          const std::string name = shape + "forward " + style_name(style) + " N=" + std::to_string(n);
          report(name.c_str(), tokens, b.forward_traffic(), us, copy_gbps);
        }
      }
      free_buffers(b);
    }
  }
}

// A 2 KiB-per-warp copy (128-thread blocks) with its resident warps per SM capped by dynamic shared
// memory: does the occupancy of the tuned forward (80 registers: 24 warps per SM) cost bandwidth?
void probe_occupancy() {
  int smem_per_sm = 0;
  check(cudaDeviceGetAttribute(&smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, 0), "smem per SM");
  check(cudaFuncSetAttribute(copy_warp_runs<2048, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024),
        "smem opt-in");
  for (int64_t tokens : {4096, 16384, 65536}) {
    Buffers b = make_buffers(kDefaultHeads, tokens);
    const int reps = reps_for(tokens);
    const double copy_gbps = report_memcpy(b, reps, "memcpy q and k");
    const unsigned grid = copy_grid(b, 2048, 128);
    for (int blocks : {16, 10, 8, 6, 4}) {  // 4 warps each: 64, 40, 32, 24, 16 warps per SM
      const size_t smem = blocks >= 16 ? 0 : static_cast<size_t>(smem_per_sm / blocks - 2048);
      int resident = 0;
      check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, copy_warp_runs<2048, false>, 128, smem),
            "occupancy");
      const float us =
          time_us([&](int i) { launch_copy(copy_warp_runs<2048, false>, b, i, grid, 128, smem); }, reps);
      const std::string name = "copy, 2 KiB per warp, " + std::to_string(resident * 4) + " warps/SM";
      report(name.c_str(), tokens, b.qk_traffic(), us, copy_gbps);
    }
    free_buffers(b);
  }
}

__global__ void empty_kernel() {}

// The latency skeleton of the forward for one warp per head: the head's 16-byte words load while the
// position -> cos/sin row chain resolves (kChain), then the words are scaled by the row and stored. Without
// kChain it is a plain copy: one round trip instead of two.
template <bool kChain>
__global__ void skeleton_kernel(const uint4* in, uint4* out, const int32_t* positions, const float* table, int heads,
                                int words_per_head, int row_floats) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  const int token = warp / heads;
  const int64_t base = static_cast<int64_t>(warp) * words_per_head;
  uint4 v = lane < words_per_head ? in[base + lane] : uint4{};
  if constexpr (kChain) {
    const float c = table[static_cast<int64_t>(positions[token]) * row_floats + lane % row_floats];
    v.x = __float_as_uint(__uint_as_float(v.x) * c);
  }
  if (lane < words_per_head) out[base + lane] = v;
}

// A lean forward for one warp per (token, head) pair, the launch small T runs (N = 1): bf16 heads, int32
// positions, a float32 cos/sin table at full rotary, bf16 weights, neox; 32-bit index math, no L2 hints,
// no prefetch, no V group, parameters in one small struct. What the shipped N = 1 kernel would cost
// without its generality (probe lean).
struct LeanArgs {
  const bf16* q;
  bf16* q_out;
  const bf16* k;
  bf16* k_out;
  const bf16* weight_q;
  const bf16* weight_k;
  const int32_t* positions;
  const float* table;
  uint32_t heads, heads_q, multiplier, shift;  // pair -> token: (pair * multiplier) >> shift
  int32_t last_row;
  float eps;
  uint32_t pairs;
};

// The head's words loaded and stored plainly, or with L2 hints as the shipped kernels do (kHints:
// evict-first loads, evict-last stores).
template <typename W, bool kHints>
__device__ __forceinline__ W lean_load(const W* src, uint64_t policy) {
  if constexpr (!kHints) {
    return *src;
  } else {
    W w;
    if constexpr (sizeof(W) == 8) {
      uint2 r;
      asm volatile("ld.global.L2::cache_hint.v2.u32 {%0, %1}, [%2], %3;" : "=r"(r.x), "=r"(r.y) : "l"(src), "l"(policy));
      memcpy(&w, &r, 8);
    } else if constexpr (sizeof(W) == 4) {
      uint32_t r;
      asm volatile("ld.global.L2::cache_hint.u32 %0, [%1], %2;" : "=r"(r) : "l"(src), "l"(policy));
      memcpy(&w, &r, 4);
    } else {
      uint16_t r;
      asm volatile("ld.global.L2::cache_hint.u16 %0, [%1], %2;" : "=h"(r) : "l"(src), "l"(policy));
      memcpy(&w, &r, 2);
    }
    return w;
  }
}
template <typename W, bool kHints>
__device__ __forceinline__ void lean_store(W* dst, const W& w, uint64_t policy) {
  if constexpr (!kHints) {
    *dst = w;
  } else if constexpr (sizeof(W) == 8) {
    uint2 r;
    memcpy(&r, &w, 8);
    asm volatile("st.global.L2::cache_hint.v2.u32 [%0], {%1, %2}, %3;" ::"l"(dst), "r"(r.x), "r"(r.y), "l"(policy) : "memory");
  } else if constexpr (sizeof(W) == 4) {
    uint32_t r;
    memcpy(&r, &w, 4);
    asm volatile("st.global.L2::cache_hint.u32 [%0], %1, %2;" ::"l"(dst), "r"(r), "l"(policy) : "memory");
  } else {
    uint16_t r;
    memcpy(&r, &w, 2);
    asm volatile("st.global.L2::cache_hint.u16 [%0], %1, %2;" ::"l"(dst), "h"(r), "l"(policy) : "memory");
  }
}

// kWide: 64-bit index math, as the shipped kernels do for any size.
template <int D, bool kWide, bool kHints>
__global__ void __launch_bounds__(128) lean_forward(const LeanArgs a) {
  using Index = std::conditional_t<kWide, int64_t, uint32_t>;
  constexpr int C = D / 64;  // elements per lane in each half of the head
  const Index pair = (static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const uint32_t lane = threadIdx.x % 32;
  if (pair >= static_cast<Index>(a.pairs)) return;
  const Index token = static_cast<Index>((static_cast<uint64_t>(pair) * a.multiplier) >> a.shift);
  const Index head = pair - token * a.heads;
  const int position = min(max(a.positions[token], 0), a.last_row);
  const bool is_q = head < a.heads_q;
  const Index row = is_q ? token * a.heads_q + head : token * (a.heads - a.heads_q) + head - a.heads_q;
  uint64_t first = 0, last = 0;
  if constexpr (kHints) {
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(first));
    asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(last));
  }
  const bf16* src = (is_q ? a.q : a.k) + row * D + lane * C;
  bf16* dst = (is_q ? a.q_out : a.k_out) + row * D + lane * C;
  const bf16* w = (is_q ? a.weight_q : a.weight_k) + lane * C;
  // Whole runs per load: C bf16 (2 to 8 bytes) and C floats (4 to 16 bytes).
  struct alignas(2 * C) Half {
    bf16 v[C];
  };
  struct alignas(4 * C) Run {
    float v[C];
  };
  const Half h0 = lean_load<Half, kHints>(reinterpret_cast<const Half*>(src), first);
  const Half h1 = lean_load<Half, kHints>(reinterpret_cast<const Half*>(src + D / 2), first);
  const Half g0 = *reinterpret_cast<const Half*>(w), g1 = *reinterpret_cast<const Half*>(w + D / 2);
  const float* angles = a.table + static_cast<Index>(position) * D + lane * C;
  const Run cr = *reinterpret_cast<const Run*>(angles), sr = *reinterpret_cast<const Run*>(angles + D / 2);
  bf16 x0[C], x1[C], w0[C], w1[C];
  float c[C], s[C];
#pragma unroll
  for (int j = 0; j < C; ++j) {
    x0[j] = h0.v[j];
    x1[j] = h1.v[j];
    w0[j] = g0.v[j];
    w1[j] = g1.v[j];
    c[j] = cr.v[j];
    s[j] = sr.v[j];
  }
  float v0[C], v1[C], sum = 0.0f;
#pragma unroll
  for (int j = 0; j < C; ++j) {
    v0[j] = __bfloat162float(x0[j]);
    v1[j] = __bfloat162float(x1[j]);
    sum += v0[j] * v0[j] + v1[j] * v1[j];
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  const float r = rsqrtf(sum / D + a.eps);
  Half o0, o1;
#pragma unroll
  for (int j = 0; j < C; ++j) {
    const float p0 = v0[j] * r * __bfloat162float(w0[j]), p1 = v1[j] * r * __bfloat162float(w1[j]);
    o0.v[j] = __float2bfloat16(p0 * c[j] - p1 * s[j]);
    o1.v[j] = __float2bfloat16(p1 * c[j] + p0 * s[j]);
  }
  lean_store<Half, kHints>(reinterpret_cast<Half*>(dst), o0, last);
  lean_store<Half, kHints>(reinterpret_cast<Half*>(dst + D / 2), o1, last);
}

LeanArgs lean_args(const Buffers& b, int i) {
  const Heads h = b.heads;
  LeanArgs a{};
  a.q = b.q[i % 2];
  a.q_out = b.q[(i + 1) % 2];
  a.k = b.k[i % 2];
  a.k_out = b.k[(i + 1) % 2];
  a.weight_q = a.weight_k = reinterpret_cast<const bf16*>(b.weight);
  a.positions = b.pos_random;
  a.table = b.table;
  a.heads = static_cast<uint32_t>(h.q + h.k);
  a.heads_q = static_cast<uint32_t>(h.q);
  int l = 0;
  while ((1u << l) < a.heads) ++l;
  a.shift = 31 + l;
  a.multiplier = static_cast<uint32_t>(((uint64_t{1} << a.shift) + a.heads - 1) / a.heads);
  a.last_row = kRows - 1;
  a.eps = 1e-6f;
  a.pairs = static_cast<uint32_t>(b.tokens) * a.heads;
  return a;
}

template <bool kWide = false, bool kHints = false>
void launch_lean(const LeanArgs& a, int d, cudaStream_t s) {
  const unsigned blocks = (a.pairs * 32 + 127) / 128;
  if (d == 64) lean_forward<64, kWide, kHints><<<blocks, 128, 0, s>>>(a);
  if (d == 128) lean_forward<128, kWide, kHints><<<blocks, 128, 0, s>>>(a);
  if (d == 256) lean_forward<256, kWide, kHints><<<blocks, 128, 0, s>>>(a);
}

// Per-launch microseconds of `launch` recorded `count` times into one CUDA graph, replayed (median of 9
// replays): the launch cost the reference design's 1.46 us at T = 1 was measured under.
float graph_us(const std::function<void(cudaStream_t)>& launch, int count) {
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  cudaGraph_t graph;
  check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "capture");
  for (int i = 0; i < count; ++i) launch(stream);
  check(cudaStreamEndCapture(stream, &graph), "end capture");
  cudaGraphExec_t exec;
  check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  std::vector<float> per_call;
  for (int r = 0; r < 12; ++r) {
    check(cudaEventRecord(start, stream), "record");
    check(cudaGraphLaunch(exec, stream), "graph launch");
    check(cudaEventRecord(stop, stream), "record");
    check(cudaEventSynchronize(stop), "sync");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
    if (r >= 3) per_call.push_back(1000.0f * ms / count);  // the first replays upload and warm
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  check(cudaGraphExecDestroy(exec), "destroy exec");
  check(cudaGraphDestroy(graph), "destroy graph");
  check(cudaStreamDestroy(stream), "destroy stream");
  std::sort(per_call.begin(), per_call.end());
  return per_call[per_call.size() / 2];
}

// Small T under graph replay: the empty-kernel floor and the forward of (32, 8, 128) at each N, with
// and without programmatic dependent launch, with the cos/sin table and cache-free.
void probe_small() {
  constexpr int kCount = 200;
  std::printf("%-48s %10.2f us per launch\n", "graph: empty kernel",
              graph_us([](cudaStream_t s) { empty_kernel<<<1, 32, 0, s>>>(); }, kCount));
  for (int64_t tokens : {1, 16}) {
    Buffers b = make_buffers(kDefaultHeads, tokens);
    const int heads = kDefaultHeads.q, words = kDefaultHeads.d * static_cast<int>(sizeof(bf16)) / 16;
    for (bool chain : {false, true}) {
      int call = 0;
      const float us = graph_us(
          [&](cudaStream_t s) {
            const int i = call++;
            auto kernel = chain ? skeleton_kernel<true> : skeleton_kernel<false>;
            kernel<<<static_cast<unsigned>(tokens * heads / 4), 128, 0, s>>>(
                reinterpret_cast<const uint4*>(b.q[i % 2]), reinterpret_cast<uint4*>(b.q[(i + 1) % 2]), b.pos_random,
                b.table, heads, words, kDefaultHeads.d);
          },
          kCount);
      char name[96];
      std::snprintf(name, sizeof(name), "graph: skeleton q T=%lld %s", static_cast<long long>(tokens),
                    chain ? "position -> row -> store" : "copy (load -> store)");
      std::printf("%-48s %10.2f us per launch\n", name, us);
    }
    // The neox forward at `launch` under graph replay, reported as `label`.
    const auto forward = [&](const qkrope::Launch& launch, bool cache, bool weights, const char* label) {
      int call = 0;
      const float us = graph_us(
          [&](cudaStream_t s) {
            check(qk::forward(forward_problem(b, call++, b.pos_random, cache, weights, qkrope::Style::kNeox), launch,
                              s),
                  "forward");
          },
          kCount);
      char name[96];
      std::snprintf(name, sizeof(name), "graph: forward neox T=%lld %s", static_cast<long long>(tokens), label);
      std::printf("%-48s %10.2f us per launch\n", name, us);
    };
    forward({2, 4, false, 0}, true, false, "N=2 no weights");
    for (int n : {1, 2, 4}) {
      for (bool pdl : {false, true}) {
        for (bool cache : {true, false}) {
          char label[48];
          std::snprintf(label, sizeof(label), "N=%d pdl=%d %s", n, pdl ? 1 : 0, cache ? "cache" : "cache-free");
          forward({n, 4, pdl, 0}, cache, true, label);
        }
      }
    }
    free_buffers(b);
  }
}

// Random bf16 values in [-1, 1) and a random f32 table: the lean kernel's output against the shipped N = 1
// forward's (max |difference|; both round once to bf16).
void check_lean(Buffers& b) {
  const Heads h = b.heads;
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  const auto fill = [&](bf16* dst, size_t count) {
    std::vector<bf16> v(count);
    for (auto& x : v) x = __float2bfloat16(uni(gen));
    check(cudaMemcpy(dst, v.data(), count * sizeof(bf16), cudaMemcpyHostToDevice), "fill");
  };
  fill(b.q[0], b.q_bytes() / 2);
  fill(b.k[0], b.k_bytes() / 2);
  fill(reinterpret_cast<bf16*>(b.weight), h.d);
  std::vector<float> table(static_cast<size_t>(kRows) * h.d);
  for (auto& x : table) x = uni(gen);
  check(cudaMemcpy(b.table, table.data(), table.size() * sizeof(float), cudaMemcpyHostToDevice), "table");
  const auto outputs = [&]() {
    std::vector<bf16> q(b.q_bytes() / 2), k(b.k_bytes() / 2);
    check(cudaMemcpy(q.data(), b.q[1], b.q_bytes(), cudaMemcpyDeviceToHost), "read q");
    check(cudaMemcpy(k.data(), b.k[1], b.k_bytes(), cudaMemcpyDeviceToHost), "read k");
    q.insert(q.end(), k.begin(), k.end());
    return q;
  };
  check(qk::forward(forward_problem(b, 0, b.pos_random, true, true, qkrope::Style::kNeox), {1, 4, false, 0}, nullptr),
        "forward");
  check(cudaDeviceSynchronize(), "sync");
  const std::vector<bf16> shipped = outputs();
  check(cudaMemset(b.q[1], 0xff, b.q_bytes()), "poison q");
  check(cudaMemset(b.k[1], 0xff, b.k_bytes()), "poison k");
  launch_lean(lean_args(b, 0), h.d, nullptr);
  check(cudaDeviceSynchronize(), "sync");
  const std::vector<bf16> lean = outputs();
  float worst = 0.0f;
  for (size_t i = 0; i < lean.size(); ++i) {
    const float d = std::abs(__bfloat162float(lean[i]) - __bfloat162float(shipped[i]));
    worst = std::isnan(d) ? INFINITY : std::max(worst, d);
  }
  std::printf("check %slean vs shipped N=1, T=%lld: max |diff| %.3g over %zu values\n", shape_label(h).c_str(),
              static_cast<long long>(b.tokens), worst, lean.size());
}

// The lean forward against the shipped N = 1 forward under graph replay, next to the empty kernel and the
// latency skeleton, alternating over three rounds so that drift cancels (probe lean).
void probe_lean() {
  constexpr int kCount = 200;
  for (const Heads heads : {Heads{32, 8, 128}, Heads{16, 2, 256}, Heads{16, 16, 64}}) {
    for (int64_t tokens : {1, 16, 128}) {
      Buffers b = make_buffers(heads, tokens);
      if (tokens == 16) check_lean(b);
      const int words = heads.d * static_cast<int>(sizeof(bf16)) / 16;
      std::vector<float> empty, skeleton, shipped, lean, wide, hints;
      for (int round = 0; round < 3; ++round) {
        empty.push_back(graph_us([](cudaStream_t s) { empty_kernel<<<1, 32, 0, s>>>(); }, kCount));
        int call = 0;
        skeleton.push_back(graph_us(
            [&](cudaStream_t s) {
              const int i = call++;
              skeleton_kernel<true><<<static_cast<unsigned>((tokens * heads.q + 3) / 4), 128, 0, s>>>(
                  reinterpret_cast<const uint4*>(b.q[i % 2]), reinterpret_cast<uint4*>(b.q[(i + 1) % 2]),
                  b.pos_random, b.table, heads.q, words, heads.d);
            },
            kCount));
        call = 0;
        shipped.push_back(graph_us(
            [&](cudaStream_t s) {
              check(qk::forward(forward_problem(b, call++, b.pos_random, true, true, qkrope::Style::kNeox),
                                {1, 4, false, 0}, s),
                    "forward");
            },
            kCount));
        call = 0;
        lean.push_back(graph_us([&](cudaStream_t s) { launch_lean(lean_args(b, call++), heads.d, s); }, kCount));
        call = 0;
        wide.push_back(graph_us([&](cudaStream_t s) { launch_lean<true>(lean_args(b, call++), heads.d, s); }, kCount));
        call = 0;
        hints.push_back(
            graph_us([&](cudaStream_t s) { launch_lean<false, true>(lean_args(b, call++), heads.d, s); }, kCount));
      }
      const auto median = [](std::vector<float> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
      };
      std::printf("%sT=%4lld us per launch: empty %.3f  skeleton %.3f  shipped N=1 %.3f  lean %.3f  "
                  "lean 64-bit %.3f  lean L2 hints %.3f\n",
                  shape_label(heads).c_str(), static_cast<long long>(tokens), median(empty), median(skeleton),
                  median(shipped), median(lean), median(wide), median(hints));
      free_buffers(b);
    }
  }
}

// The backward of every benchmark head shape, both styles, at several persistent-grid shapes (pairs per
// warp, warps per block, blocks per SM), with weight gradients, next to memcpy of q and k.
void probe_backward(int sms) {
  const BackwardGrid configs[] = {{4, 4, 4}, {4, 4, 3}, {4, 8, 2}, {2, 8, 2}, {2, 4, 4}, {8, 4, 4}, {8, 8, 2}};
  for (const Heads heads : {Heads{32, 8, 128}, Heads{16, 2, 256}, Heads{16, 16, 64}}) {
    for (int64_t tokens : {4096, 16384, 65536}) {
      Buffers b = make_buffers(heads, tokens);
      const int reps = reps_for(tokens);
      const std::string shape = shape_label(heads);
      const double copy_gbps = report_memcpy(b, reps, shape + "memcpy q and k");
      for (qkrope::Style style : {qkrope::Style::kNeox, qkrope::Style::kGptj}) {
        for (const BackwardGrid& c : configs) {
          const float us = time_backward(b, sms, c, true, style, reps);
          char name[96];
          std::snprintf(name, sizeof(name), "%sbwd %s N=%d w%d b/SM %d", shape.c_str(), style_name(style), c.pairs,
                        c.warps, c.blocks_per_sm);
          report(name, tokens, b.backward_traffic(), us, copy_gbps);
        }
      }
      free_buffers(b);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "all";
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "SM count");
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, 0), "properties");
  std::printf("%s, %d SMs; mode %s; bf16, f32 cos/sin table of %d rows\n", prop.name, sms, mode.c_str(), kRows);
  if (mode == "all") {
    std::printf("heads (%d, %d, %d)\n", kDefaultHeads.q, kDefaultHeads.k, kDefaultHeads.d);
    for (int64_t tokens : {4096, 16384, 65536}) probe(tokens, sms);
  } else if (mode == "shapes") {
    probe_shapes(sms);
  } else if (mode == "occupancy") {
    probe_occupancy();
  } else if (mode == "small") {
    probe_small();
  } else if (mode == "lean") {
    probe_lean();
  } else if (mode == "backward") {
    probe_backward(sms);
  } else {
    std::fprintf(stderr, "unknown mode %s (all, shapes, occupancy, small, lean, backward)\n", mode.c_str());
    return 2;
  }
  return 0;
}
