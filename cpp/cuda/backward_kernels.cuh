// Backward kernels: from the saved input x and the output cotangent dy, in one pass per head,
//   g = rotate(dy, -angle);  r = rsqrt(mean(x^2) + eps);  xhat = x r;  u = g * scale
//   dx = r * (u - xhat * mean(u * xhat));   dweight += g * xhat   (summed over tokens and heads)
// The grid is persistent and fixed by the partials buffer: each block writes one [2, D] row of float32
// weight-gradient partials in a fixed order, and reduce_partials_kernel sums the rows in a fixed order,
// so the same inputs give bit-identical gradients.
#pragma once

#include "cuda/async_copy.cuh"
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

// Partial: neox with rotary_dim < D in TunedLane's partial layout (the rotary half whole chunks), as the
// forward: a pass-through lane rotates by the identity, and lanes still partition the head's chunks, so the
// weight-gradient rows below are written as at full rotary.
template <typename T, int D, int N, Style S, Inputs In, bool Partial = false>
__global__ void __launch_bounds__(kMaxThreads) backward_tuned_kernel(const KernelArgs a, const BackwardOutputs o) {
  static_assert(!Partial || S == Style::kNeox, "gptj reaches any rotary_dim with the plain layout");
  using Lay = TunedLayout<T, D, N, S>;
  constexpr int L = Lay::L, G = Lay::G, I = Lay::I, C = Lay::C, SL = Lay::SL;
  extern __shared__ float red[];  // [warps][2][D]
  __shared__ float scale[2][D];
  wait_for_previous_kernel(a.pdl);
  const Problem& p = a.p;
  const int lane_id = threadIdx.x % kWarp, grp = lane_id / L;
  const TunedLane<Lay, Partial> lane(lane_id % L, p.rotary_dim);
  const ExampleSpan span(p, o);
  const int64_t tasks = (span.end - span.begin + N - 1) / N;
  const bool want_dw = wants_dweight(p);
  stage_scales<D>(p, &scale[0][0]);  // once per block: no weight round trip per pair

  float acc_q[SL][C] = {}, acc_k[SL][C] = {};
  float cs[Lay::AS][Lay::NA], sn[Lay::AS][Lay::NA];
  int64_t angles_token = -1;

  for (int64_t task = span.warp; task < tasks; task += span.warps) {  // warp-uniform
    PairSlots<I> at;
    at.locate(a, span.begin + task * N + grp, G, span.end);
    Chunk<T, C> xr[I][SL], dyr[I][SL];
#pragma unroll
    for (int i = 0; i < I; ++i) {
      const T* xs = static_cast<const T*>(p.group[at.group[i]].in) + at.offset[i];
      const T* gs = static_cast<const T*>(p.group[at.group[i]].grad) + at.offset[i];
#pragma unroll
      for (int s = 0; s < SL; ++s) {
        if (at.valid[i]) {
          xr[i][s].load(xs + lane.chunk(s));
          dyr[i][s].load(gs + lane.chunk(s));
        } else {
          xr[i][s].zero();
          dyr[i][s].zero();
        }
      }
    }
#pragma unroll
    for (int i = 0; i < I; ++i) {
      if (at.valid[i] && at.token[i] != angles_token) {
        load_tuned_angles<Lay, In>(a, load_position(p, at.token[i]), lane, cs, sn);
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
          u[s][j] = g[s][j] * w[lane.chunk(s) + j];
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
        out.store(dst + lane.chunk(s));
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
        mine[lane.chunk(s) + j] = acc_q[s][j];
        mine[D + lane.chunk(s) + j] = acc_k[s][j];
      }
    }
  }
  write_block_partials(red, D, o);
}

// Pairs per lane group in one task of the generic backward, at most (the launcher's `rounds`). They wait
// in shared memory (BackwardStages), not registers. Two rounds (bf16) keep a 4-warp block under a quarter
// of an SM's shared memory, so four blocks fit: (32, 8, 80) at T = 16384 took 191 us so, against 255 us
// with four rounds and the two blocks that then fit (results/run13_backward_async).
template <typename T>
constexpr int kGenericBackwardRounds = 4 / static_cast<int>(sizeof(T));

// The shared memory of the generic backward's block, in bytes from its start. While looping: the [2][D]
// weight scales; the neox staging rows [warps][G][D] (neox_rows: partners exchanged through shared
// memory); from a 16-byte boundary, each lane's weight-gradient sums; then each warp's two stages (see
// BackwardStages), where the [warps][2][D] weight-gradient rows go after the loop.
struct BackwardSmem {
  int head_dim, warps, rows_per_warp, rounds;

