// Forward kernels: RMSNorm over each head, scale, rotate, round once to the storage type.
//
// forward_tuned: head_dim fixed at compile time (64, 128, 256), any gptj, and neox at full rotary or with
//   a rotary half of whole chunks (TunedLane); all of a lane's data stays in registers and a warp reuses
//   one cos/sin load for the pairs of a token (held in registers, or in shared memory: tuned_angles.cuh).
//   Built twice: for any inputs, and for the common ones (Inputs::kCommon) without run-time type switches.
// forward_generic: any even head_dim <= 512 and any rotary_dim; chunk slots predicated, a warp's loads
//   all in flight at once, weights staged per block; neox partners held by one lane (PairedLayout) or,
//   where the rotary half is not whole chunks, exchanged through shared memory.
#pragma once

#include "cuda/device_common.cuh"
#include "cuda/tuned_angles.cuh"
#include "cuda/tuned_layout.cuh"

namespace qkrope::cuda {

// The tuned forward builds with a shared-memory variant (SharedRows): two pairs per lane group. The
// registers it frees take them across an occupancy step (bf16: 80 -> 72, 24 -> 28 warps per SM for 128-dim
// heads at N = 8): 1-4% faster on the H200 from 32 MiB of q and k, 2-12% slower at T = 512-2048, where a
// warp's extra latency (copy, wait, shared-memory reads) shows (Launch::shared_rows picks by size). At four pairs
// (126 -> 104 registers, 16 warps per SM either way) only the reads remain: 2-7% slower at all T
// (results/run23_shared_rows).
template <typename T, int D, int N, Style S>
inline constexpr bool kSharedRowsBuild = TunedLayout<T, D, N, S>::I == 2;

// Rotates pairs in registers by +angle (sign = 1) or -angle (sign = -1).
template <typename Lay, Style S>
__device__ __forceinline__ void rotate_tuned(float (&v)[Lay::SL][Lay::C], const float (&c)[Lay::AS][Lay::NA],
                                             const float (&s)[Lay::AS][Lay::NA], float sign) {
  if constexpr (S == Style::kNeox) {
#pragma unroll
    for (int j = 0; j < Lay::C; ++j) {
      const float a = v[0][j], b = v[1][j], cs = c[0][j], sn = sign * s[0][j];
      v[0][j] = a * cs - b * sn;
      v[1][j] = b * cs + a * sn;
    }
  } else {
#pragma unroll
    for (int sl = 0; sl < Lay::SL; ++sl) {
#pragma unroll
      for (int k = 0; k < Lay::C / 2; ++k) {
        const float a = v[sl][2 * k], b = v[sl][2 * k + 1], cs = c[sl][k], sn = sign * s[sl][k];
        v[sl][2 * k] = a * cs - b * sn;
        v[sl][2 * k + 1] = b * cs + a * sn;
      }
    }
  }
}

// Normalises, scales, rotates and stores the I pairs of a lane group's slots (`at`, data `raw`, the chunks
// of `lane`) under the store policy of `cache`, with each pair's cos/sin from `angles` (HeldAngles or
// SharedRows). scale_at(i, s, j): the weight scale of element j of chunk s of pair i. Every lane of the warp
// calls it (group sums).
template <typename T, typename Lay, Style S, typename Position, typename Lane, typename Angles, typename ScaleAt>
__device__ __forceinline__ void forward_tuned_pairs(const KernelArgs& a, const PairSlots<Lay::I>& at,
                                                    const Position (&position)[Lay::I],
                                                    const Chunk<T, Lay::C> (&raw)[Lay::I][Lay::SL], const Lane& lane,
                                                    Angles& angles, float* rows, const HeadCachePolicy& cache,
                                                    ScaleAt scale_at) {
  constexpr int D = Lay::E * Lay::L, C = Lay::C, SL = Lay::SL;
  const Problem& p = a.p;
#pragma unroll
  for (int i = 0; i < Lay::I; ++i) {
    angles.prepare(a, at, i, position, lane);
    float v[SL][C];
    const float sumsq = group_sum<Lay::L>(unpack_sum_of_squares(raw[i], v));  // every lane, valid or not
    if (i == 0) angles.arrived();  // every lane
    if (!at.valid[i]) continue;
    T* dst = static_cast<T*>(p.group[at.group[i]].out) + at.offset[i];
    if (at.group[i] == 2) {  // V of an unaliased packed qkv: copy
#pragma unroll
      for (int s = 0; s < SL; ++s) raw[i][s].store(dst + lane.chunk(s), cache.store);
      continue;
    }
    const float r = rsqrtf(sumsq / static_cast<float>(D) + p.eps);
#pragma unroll
    for (int s = 0; s < SL; ++s) {
#pragma unroll
      for (int j = 0; j < C; ++j) v[s][j] = v[s][j] * r * scale_at(i, s, j);
    }
    float cs[Lay::AS][Lay::NA], sn[Lay::AS][Lay::NA];
    angles.get(a, at, i, position, lane, rows, cs, sn);
    rotate_tuned<Lay, S>(v, cs, sn, 1.0f);
#pragma unroll
    for (int s = 0; s < SL; ++s) {
      Chunk<T, C> out;
#pragma unroll
      for (int j = 0; j < C; ++j) out.set(j, v[s][j]);
      out.store(dst + lane.chunk(s), cache.store);
    }
  }
}

// Issues the loads of a lane group's I pairs: positions first (the position -> cos/sin chain is the
// longest), then the heads' chunks under the load policy of `cache`; pairs past the end read nothing and
// hold zeros.
template <typename T, typename Lay, typename Position, typename Lane>
__device__ __forceinline__ void fetch_tuned_pairs(const Problem& p, const PairSlots<Lay::I>& at, const Lane& lane,
                                                  const HeadCachePolicy& cache, Position (&position)[Lay::I],
                                                  Chunk<T, Lay::C> (&raw)[Lay::I][Lay::SL]) {
#pragma unroll
  for (int i = 0; i < Lay::I; ++i) position[i].fetch(p, at.token[i], at.valid[i]);
#pragma unroll
  for (int i = 0; i < Lay::I; ++i) {
    const T* src = static_cast<const T*>(p.group[at.group[i]].in) + at.offset[i];
#pragma unroll
    for (int s = 0; s < Lay::SL; ++s) {
      if (at.valid[i]) {
        raw[i][s].load(src + lane.chunk(s), cache.load);
      } else {
        raw[i][s].zero();
      }
    }
  }
}

// Blocks of kMaxThreads the streaming kernel is built to fit per SM (at most 128 registers).
constexpr int kStreamingMinBlocks = 2;

// Partial: neox with rotary_dim < D in TunedLane's partial layout (the rotary half whole chunks). Shared:
// the warp's cos/sin rows through shared memory (SharedRows), for two pairs per lane group and the common
// inputs at full rotary (kSharedRowsBuild).
template <typename T, int D, int N, Style S, Inputs In, bool Partial = false, bool Shared = false>
__global__ void __launch_bounds__(kMaxThreads) forward_tuned_kernel(const KernelArgs a) {
  static_assert(!Partial || S == Style::kNeox, "gptj reaches any rotary_dim with the plain layout");
  static_assert(!Shared || (kSharedRowsBuild<T, D, N, S> && In == Inputs::kCommon && !Partial),
                "shared rows: two pairs per lane group, common inputs, full rotary");
  using Lay = TunedLayout<T, D, N, S>;
  constexpr int L = Lay::L, G = Lay::G, I = Lay::I, C = Lay::C, SL = Lay::SL;
  // Several pairs per lane group: the block stages both weights in shared memory once (per-pair weight
  // loads after the norm were a dependent round trip in every warp's critical path). One pair: its
  // weights load into registers with its data, with no block barrier (a block then covers few pairs).
  constexpr bool kStaged = I > 1;
  __shared__ float scale[kStaged ? 2 : 1][kStaged ? D : 1];
  const Problem& p = a.p;
  const int lane_id = threadIdx.x % kWarp, grp = lane_id / L;
  const TunedLane<Lay, Partial> lane(lane_id % L, p.rotary_dim);
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;

  PairSlots<I> at;
  at.locate(a, warp * N + grp, G, a.total_pairs);
  // Every input may come from the previous kernel (positions from an iota, weights from an optimizer
  // step): nothing is read before it has finished.
  wait_for_previous_kernel(a.pdl);
  // The loads in the order their chains are long: positions (-> cos/sin row), then the heads, then the
  // weights, all before anything waits for one of them. Positions as raw words for the common inputs: a
  // position widened where it is loaded held back every later load of the warp until it arrived (three
  // dependent round trips at small T, where the data loads then waited for the position: ncu source
  // counters, results/run20_canonical/8_ncu_source_small_t); fewer registers in most bf16 builds (48 -> 40
  // for 128-dim heads at N = 1), an 8-byte spill in two float32 ones (64-dim N = 4, 128-dim N = 2, neox). For
  // any inputs the registers they hold longer cost more (spills in the cache-free and mixed-dtype paths).
  using Position = std::conditional_t<In == Inputs::kCommon, PositionWords, WidePosition>;
  Position position[I];
  Chunk<T, C> raw[I][SL];
  const HeadCachePolicy cache(a.l2_policy, a.l2_keep_fraction);
  fetch_tuned_pairs<T, Lay>(p, at, lane, cache, position, raw);
  // One pair per lane group: its weights, converted at once (kept as raw words until used, they cost up
  // to 15% at N = 4 for 128-dim heads: more live registers). Staged: one 16-byte load per thread now,
  // stored to shared memory after the cos/sin loads are out.
  float w_early[kStaged ? 1 : SL][C];
  if constexpr (!kStaged) {
#pragma unroll
    for (int s = 0; s < SL; ++s) {
      load_scale<C, AssumedWeight<T, In>>(p, at.group[0] & 1, lane.chunk(s), a.weight_vec, w_early[s]);
    }
  }
  StagedScales<T, D> staged;
  if constexpr (kStaged && In == Inputs::kCommon) staged.fetch(p);
  // The L2 prefetch for warps a wave ahead, after the warp's own loads: ahead of them, its pair -> token
  // divisions (run-time divisions then, before FastDivisor) delayed them (7-8% slower at T = 65536 on the H200
  // for the builds of one pair per lane group: results/run23_shared_rows).
  RowPrefetch<Position> ahead;
  if (a.prefetch_pairs > 0) ahead.begin(a, warp * N + a.prefetch_pairs, N);
  // The first token's cos/sin before any block barrier (staged weights), so its position -> row chain
  // overlaps the data loads rather than starting after them. One pair per lane group, common inputs: no
  // branch (a pair past the end reads the last token's row, PositionWords clamps the token; V's pairs a
  // row they do not use); behind the branch, the compiler hoisted the norm's first use of the data above
  // the row's load, so the row was requested only once the data had arrived. The staged builds keep the
  // branch: without it (16, 2, 256) at T = 65536, N = 8, ran 7% slower on the H100 (BENCHMARKS, Session 22).
  // Shared: the warp's rows go through shared memory instead (SharedRows).
  constexpr bool kBranchFreeFirstRow = In == Inputs::kCommon && !kStaged;
  using Angles = std::conditional_t<Shared, SharedRows<Lay, D>, HeldAngles<Lay, In>>;
  __shared__ __align__(16) float rows[Shared ? SharedRows<Lay, D>::kFloats : 1];
  Angles angles;
  if constexpr (Shared) {
    angles.begin(a, at, position, lane, rows);
  } else {
    angles.begin(a, at, position, lane, kBranchFreeFirstRow);
  }
  if constexpr (kStaged) {
    if constexpr (In == Inputs::kCommon) {
      staged.commit(p, &scale[0][0]);
    } else {
      stage_scales<D>(p, &scale[0][0]);
    }
  }
  // Shared rows: the prefetch is finished before the pairs, as measured (results/run23_shared_rows). With
  // held angles, after them: finished before four pairs per lane group, it held back the first pair's
  // arithmetic until every load of the warp had arrived (7-10% slower at T = 65536 on the H200).
  if constexpr (Shared) ahead.finish(p);
  forward_tuned_pairs<T, Lay, S>(a, at, position, raw, lane, angles, rows, cache, [&](int i, int s, int j) {
    if constexpr (kStaged) {
      return scale[at.group[i] & 1][lane.chunk(s) + j];
    } else {
      return w_early[s][j];
    }
  });
  if constexpr (!Shared) ahead.finish(p);
}

// forward_tuned for the common inputs with several pairs per lane group, on a grid of resident warps only
// (streaming_blocks sizes it). Warp w of W handles tasks w, w + W, w + 2W, ... (a task: N consecutive
// pairs). While it normalises and stores one task, the positions and heads of its next are in flight, so a
// warp waiting on a cos/sin row or on its arithmetic still has bytes in flight; and the grid ends with
// every warp on its last task instead of with a partial wave of blocks. Without enough tasks for a second
// round it is forward_tuned.
template <typename T, int D, int N, Style S>
__global__ void __launch_bounds__(kMaxThreads, kStreamingMinBlocks) forward_streaming_kernel(const KernelArgs a) {
  using Lay = TunedLayout<T, D, N, S>;
  constexpr int L = Lay::L, G = Lay::G, I = Lay::I, C = Lay::C, SL = Lay::SL;
  static_assert(I > 1, "weights staged per block: several pairs per lane group");
  __shared__ float scale[2][D];
  const Problem& p = a.p;
  const int lane_id = threadIdx.x % kWarp, grp = lane_id / L;
  const TunedLane<Lay, false> lane(lane_id % L, p.rotary_dim);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  const int64_t tasks = (a.total_pairs + N - 1) / N;
  int64_t task = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;

  PairSlots<I> at;
  at.locate(a, task * N + grp, G, a.total_pairs);
  wait_for_previous_kernel(a.pdl);
  PositionWords position[I];
  Chunk<T, C> raw[I][SL];
  const HeadCachePolicy cache(a.l2_policy, a.l2_keep_fraction);
  fetch_tuned_pairs<T, Lay>(p, at, lane, cache, position, raw);
  StagedScales<T, D> staged;
  staged.fetch(p);
  RowPrefetch<PositionWords> ahead;
  if (a.prefetch_pairs > 0) ahead.begin(a, task * N + a.prefetch_pairs, N);
  HeldAngles<Lay, Inputs::kCommon> angles;
  angles.begin(a, at, position, lane, false);
  staged.commit(p, &scale[0][0]);  // every warp of the block, with a task or without
  ahead.finish(p);
  const auto scale_at = [&](int i, int s, int j) { return scale[at.group[i] & 1][lane.chunk(s) + j]; };

#pragma unroll 1
  for (;;) {  // warp-uniform: a warp's tasks
    const int64_t next = task + warps;
    const bool more = next < tasks;
    PositionWords next_position[I];
    Chunk<T, C> next_raw[I][SL];
    RowPrefetch<PositionWords> next_ahead;
    if (more) {
      PairSlots<I> next_at;  // located again below: fewer registers live across the arithmetic
      next_at.locate(a, next * N + grp, G, a.total_pairs);
      fetch_tuned_pairs<T, Lay>(p, next_at, lane, cache, next_position, next_raw);
      if (a.prefetch_pairs > 0) next_ahead.begin(a, next * N + a.prefetch_pairs, N);
    }
    forward_tuned_pairs<T, Lay, S>(a, at, position, raw, lane, angles, nullptr, cache, scale_at);
    if (!more) break;
    next_ahead.finish(p);
    task = next;
    at.locate(a, task * N + grp, G, a.total_pairs);
#pragma unroll
    for (int i = 0; i < I; ++i) {
      position[i] = next_position[i];
#pragma unroll
      for (int s = 0; s < SL; ++s) raw[i][s] = next_raw[i][s];
    }
    // The next task's first cos/sin, requested as soon as this task no longer needs the registers.
    angles.prepare(a, at, 0, position, lane);
  }
}

// ---------------------------------------------------------------------------------------------------
// Generic kernels: head_dim known only at run time (any even value up to 512), any rotary_dim.
//
// A head is handled by a group of L lanes (a power of two chosen by the launcher); lane gl of a group
// holds chunks gl + L * k (k < K) of C elements, predicated on the head's chunk count. A warp runs
// G = 32 / L heads side by side, a step of G pairs at a time. neox partners are exchanged through a
// shared-memory row per head, except in the forward's PairedLayout.

struct GenericLayout {
  int L, G, chunks;
  int grp, gl;
  __device__ __forceinline__ GenericLayout(int lanes_per_head, int head_dim, int c) {
    L = lanes_per_head;
    G = kWarp / L;
    chunks = head_dim / c;
    const int lane = threadIdx.x % kWarp;
    grp = lane / L;
    gl = lane % L;
  }
  __device__ __forceinline__ int chunk(int k) const { return gl + L * k; }
  __device__ __forceinline__ bool has(int k) const { return chunk(k) < chunks; }
};

// The forward's layout for neox when the rotary half is a whole number of chunks (half % C == 0): a lane
// holds rotate-half partners together, as the tuned layout does, so the rotation needs no shared-memory
// exchange and one run of angles serves both chunks (bf16: 128 registers with no spill at two blocks per
// SM, 120 in the common-input build; the shared-memory kernel needs 154 for one). Slots 2m and
// 2m + 1 of lane gl form unit u = gl + L * m: chunks u and u + H for u < H (H: the rotary half in chunks),
// the pass-through chunks 2u and 2u + 1 past it. As many units as half the chunks, rounded up, so it
// needs the lanes GenericLayout does.
struct PairedLayout : GenericLayout {
  int H;
  __device__ __forceinline__ PairedLayout(int lanes_per_head, int head_dim, int c, int rotary_dim)
      : GenericLayout(lanes_per_head, head_dim, c), H(rotary_dim / 2 / c) {}
  __device__ __forceinline__ int unit(int m) const { return gl + L * m; }
  __device__ __forceinline__ int chunk(int k) const {
    const int u = unit(k / 2), side = k % 2;
    return u < H ? u + side * H : 2 * u + side;
  }
  __device__ __forceinline__ bool has(int k) const { return chunk(k) < chunks; }
};

// The layout of a generic kernel's lanes: PairedLayout where it keeps neox partners in one lane.
template <bool Paired>
using GenericLayoutFor = std::conditional_t<Paired, PairedLayout, GenericLayout>;

template <bool Paired>
__device__ __forceinline__ GenericLayoutFor<Paired> make_generic_layout(const Problem& p, int lanes_per_head, int c) {
  if constexpr (Paired) {
    return PairedLayout(lanes_per_head, p.head_dim, c, p.rotary_dim);
  } else {
    return GenericLayout(lanes_per_head, p.head_dim, c);
  }
}

// Sum over an aligned group of L lanes (L a run-time power of two). Every lane of the warp calls it.
__device__ __forceinline__ float group_sum_runtime(float v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Shared-memory row of one head of the calling warp: G rows of head_dim floats per warp.
__device__ __forceinline__ float* head_row(float* smem, const GenericLayout& lay, int head_dim) {
  return smem + ((threadIdx.x / kWarp) * lay.G + lay.grp) * head_dim;
}

// cos/sin for each element a lane holds (identity past rotary_dim). A chunk whose rotary pairs are
// consecutive reads them as one run (16-byte words where the table allows: load_angles); only a neox chunk
// that straddles the rotary half or its end goes element by element. Element-wise loads everywhere made
// the angles the longest part of a generic warp's critical path. In = kCommon: gptj only, with rotary_dim
// a multiple of C, so that no chunk's run of C / 2 angles crosses the rotary half.
template <int K, int C, Style S, Inputs In = Inputs::kAny>
__device__ __forceinline__ void load_generic_angles(const KernelArgs& a, int64_t position, const GenericLayout& lay,
                                                    float (&c)[K][C], float (&s)[K][C]) {
  static_assert(In == Inputs::kAny || S == Style::kGptj, "neox runs of angles may cross the rotary half");
  const Problem& p = a.p;
  const int half = p.rotary_dim / 2;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int e0 = lay.chunk(k) * C;
    if (!lay.has(k) || e0 >= p.rotary_dim) {
      identity_angles<C>(c[k], s[k]);
      continue;
    }
    if constexpr (S == Style::kGptj) {
      // Pairs (2i, 2i + 1) of the chunk share angle i: C / 2 consecutive angles, identity past the half.
      float c2[C / 2], s2[C / 2];
      load_angles<C / 2, In>(a, position, e0 / 2, c2, s2);
#pragma unroll
      for (int j = 0; j < C; ++j) {
        c[k][j] = c2[j / 2];
        s[k][j] = s2[j / 2];
      }
    } else if (e0 + C <= half) {
      load_angles<C>(a, position, e0, c[k], s[k]);
    } else if (e0 >= half && e0 + C <= p.rotary_dim && half % C == 0) {  // aligned like the first half's runs
      load_angles<C>(a, position, e0 - half, c[k], s[k]);
    } else {
#pragma unroll
      for (int j = 0; j < C; ++j) {
        const int e = e0 + j;
        float one_c[1] = {1.0f}, one_s[1] = {0.0f};
        if (e < p.rotary_dim) load_angles<1>(a, position, e < half ? e : e - half, one_c, one_s);
        c[k][j] = one_c[0];
        s[k][j] = one_s[0];
      }
    }
  }
}

// C consecutive floats of shared memory starting on a multiple of C (16-byte words where C allows).
template <int C>
struct SmemRun {
  static constexpr int kWord = C % 4 == 0 ? 4 : (C % 2 == 0 ? 2 : 1);
  using Word = std::conditional_t<kWord == 4, float4, std::conditional_t<kWord == 2, float2, float>>;

