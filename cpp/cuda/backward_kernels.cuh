// Backward kernels: from the saved input x and the output cotangent dy, in one pass per head,
//   g = rotate(dy, -angle);  r = rsqrt(mean(x^2) + eps);  xhat = x r;  u = g * scale
//   dx = r * (u - xhat * mean(u * xhat));   dweight += g * xhat   (summed over tokens and heads)
// The grid is persistent and fixed by the partials buffer: each block writes one [2, D] row of float32
// weight-gradient partials in a fixed order, and reduce_partials_kernel sums the rows in a fixed order,
// so the same inputs give bit-identical gradients.
#pragma once

#include "cuda/device_common.cuh"
#include "cuda/forward_kernels.cuh"
#include "cuda/tuned_layout.cuh"

namespace qkrope::cuda {

__device__ __forceinline__ bool wants_dweight(const Problem& p) { return p.weight[0] != nullptr || p.weight[1] != nullptr; }

// The pairs of the example this block works on, and the block's warps numbered within that example.
struct ExampleSpan {
  int64_t begin, end;     // pair range of the example
  int64_t warp, warps;    // this warp's index among the example's warps, and their count

  __device__ __forceinline__ ExampleSpan(const Problem& p, const BackwardOutputs& o) {
    const int64_t example = blockIdx.x / o.blocks_per_example;
    const int64_t pairs = p.total_pairs() / o.num_examples;
    begin = example * pairs;
    end = begin + pairs;
    warps = o.blocks_per_example * blockDim.x / kWarp;
    warp = ((blockIdx.x % o.blocks_per_example) * blockDim.x + threadIdx.x) / kWarp;
  }
};

// Sums the [warps][2][D] shared-memory rows of a block into its partials row. Every thread calls it.
__device__ __forceinline__ void write_block_partials(const float* red, int head_dim, const BackwardOutputs& o) {
  __syncthreads();
  const int warps = blockDim.x / kWarp;
  for (int t = threadIdx.x; t < 2 * head_dim; t += blockDim.x) {
    float sum = 0.0f;
    for (int w = 0; w < warps; ++w) sum += red[w * 2 * head_dim + t];
    o.partials[static_cast<int64_t>(blockIdx.x) * 2 * head_dim + t] = sum;
  }
}

template <typename T, int D, int N, Style S, Inputs In>
__global__ void __launch_bounds__(kMaxThreads) backward_tuned_kernel(const KernelArgs a, const BackwardOutputs o) {
  using Lay = TunedLayout<T, D, N, S>;
  constexpr int L = Lay::L, G = Lay::G, I = Lay::I, C = Lay::C, SL = Lay::SL;
  extern __shared__ float red[];  // [warps][2][D]
  __shared__ float scale[2][D];
  wait_for_previous_kernel(a.pdl);
  const Problem& p = a.p;
  const int lane = threadIdx.x % kWarp, grp = lane / L, gl = lane % L;
  const ExampleSpan span(p, o);
  const int64_t tasks = (span.end - span.begin + N - 1) / N;
  const bool want_dw = wants_dweight(p);
  stage_scales<D>(p, &scale[0][0]);  // once per block: no weight round trip per pair

  float acc_q[SL][C] = {}, acc_k[SL][C] = {};
  float cs[Lay::AS][Lay::NA], sn[Lay::AS][Lay::NA];
  int64_t angles_token = -1;

  for (int64_t task = span.warp; task < tasks; task += span.warps) {  // warp-uniform
    PairSlots<I> at;
    at.locate(p, span.begin + task * N + grp, G, span.end);
    Chunk<T, C> xr[I][SL], dyr[I][SL];
#pragma unroll
    for (int i = 0; i < I; ++i) {
      const T* xs = static_cast<const T*>(p.group[at.group[i]].in) + at.offset[i];
      const T* gs = static_cast<const T*>(p.group[at.group[i]].grad) + at.offset[i];
#pragma unroll
      for (int s = 0; s < SL; ++s) {
        if (at.valid[i]) {
          xr[i][s].load(xs + Lay::chunk_start(s, gl));
          dyr[i][s].load(gs + Lay::chunk_start(s, gl));
        } else {
          xr[i][s].zero();
          dyr[i][s].zero();
        }
      }
    }
#pragma unroll
    for (int i = 0; i < I; ++i) {
      if (at.valid[i] && at.token[i] != angles_token) {
        load_tuned_angles<Lay, In>(a, load_position(p, at.token[i]), gl, cs, sn);
        angles_token = at.token[i];
      }
      float x[SL][C], g[SL][C];
      float sumsq = 0.0f;
#pragma unroll
      for (int s = 0; s < SL; ++s) {
#pragma unroll
        for (int j = 0; j < C; ++j) {
          x[s][j] = xr[i][s].get(j);
          g[s][j] = dyr[i][s].get(j);
          sumsq += x[s][j] * x[s][j];
        }
      }
      rotate_tuned<Lay, S>(g, cs, sn, -1.0f);
      const float r = rsqrtf(group_sum<L>(sumsq) / static_cast<float>(D) + p.eps);
      float u[SL][C];
      float dot = 0.0f;
      const float* w = scale[at.group[i] & 1];
#pragma unroll
      for (int s = 0; s < SL; ++s) {
#pragma unroll
        for (int j = 0; j < C; ++j) {
          x[s][j] *= r;  // xhat from here on
          u[s][j] = g[s][j] * w[Lay::chunk_start(s, gl) + j];
          dot += u[s][j] * x[s][j];
        }
      }
      const float mean_dot = group_sum<L>(dot) / static_cast<float>(D);
      if (!at.valid[i]) continue;
      T* dst = static_cast<T*>(p.group[at.group[i]].out) + at.offset[i];
#pragma unroll
      for (int s = 0; s < SL; ++s) {
        Chunk<T, C> out;
#pragma unroll
        for (int j = 0; j < C; ++j) {
          out.set(j, r * (u[s][j] - x[s][j] * mean_dot));
          if (at.group[i] == 0) {
            acc_q[s][j] += g[s][j] * x[s][j];
          } else {
            acc_k[s][j] += g[s][j] * x[s][j];
          }
        }
        out.store(dst + Lay::chunk_start(s, gl));
      }
    }
  }

  if (!want_dw) return;  // uniform over the grid
  // Lanes at the same position of the G groups hold the same elements: fold them, then one row per warp.
#pragma unroll
  for (int s = 0; s < SL; ++s) {
#pragma unroll
    for (int j = 0; j < C; ++j) {
#pragma unroll
      for (int offset = L; offset < kWarp; offset <<= 1) {
        acc_q[s][j] += __shfl_xor_sync(0xffffffffu, acc_q[s][j], offset);
        acc_k[s][j] += __shfl_xor_sync(0xffffffffu, acc_k[s][j], offset);
      }
    }
  }
  if (grp == 0) {
    float* mine = red + (threadIdx.x / kWarp) * 2 * D;
#pragma unroll
    for (int s = 0; s < SL; ++s) {
#pragma unroll
      for (int j = 0; j < C; ++j) {
        mine[Lay::chunk_start(s, gl) + j] = acc_q[s][j];
        mine[D + Lay::chunk_start(s, gl) + j] = acc_k[s][j];
      }
    }
  }
  write_block_partials(red, D, o);
}

// Pairs a lane group of the generic backward keeps in flight at once: 64 bytes of x and dy each per lane,
// half the forward's kGenericRounds, as a lane also holds its weight-gradient sums (16 registers per slot
// of 8 elements). With them the kernel takes 177-211 registers (bf16), so two 4-warp blocks fit per SM:
// the grid dispatch.BACKWARD_GENERIC_LAUNCH asks for.
template <typename T>
constexpr int kGenericBackwardRounds = 4 / static_cast<int>(sizeof(T));

// Like backward_tuned with head_dim known at run time, and organised as forward_generic: a task is G * rounds
// consecutive pairs whose loads all go out before any is waited for; the block stages both weights' scales
// once; neox partners are held by one lane (Paired: PairedLayout) or exchanged through shared memory. The
// loop over one pair at a time, which loaded the position and the weights after the data and kept one pair
// in flight per warp, ran at 23-28% of copy bandwidth (results/run12_generic_prefetch/backward_before).
template <typename T, int C, Style S, bool Paired = false>
__global__ void __launch_bounds__(kMaxThreads)
    backward_generic_kernel(const KernelArgs a, const BackwardOutputs o, int rounds, int lanes_per_head) {
  constexpr int K = kMaxHeadDim / (kWarp * C);
  constexpr int R = kGenericBackwardRounds<T>;
  constexpr int KA = Paired ? K / 2 : K;
  static_assert(!Paired || (S == Style::kNeox && K % 2 == 0), "paired slots hold neox partners");
  // While looping: the [2][D] weight scales, then the neox staging rows [warps][G][D]; after: the
  // [warps][2][D] reduction rows.
  extern __shared__ float smem[];
  wait_for_previous_kernel(a.pdl);
  const Problem& p = a.p;
  const auto lay = make_generic_layout<Paired>(p, lanes_per_head, C);
  const int dim = p.head_dim;
  const ExampleSpan span(p, o);
  const int per_task = lay.G * rounds;
  const int64_t tasks = (span.end - span.begin + per_task - 1) / per_task;
  const float* scale = smem;
  float* row = Paired ? nullptr : head_row(smem + 2 * dim, lay, dim);
  stage_scales_generic<C>(a, smem);  // once per block: no weight round trip per pair

  float acc_q[K][C] = {}, acc_k[K][C] = {};
  float cs[KA][C], sn[KA][C];
  int64_t angles_at = 0;
  bool have_angles = false;
  for (int64_t task = span.warp; task < tasks; task += span.warps) {  // warp-uniform
    const int64_t first = span.begin + task * per_task;
    const int64_t end = first + per_task < span.end ? first + per_task : span.end;
    PairSlots<R> at;
    at.locate(p, first + lay.grp, lay.G, end);  // slots at or past `rounds` are past `end`: invalid
    WidePosition position[R];
#pragma unroll
    for (int i = 0; i < R; ++i) position[i].fetch(p, at.token[i], at.valid[i]);
    Chunk<T, C> xr[R][K], dyr[R][K];
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const T* xs = static_cast<const T*>(p.group[at.group[i]].in) + at.offset[i];
      const T* gs = static_cast<const T*>(p.group[at.group[i]].grad) + at.offset[i];
#pragma unroll
      for (int k = 0; k < K; ++k) {
        if (at.valid[i] && lay.has(k)) {
          xr[i][k].load(xs + lay.chunk(k) * C);
          dyr[i][k].load(gs + lay.chunk(k) * C);
        } else {
          xr[i][k].zero();
          dyr[i][k].zero();
        }
      }
    }
#pragma unroll
    for (int i = 0; i < R; ++i) {
      if (i == rounds) break;  // warp-uniform
      const bool valid = at.valid[i];
      const int g = at.group[i];
      if (valid && (!have_angles || position[i].value(p) != angles_at)) {
        angles_at = position[i].value(p);
        have_angles = true;
        if constexpr (Paired) {
          load_paired_angles<KA, C, Inputs::kAny>(a, angles_at, lay, cs, sn);
        } else {
          load_generic_angles<K, C, S>(a, angles_at, lay, cs, sn);
        }
      }
      float x[K][C], gr[K][C];
      float sumsq = 0.0f;
#pragma unroll
      for (int k = 0; k < K; ++k) {
#pragma unroll
        for (int j = 0; j < C; ++j) {
          x[k][j] = xr[i][k].get(j);
          gr[k][j] = dyr[i][k].get(j);
          sumsq += x[k][j] * x[k][j];
        }
      }
      if constexpr (Paired) {
        rotate_paired<K, C>(lay, gr, cs, sn, -1.0f);
      } else {
        rotate_generic<K, C, S>(p, row, lay, gr, cs, sn, -1.0f);  // every lane: neox syncs the warp
      }
      const float r = rsqrtf(group_sum_runtime(sumsq, lay.L) / static_cast<float>(dim) + p.eps);
      const float* w = scale + (g & 1) * dim;
      float dot = 0.0f;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        float wk[C];
        SmemRun<C>::load(w + (lay.has(k) ? lay.chunk(k) * C : 0), wk);  // a missing slot's x, dy are 0
#pragma unroll
        for (int j = 0; j < C; ++j) {
          x[k][j] *= r;  // xhat
          const float u = gr[k][j] * wk[j];
          dot += u * x[k][j];
          if (valid && g == 0) {
            acc_q[k][j] += gr[k][j] * x[k][j];
          } else if (valid) {
            acc_k[k][j] += gr[k][j] * x[k][j];
          }
          gr[k][j] = u;  // u from here on
        }
      }
      const float mean_dot = group_sum_runtime(dot, lay.L) / static_cast<float>(dim);
      if (!valid) continue;
      T* dst = static_cast<T*>(p.group[g].out) + at.offset[i];
#pragma unroll
      for (int k = 0; k < K; ++k) {
        if (!lay.has(k)) continue;
        Chunk<T, C> out;
#pragma unroll
        for (int j = 0; j < C; ++j) out.set(j, r * (gr[k][j] - x[k][j] * mean_dot));
        out.store(dst + lay.chunk(k) * C);
      }
    }
  }

  if (!wants_dweight(p)) return;  // uniform over the grid
  // Lanes at the same position of the G groups hold the same elements: fold them.