  // Per round a stage holds each lane's x and dy (K chunk words each: kMaxHeadDim elements per warp,
  // whatever the chunk) and its 8-byte position.
  __host__ __device__ static constexpr size_t stage_bytes(int rounds, int elem_bytes) {
    return static_cast<size_t>(rounds) * (2 * kMaxHeadDim * elem_bytes + kWarp * sizeof(int64_t));
  }
  // A lane's sums for q and k: kMaxHeadDim / kWarp floats each.
  static constexpr size_t kSumsBytesPerWarp = 2 * kMaxHeadDim * sizeof(float);

  __host__ __device__ size_t sums_offset() const {
    const size_t loop = (2 + static_cast<size_t>(warps) * rows_per_warp) * head_dim * sizeof(float);
    return (loop + 15) / 16 * 16;
  }
  __host__ __device__ size_t stages_offset() const { return sums_offset() + warps * kSumsBytesPerWarp; }
  // The stages hold at least 2 * kMaxHeadDim floats per warp: room for its [2][D] row after the loop.
  __host__ __device__ size_t total_bytes(int elem_bytes) const {
    return stages_offset() + static_cast<size_t>(warps) * 2 * stage_bytes(rounds, elem_bytes);
  }
};

// One warp's two stages of the generic backward: stage s of round i holds chunk slot k of each lane's x and
// dy, and the lane's position. A lane only ever reads the slots it copied itself, so waiting for its own
// copies is all the synchronisation needed.
template <typename T, int C>
class BackwardStages {
 public:
  using Word = typename Chunk<T, C>::Word;
  static constexpr int K = kMaxHeadDim / (kWarp * C);

  __device__ __forceinline__ BackwardStages(unsigned char* warp_base, int rounds)
      : base_(warp_base), rounds_(rounds), lane_(static_cast<int>(threadIdx.x % kWarp)) {}

  __device__ __forceinline__ Word* x(int stage, int i, int k) const { return words(stage) + slot(i, k); }
  __device__ __forceinline__ Word* dy(int stage, int i, int k) const {
    return words(stage) + rounds_ * K * kWarp + slot(i, k);
  }
  __device__ __forceinline__ int64_t* position(int stage, int i) const {
    return reinterpret_cast<int64_t*>(words(stage) + 2 * rounds_ * K * kWarp) + i * kWarp + lane_;
  }

 private:
  __device__ __forceinline__ Word* words(int stage) const {
    return reinterpret_cast<Word*>(base_ + stage * BackwardSmem::stage_bytes(rounds_, sizeof(T)));
  }
  __device__ __forceinline__ int slot(int i, int k) const { return (i * K + k) * kWarp + lane_; }
  unsigned char* base_;
  int rounds_, lane_;
};

// A lane's weight-gradient sums, [g][k][C] floats, in shared memory only it touches (lane-minor, so a
// warp's accesses hit distinct banks). In registers they took 2 * K * C = 32 of them.
template <int K, int C>
class LaneSums {
 public:
  __device__ __forceinline__ explicit LaneSums(float* warp_base)
      : base_(warp_base + threadIdx.x % kWarp) {
#pragma unroll
    for (int e = 0; e < 2 * K * C; ++e) base_[e * kWarp] = 0.0f;
  }
  // sums[g][k][j] += v[j] for the C elements of slot k.
  __device__ __forceinline__ void add(int g, int k, const float (&v)[C]) const {
#pragma unroll
    for (int j = 0; j < C; ++j) base_[((g * K + k) * C + j) * kWarp] += v[j];
  }
  __device__ __forceinline__ float get(int g, int k, int j) const { return base_[((g * K + k) * C + j) * kWarp]; }

 private:
  float* base_;
};

// Blocks of kMaxThreads the generic backward is built to fit per SM: two (128 registers, the 16 4-warp
// blocks dispatch.BACKWARD_GENERIC_LAUNCH asks for) for 16-byte chunks without a shared-memory neox
// exchange; one for the others, which take 140-172 registers (ptxas) and would spill at 128:
// dispatch.BACKWARD_GENERIC_NARROW_LAUNCH gives them two 4-warp blocks.
template <typename T, int C, Style S, bool Paired>
constexpr int kGenericBackwardMinBlocks = C * sizeof(T) == 16 && (Paired || S == Style::kGptj) ? 2 : 1;