  __device__ __forceinline__ static void store(float* dst, const float (&v)[C]) {
#pragma unroll
    for (int w = 0; w < C / kWord; ++w) reinterpret_cast<Word*>(dst)[w] = *reinterpret_cast<const Word*>(&v[w * kWord]);
  }
  __device__ __forceinline__ static void load(const float* src, float (&v)[C]) {
#pragma unroll
    for (int w = 0; w < C / kWord; ++w) *reinterpret_cast<Word*>(&v[w * kWord]) = reinterpret_cast<const Word*>(src)[w];
  }
};

// Rotates a lane's values by +angle (sign 1) or -angle (sign -1). neox partners go through the head's
// shared-memory row, so every lane of the warp must call it.
template <int K, int C, Style S>
__device__ __forceinline__ void rotate_generic(const Problem& p, float* row, const GenericLayout& lay,
                                               float (&v)[K][C], const float (&c)[K][C], const float (&s)[K][C],
                                               float sign) {
  if constexpr (S == Style::kNeox) {
    const int half = p.rotary_dim / 2;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (lay.has(k)) SmemRun<C>::store(row + lay.chunk(k) * C, v[k]);
    }
    __syncwarp();
    // With half a multiple of C, no chunk straddles the half or the rotary end: a chunk's partners are
    // one run, read at once. Otherwise element by element.
    const bool runs = half % C == 0;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int e0 = lay.chunk(k) * C;
      if (!lay.has(k) || e0 >= p.rotary_dim) continue;
      if (runs) {
        const bool lower = e0 < half;
        float partner[C];
        SmemRun<C>::load(row + (lower ? e0 + half : e0 - half), partner);
        const float side = lower ? -sign : sign;
#pragma unroll
        for (int j = 0; j < C; ++j) v[k][j] = v[k][j] * c[k][j] + partner[j] * side * s[k][j];
        continue;
      }
#pragma unroll
      for (int j = 0; j < C; ++j) {
        const int e = e0 + j;
        if (e >= p.rotary_dim) continue;
        const float sn = sign * s[k][j];
        v[k][j] = e < half ? v[k][j] * c[k][j] - row[e + half] * sn : v[k][j] * c[k][j] + row[e - half] * sn;
      }
    }
    __syncwarp();  // the row is rewritten by the next pair
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) {
#pragma unroll
      for (int j = 0; j < C; j += 2) {
        const float x0 = v[k][j], x1 = v[k][j + 1], cs = c[k][j], sn = sign * s[k][j];
        v[k][j] = x0 * cs - x1 * sn;
        v[k][j + 1] = x1 * cs + x0 * sn;
      }
    }
  }
}