#pragma unroll
  for (int k = 0; k < K; ++k) {
#pragma unroll
    for (int j = 0; j < C; ++j) {
      for (int offset = lay.L; offset < kWarp; offset <<= 1) {
        acc_q[k][j] += __shfl_xor_sync(0xffffffffu, acc_q[k][j], offset);
        acc_k[k][j] += __shfl_xor_sync(0xffffffffu, acc_k[k][j], offset);
      }
    }
  }
  __syncthreads();  // the scales and staging rows are reused for the reduction
  if (lay.grp == 0) {
    float* mine = smem + (threadIdx.x / kWarp) * 2 * dim;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (!lay.has(k)) continue;
#pragma unroll
      for (int j = 0; j < C; ++j) {
        mine[lay.chunk(k) * C + j] = acc_q[k][j];
        mine[dim + lay.chunk(k) * C + j] = acc_k[k][j];
      }
    }
  }
  write_block_partials(smem, dim, o);
}

// dweight[g][example][e] = sum over the example's blocks b of partials[example][b][g][e]. A block covers
// 32 columns with 8 row slices: slice y sums rows y, y + 8, ... in order, then the slices are added in
// order, so the result is the same on every run.
constexpr int kReduceColumns = 32, kReduceSlices = 8;

static __global__ void __launch_bounds__(kReduceColumns* kReduceSlices)
    reduce_partials_kernel(const BackwardOutputs o, int head_dim) {
  __shared__ float slices[kReduceSlices][kReduceColumns];
  const int64_t column = static_cast<int64_t>(blockIdx.x) * kReduceColumns + threadIdx.x;  // over [E][2][D]
  const bool active = column < o.num_examples * 2 * head_dim;
  const int64_t example = column / (2 * head_dim);
  const int g = static_cast<int>(column / head_dim % 2), e = static_cast<int>(column % head_dim);
  float sum = 0.0f;
  if (active) {
    const float* rows = o.partials + example * o.blocks_per_example * 2 * head_dim + g * head_dim + e;
#pragma unroll 8
    for (int64_t b = threadIdx.y; b < o.blocks_per_example; b += kReduceSlices) sum += rows[b * 2 * head_dim];
  }
  slices[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y != 0 || !active || o.dweight[g] == nullptr) return;
  float total = 0.0f;
#pragma unroll
  for (int y = 0; y < kReduceSlices; ++y) total += slices[y][threadIdx.x];
  o.dweight[g][example * head_dim + e] = total;
}

}  // namespace qkrope::cuda