// Like backward_tuned with head_dim known at run time. A warp's tasks are G * rounds consecutive pairs; it
// copies the next task's x, dy and positions into shared memory (cp.async) before it computes the current
// one, so its loads stay in flight through its arithmetic and no register holds them; its weight-gradient
// sums live in shared memory too (LaneSums). The block stages both weights' scales once; neox partners
// are held by one lane (Paired: PairedLayout) or exchanged through shared memory. Before: every load went
// out at the start of a task into registers (177-211 of them, two 4-warp blocks per SM), then the warp
// waited, at 25-54% of copy bandwidth (results/run12_generic_prefetch/backward).
template <typename T, int C, Style S, bool Paired = false>
__global__ void __launch_bounds__(kMaxThreads, (kGenericBackwardMinBlocks<T, C, S, Paired>))
    backward_generic_kernel(const KernelArgs a, const BackwardOutputs o, int rounds, int lanes_per_head) {
  using Stages = BackwardStages<T, C>;
  constexpr int K = Stages::K;
  constexpr int R = kGenericBackwardRounds<T>;
  constexpr int KA = Paired ? K / 2 : K;
  constexpr int kWordBytes = static_cast<int>(sizeof(typename Stages::Word));
  static_assert(!Paired || (S == Style::kNeox && K % 2 == 0), "paired slots hold neox partners");
  extern __shared__ __align__(16) unsigned char smem_bytes[];  // BackwardSmem
  float* smem = reinterpret_cast<float*>(smem_bytes);
  wait_for_previous_kernel(a.pdl);
  const Problem& p = a.p;
  const auto lay = make_generic_layout<Paired>(p, lanes_per_head, C);
  const int dim = p.head_dim;
  const int warp_in_block = static_cast<int>(threadIdx.x / kWarp);
  const BackwardSmem plan{dim, static_cast<int>(blockDim.x / kWarp), Paired || S == Style::kGptj ? 0 : lay.G,
                          rounds};
  const Stages stages(smem_bytes + plan.stages_offset() +
                          warp_in_block * 2 * BackwardSmem::stage_bytes(rounds, sizeof(T)),
                      rounds);
  const ExampleSpan span(p, o);
  const int per_task = lay.G * rounds;
  const int64_t tasks = (span.end - span.begin + per_task - 1) / per_task;
  // Calls visit(i, valid, cursor) for round i < rounds of a task: this lane group's pair first + G * i,
  // valid below the task's end, walked without a 64-bit division per pair.
  const auto each_round = [&](int64_t task, auto&& visit) {
    const int64_t begin = span.begin + task * per_task;
    const int64_t last = begin + per_task < span.end ? begin + per_task : span.end;
    int64_t pair = begin + lay.grp;
    PairCursor cur(pair, a.heads);
#pragma unroll
    for (int i = 0; i < R; ++i, pair += lay.G, cur.advance(lay.G, a.heads)) {
      if (i == rounds) break;  // warp-uniform
      visit(i, pair < last, cur);
    }
  };
  // Copies a task's positions, x and dy into `stage`; a chunk slot the lane does not hold, or a pair past
  // the end, copies nothing and is read as zero.
  const auto fetch = [&](int64_t task, int stage) {
    each_round(task, [&](int i, bool valid, const PairCursor& cur) {
      if (!valid) return;
      if (p.positions_64) {
        copy_async<8>(stages.position(stage, i), static_cast<const int64_t*>(p.positions) + cur.token);
      } else {
        copy_async<4>(stages.position(stage, i), static_cast<const int32_t*>(p.positions) + cur.token);
      }
      int local = 0;
      const int g = split_head(p, cur.head, &local);
      const int64_t offset = head_offset(p, g, cur.token, local);
      const T* xs = static_cast<const T*>(p.group[g].in) + offset;
      const T* gs = static_cast<const T*>(p.group[g].grad) + offset;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        if (!lay.has(k)) continue;
        copy_async<kWordBytes>(stages.x(stage, i, k), xs + lay.chunk(k) * C);
        copy_async<kWordBytes>(stages.dy(stage, i, k), gs + lay.chunk(k) * C);
      }
    });
    copy_async_commit();
  };

  int stage = 0;
  if (span.warp < tasks) fetch(span.warp, stage);  // in flight across the block's weight staging
  const float* scale = smem;
  float* row = Paired ? nullptr : head_row(smem + 2 * dim, lay, dim);
  const LaneSums<K, C> sums(reinterpret_cast<float*>(smem_bytes + plan.sums_offset()) +
                            warp_in_block * BackwardSmem::kSumsBytesPerWarp / sizeof(float));
  const bool want_dw = wants_dweight(p);
  stage_scales_generic<C>(a, smem);  // once per block: no weight round trip per pair

  float cs[KA][C], sn[KA][C];
  int64_t angles_at = 0;
  bool have_angles = false;
  for (int64_t task = span.warp; task < tasks; task += span.warps) {  // warp-uniform
    copy_async_wait_all();  // this task's stage has landed
    if (task + span.warps < tasks) fetch(task + span.warps, stage ^ 1);
    each_round(task, [&](int i, bool valid, const PairCursor& cur) {
      if (valid) {
        const int64_t* at = stages.position(stage, i);
        const int64_t position = p.positions_64 ? *at : *reinterpret_cast<const int32_t*>(at);
        if (!have_angles || position != angles_at) {
          angles_at = position;
          have_angles = true;
          if constexpr (Paired) {
            load_paired_angles<KA, C, Inputs::kAny>(a, angles_at, lay, cs, sn);
          } else {
            load_generic_angles<K, C, S>(a, angles_at, lay, cs, sn);
          }
        }
      }
      float x[K][C], gr[K][C];
      float sumsq = 0.0f;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        Chunk<T, C> xc, dyc;
        if (valid && lay.has(k)) {
          xc.word = *stages.x(stage, i, k);
          dyc.word = *stages.dy(stage, i, k);
        } else {
          xc.zero();
          dyc.zero();
        }
#pragma unroll
        for (int j = 0; j < C; ++j) {
          x[k][j] = xc.get(j);
          gr[k][j] = dyc.get(j);
          sumsq += x[k][j] * x[k][j];
        }
      }
      if constexpr (Paired) {
        rotate_paired<K, C>(lay, gr, cs, sn, -1.0f);
      } else {
        rotate_generic<K, C, S>(p, row, lay, gr, cs, sn, -1.0f);  // every lane: neox syncs the warp
      }
      const float r = rsqrtf(group_sum_runtime(sumsq, lay.L) / static_cast<float>(dim) + p.eps);
      int local = 0;
      const int g = split_head(p, cur.head, &local);
      const float* w = scale + (g & 1) * dim;
      float dot = 0.0f;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        float wk[C], dw[C];
        SmemRun<C>::load(w + (lay.has(k) ? lay.chunk(k) * C : 0), wk);  // a missing slot's x, dy are 0
#pragma unroll
        for (int j = 0; j < C; ++j) {
          x[k][j] *= r;  // xhat
          dw[j] = gr[k][j] * x[k][j];
          gr[k][j] *= wk[j];  // u from here on
          dot += gr[k][j] * x[k][j];
        }
        if (valid && want_dw && lay.has(k)) sums.add(g & 1, k, dw);
      }
      const float mean_dot = group_sum_runtime(dot, lay.L) / static_cast<float>(dim);
      if (!valid) return;
      T* dst = static_cast<T*>(p.group[g].out) + head_offset(p, g, cur.token, local);
#pragma unroll
      for (int k = 0; k < K; ++k) {
        if (!lay.has(k)) continue;
        Chunk<T, C> out;
#pragma unroll
        for (int j = 0; j < C; ++j) out.set(j, r * (gr[k][j] - x[k][j] * mean_dot));
        out.store(dst + lay.chunk(k) * C);
      }
    });
    stage ^= 1;
  }

  if (!want_dw) return;  // uniform over the grid
  // Lanes at the same position of the G groups hold the same elements: fold them, one element at a time,
  // into the warp's [2][D] row, which takes the place of the stages.
  float* red = reinterpret_cast<float*>(smem_bytes + plan.stages_offset());
  __syncthreads();  // every warp is done with its stages
#pragma unroll
  for (int g = 0; g < 2; ++g) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
#pragma unroll
      for (int j = 0; j < C; ++j) {
        float v = sums.get(g, k, j);
        for (int offset = lay.L; offset < kWarp; offset <<= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
        if (lay.grp == 0 && lay.has(k)) red[(warp_in_block * 2 + g) * dim + lay.chunk(k) * C + j] = v;
      }
    }
  }
  write_block_partials(red, dim, o);
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