// cos/sin of each rotary unit a lane of PairedLayout holds (identity for pass-through units): one run of C
// angles, shared by the unit's two chunks.
template <int M, int C, Inputs In>
__device__ __forceinline__ void load_paired_angles(const KernelArgs& a, int64_t position, const PairedLayout& lay,
                                                   float (&c)[M][C], float (&s)[M][C]) {
#pragma unroll
  for (int m = 0; m < M; ++m) {
    if (lay.unit(m) < lay.H) {
      load_angles<C, In>(a, position, lay.unit(m) * C, c[m], s[m]);
    } else {
      identity_angles<C>(c[m], s[m]);
    }
  }
}

// Rotates the rotary units of PairedLayout in registers: slot 2m holds element i < half, slot 2m + 1 its
// partner i + half.
template <int K, int C>
__device__ __forceinline__ void rotate_paired(const PairedLayout& lay, float (&v)[K][C], const float (&c)[K / 2][C],
                                              const float (&s)[K / 2][C], float sign) {
#pragma unroll
  for (int m = 0; m < K / 2; ++m) {
    if (lay.unit(m) >= lay.H) continue;
#pragma unroll
    for (int j = 0; j < C; ++j) {
      const float x = v[2 * m][j], y = v[2 * m + 1][j], cs = c[m][j], sn = sign * s[m][j];
      v[2 * m][j] = x * cs - y * sn;
      v[2 * m + 1][j] = y * cs + x * sn;
    }
  }
}

// Pairs a lane group of the generic forward keeps in flight at once: 128 bytes of head data per lane
// (its K chunk slots hold 16 elements). A warp runs G lane groups side by side, so it owns G * rounds
// pairs, rounds <= kGenericRounds (the launcher maps the N asked for onto that).
template <typename T>
constexpr int kGenericRounds = 8 / static_cast<int>(sizeof(T));

// Fills scale[g * head_dim + e] with element e of weight g's scale (scale_of), one chunk of C elements per
// thread and step, then synchronises the block. Every thread of the block calls it.
template <int C, typename WeightT = void>
__device__ __forceinline__ void stage_scales_generic(const KernelArgs& a, float* scale) {
  const Problem& p = a.p;
  const int per_weight = p.head_dim / C;
  for (int w = threadIdx.x; w < 2 * per_weight; w += blockDim.x) {
    const int g = w < per_weight ? 0 : 1;
    const int e = (w - g * per_weight) * C;
    float run[C];
    load_scale<C, WeightT>(p, g, e, a.weight_vec, run);
    SmemRun<C>::store(scale + g * p.head_dim + e, run);
  }
  __syncthreads();
}

// Registers: two blocks of kMaxThreads (16 warps of the library's 4-warp blocks per SM) fit all but the
// shared-memory neox kernels, which spill at that bound and get one.
template <Style S, bool Paired>
constexpr int kGenericMinBlocks = S == Style::kNeox && !Paired ? 1 : 2;

// Like forward_tuned with head_dim known at run time: a warp owns G * rounds consecutive pairs, and every
// lane issues all of its loads (positions, then head chunks, then its share of the block's weights) before
// it waits for any; the first token's cos/sin go out before the block barrier of the staged weights.
// The loop over pairs that loaded one pair ahead, with the weights read per pair after the norm, ran at
// 14-43% of copy bandwidth (results/run11_generic). Paired (neox only): PairedLayout instead of
// GenericLayout. In: Inputs::kCommon (common_table_and_weights) with Paired, or for gptj with rotary_dim a
// multiple of C (load_generic_angles). Like the tuned kernels, a warp warms the cos/sin rows of the tokens
// a wave ahead in L2 (RowPrefetch, a.prefetch_pairs). Hinted: the heads move under `cache`'s L2 hints
// (the launch's L2 policy), else with plain accesses.
template <typename T, int C, Style S, bool Paired, Inputs In, bool Hinted>
__device__ __forceinline__ void forward_generic_pairs(const KernelArgs& a, int rounds, int lanes_per_head,
                                                      const HeadCachePolicy& cache) {
  constexpr int K = kMaxHeadDim / (kWarp * C);  // chunk slots per lane (enough for L = 32)
  constexpr int R = kGenericRounds<T>;
  constexpr int KA = Paired ? K / 2 : K;  // runs of C angles a lane holds
  static_assert(!Paired || (S == Style::kNeox && K % 2 == 0), "paired slots hold neox partners");
  static_assert(Paired || S == Style::kGptj || In == Inputs::kAny, "neox runs of angles may cross the half");
  extern __shared__ float smem[];  // [2][head_dim] weight scales, then the neox staging rows
  const Problem& p = a.p;
  const auto lay = make_generic_layout<Paired>(p, lanes_per_head, C);
  const auto load_angles_at = [&](int64_t position, float (&c)[KA][C], float (&s)[KA][C]) {
    if constexpr (Paired) {
      load_paired_angles<KA, C, In>(a, position, lay, c, s);
    } else {
      load_generic_angles<K, C, S, In>(a, position, lay, c, s);
    }
  };
  float* scale = smem;
  float* row = Paired ? nullptr : head_row(smem + 2 * p.head_dim, lay, p.head_dim);  // paired: no rows allocated
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int64_t first = warp * lay.G * rounds;
  const int64_t end = first + lay.G * rounds < a.total_pairs ? first + lay.G * rounds : a.total_pairs;

  PairSlots<R> at;
  at.locate(a, first + lay.grp, lay.G, end);  // slots at or past `rounds` are past `end`: invalid
  const auto load_chunk = [&](Chunk<T, C>& chunk, const T* src) {
    if constexpr (Hinted) {
      chunk.load(src, cache.load);
    } else {
      chunk.load(src);
    }
  };
  const auto store_chunk = [&](const Chunk<T, C>& chunk, T* dst) {
    if constexpr (Hinted) {
      chunk.store(dst, cache.store);
    } else {
      chunk.store(dst);
    }
  };
  wait_for_previous_kernel(a.pdl);
  WidePosition position[R];
#pragma unroll
  for (int i = 0; i < R; ++i) position[i].fetch(p, at.token[i], at.valid[i]);
  Chunk<T, C> raw[R][K];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const T* src = static_cast<const T*>(p.group[at.group[i]].in) + at.offset[i];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (at.valid[i] && lay.has(k)) {
        load_chunk(raw[i][k], src + lay.chunk(k) * C);
      } else {
        raw[i][k].zero();
      }
    }
  }
  RowPrefetch<WidePosition> ahead;
  if (a.prefetch_pairs > 0) ahead.begin(a, first + a.prefetch_pairs, lay.G * rounds);
  // The angles held are those of position `angles_at` (once `have_angles`). Compared by position rather
  // than token: fewer registers live across the loads.
  float cs[KA][C], sn[KA][C];
  int64_t angles_at = 0;
  bool have_angles = false;
  if (at.valid[0] && at.group[0] < 2) {
    angles_at = position[0].value(p);
    have_angles = true;
    load_angles_at(angles_at, cs, sn);
  }
  stage_scales_generic<C, AssumedWeight<T, In>>(a, scale);
  ahead.finish(p);  // here, not after the loop: its registers are free for the pairs

#pragma unroll
  for (int i = 0; i < R; ++i) {
    if (i == rounds) break;  // warp-uniform
    const int g = at.group[i];
    if (at.valid[i] && g < 2 && (!have_angles || position[i].value(p) != angles_at)) {
      angles_at = position[i].value(p);
      have_angles = true;
      load_angles_at(angles_at, cs, sn);
    }
    float v[K][C];
    const float sumsq = unpack_sum_of_squares(raw[i], v);
    const float r = rsqrtf(group_sum_runtime(sumsq, lay.L) / static_cast<float>(p.head_dim) + p.eps);
    const float* w = scale + (g & 1) * p.head_dim;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (!lay.has(k)) continue;
      float wk[C];
      SmemRun<C>::load(w + lay.chunk(k) * C, wk);
#pragma unroll
      for (int j = 0; j < C; ++j) v[k][j] = v[k][j] * r * wk[j];
    }
    if constexpr (Paired) {
      rotate_paired<K, C>(lay, v, cs, sn, 1.0f);
    } else {
      rotate_generic<K, C, S>(p, row, lay, v, cs, sn, 1.0f);  // every lane: neox syncs the warp
    }
    if (!at.valid[i]) continue;
    T* dst = static_cast<T*>(p.group[g].out) + at.offset[i];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (!lay.has(k)) continue;
      if (g == 2) {  // V of an unaliased packed qkv: copy
        store_chunk(raw[i][k], dst + lay.chunk(k) * C);
        continue;
      }
      Chunk<T, C> out;
#pragma unroll
      for (int j = 0; j < C; ++j) out.set(j, v[k][j]);
      store_chunk(out, dst + lay.chunk(k) * C);
    }
  }
}

// The generic forward, built with and without the L2 hints: a branch on the policy at each access split
// the lanes' batch of loads and cost 2-8% at T >= 16384, the evict_normal hint in place of plain accesses
// 1-3% (results/run16_generic_l2).
template <typename T, int C, Style S, bool Paired = false, Inputs In = Inputs::kAny>
__global__ void __launch_bounds__(kMaxThreads, kGenericMinBlocks<S, Paired>)
    forward_generic_kernel(const KernelArgs a, int rounds, int lanes_per_head) {
  const HeadCachePolicy cache(a.l2_policy, a.l2_keep_fraction);
  if (cache.hinted) {
    forward_generic_pairs<T, C, S, Paired, In, true>(a, rounds, lanes_per_head, cache);
  } else {
    forward_generic_pairs<T, C, S, Paired, In, false>(a, rounds, lanes_per_head, cache);
  }
}

}  // namespace qkrope::cuda
