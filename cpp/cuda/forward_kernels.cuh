// Forward kernels: RMSNorm over each head, scale, rotate, round once to the storage type.
//
// forward_tuned: head_dim fixed at compile time (64, 128, 256), full-rotary neox or any gptj; all of a
//   lane's data stays in registers and a warp reuses one cos/sin load for the pairs of a token. Built
//   twice: for any inputs, and for the common ones (Inputs::kCommon) without run-time type switches.
// forward_generic: any even head_dim <= 512 and any rotary_dim; one warp per pair, chunk slots predicated,
//   neox partners exchanged through shared memory.
#pragma once

#include "cuda/device_common.cuh"
#include "cuda/tuned_layout.cuh"

namespace qkrope::cuda {

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

// cos/sin of every run a lane of the tuned layout needs for one token's position.
template <typename Lay, Inputs In = Inputs::kAny>
__device__ __forceinline__ void load_tuned_angles(const KernelArgs& a, int64_t position, int gl,
                                                  float (&c)[Lay::AS][Lay::NA], float (&s)[Lay::AS][Lay::NA]) {
#pragma unroll
  for (int r = 0; r < Lay::AS; ++r) load_angles<Lay::NA, In>(a, position, Lay::angle_start(r, gl), c[r], s[r]);
}

// Where the I pairs of one lane group live: validity, token, head group and element offset.
template <int I>
struct PairSlots {
  bool valid[I];
  int64_t token[I];
  int group[I];
  int64_t offset[I];

  // Pairs first_pair + i * stride, valid below `end`.
  __device__ __forceinline__ void locate(const Problem& p, int64_t first_pair, int stride, int64_t end) {
    const int heads = p.total_heads();
    PairCursor cur(first_pair, heads);
#pragma unroll
    for (int i = 0; i < I; ++i) {
      valid[i] = first_pair + static_cast<int64_t>(i) * stride < end;
      token[i] = cur.token;
      int local = 0;
      group[i] = split_head(p, cur.head, &local);
      offset[i] = head_offset(p, group[i], cur.token, local);
      cur.advance(stride, heads);
    }
  }
};

template <typename T, int D, int N, Style S, Inputs In>
__global__ void __launch_bounds__(kMaxThreads) forward_tuned_kernel(const KernelArgs a) {
  using Lay = TunedLayout<T, D, N, S>;
  constexpr int L = Lay::L, G = Lay::G, I = Lay::I, C = Lay::C, SL = Lay::SL;
  // Several pairs per lane group: the block stages both weights in shared memory once (per-pair weight
  // loads after the norm were a dependent round trip in every warp's critical path). One pair: its
  // weights load into registers with its data, with no block barrier (a block then covers few pairs).
  constexpr bool kStaged = I > 1;
  __shared__ float scale[kStaged ? 2 : 1][kStaged ? D : 1];
  const Problem& p = a.p;
  const int lane = threadIdx.x % kWarp, grp = lane / L, gl = lane % L;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;

  PairSlots<I> at;
  at.locate(p, warp * N + grp, G, p.total_pairs());
  // Every input may come from the previous kernel (positions from an iota, weights from an optimizer
  // step): nothing is read before it has finished.
  wait_for_previous_kernel(a.pdl);
  // The loads in the order their chains are long: positions (-> cos/sin row), then the heads, then the
  // weights, all before anything waits for one of them. Positions as raw words where that measured
  // faster: the staged kernels for the common inputs. Elsewhere the registers they hold longer cost more
  // (with one pair per lane group, 64 -> 77 registers and 3-7% for 64-dim heads at N = 8; spills in the
  // cache-free and mixed-dtype paths).
  using Position = std::conditional_t<In == Inputs::kCommon && kStaged, PositionWords, WidePosition>;
  Position position[I];
#pragma unroll
  for (int i = 0; i < I; ++i) position[i].fetch(p, at.token[i], at.valid[i]);
  Chunk<T, C> raw[I][SL];
#pragma unroll
  for (int i = 0; i < I; ++i) {
    const T* src = static_cast<const T*>(p.group[at.group[i]].in) + at.offset[i];
#pragma unroll
    for (int s = 0; s < SL; ++s) {
      if (at.valid[i]) {
        raw[i][s].load(src + Lay::chunk_start(s, gl));
      } else {
        raw[i][s].zero();
      }
    }
  }
  // One pair per lane group: its weights, converted at once (kept as raw words until used, they cost up
  // to 15% at N = 4 for 128-dim heads: more live registers). Staged: one 16-byte load per thread now,
  // stored to shared memory after the cos/sin loads are out.
  float w_early[kStaged ? 1 : SL][C];
  if constexpr (!kStaged) {
#pragma unroll
    for (int s = 0; s < SL; ++s) {
      load_scale<C, AssumedWeight<T, In>>(p, at.group[0] & 1, Lay::chunk_start(s, gl), a.weight_vec, w_early[s]);
    }
  }
  StagedScales<T, D> staged;
  if constexpr (kStaged && In == Inputs::kCommon) staged.fetch(p);
  RowPrefetch<Position> ahead;
  if (a.prefetch_pairs > 0) ahead.begin(p, warp * N + a.prefetch_pairs, N);
  // The first token's cos/sin before any block barrier (staged weights), so its position -> row chain
  // overlaps the data loads rather than starting after them.
  float cs[Lay::AS][Lay::NA], sn[Lay::AS][Lay::NA];
  int64_t angles_token = -1;
  if (at.valid[0] && at.group[0] < 2) {
    load_tuned_angles<Lay, In>(a, position[0].value(p), gl, cs, sn);
    angles_token = at.token[0];
  }
  if constexpr (kStaged) {
    if constexpr (In == Inputs::kCommon) {
      staged.commit(p, &scale[0][0]);
    } else {
      stage_scales<D>(p, &scale[0][0]);
    }
  }

#pragma unroll
  for (int i = 0; i < I; ++i) {
    if (at.valid[i] && at.group[i] < 2 && at.token[i] != angles_token) {
      load_tuned_angles<Lay, In>(a, position[i].value(p), gl, cs, sn);
      angles_token = at.token[i];
    }
    float v[SL][C];
    float sumsq = 0.0f;
#pragma unroll
    for (int s = 0; s < SL; ++s) {
#pragma unroll
      for (int j = 0; j < C; ++j) {
        v[s][j] = raw[i][s].get(j);
        sumsq += v[s][j] * v[s][j];
      }
    }
    sumsq = group_sum<L>(sumsq);  // every lane, valid or not
    if (!at.valid[i]) continue;
    T* dst = static_cast<T*>(p.group[at.group[i]].out) + at.offset[i];
    if (at.group[i] == 2) {  // V of an unaliased packed qkv: copy
#pragma unroll
      for (int s = 0; s < SL; ++s) raw[i][s].store(dst + Lay::chunk_start(s, gl));
      continue;
    }
    const float r = rsqrtf(sumsq / static_cast<float>(D) + p.eps);
#pragma unroll
    for (int s = 0; s < SL; ++s) {
#pragma unroll
      for (int j = 0; j < C; ++j) {
        float w;
        if constexpr (kStaged) {
          w = scale[at.group[i] & 1][Lay::chunk_start(s, gl) + j];
        } else {
          w = w_early[s][j];
        }
        v[s][j] = v[s][j] * r * w;
      }
    }
    rotate_tuned<Lay, S>(v, cs, sn, 1.0f);
#pragma unroll
    for (int s = 0; s < SL; ++s) {
      Chunk<T, C> out;
#pragma unroll
      for (int j = 0; j < C; ++j) out.set(j, v[s][j]);
      out.store(dst + Lay::chunk_start(s, gl));
    }
  }
  ahead.finish(p);
}

// ---------------------------------------------------------------------------------------------------
// Generic kernels: head_dim known only at run time (any even value up to 512), any rotary_dim.
//
// A head is handled by a group of L lanes (a power of two chosen by the launcher); lane gl of a group
// holds chunks gl + L * k (k < K) of C elements, predicated on the head's chunk count. A warp runs
// G = 32 / L heads side by side and loops over its pairs in steps of G. neox partners are exchanged
// through a shared-memory row per head.

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

// Sum over an aligned group of L lanes (L a run-time power of two). Every lane of the warp calls it.
__device__ __forceinline__ float group_sum_runtime(float v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Shared-memory row of one head of the calling warp: G rows of head_dim floats per warp.
__device__ __forceinline__ float* head_row(float* smem, const GenericLayout& lay, int head_dim) {
  return smem + ((threadIdx.x / kWarp) * lay.G + lay.grp) * head_dim;
}

// cos/sin for each element a lane holds (identity past rotary_dim).
template <int K, int C>
__device__ __forceinline__ void load_generic_angles(const KernelArgs& a, int64_t position, const GenericLayout& lay,
                                                    float (&c)[K][C], float (&s)[K][C]) {
  const Problem& p = a.p;
  const int half = p.rotary_dim / 2;
#pragma unroll
  for (int k = 0; k < K; ++k) {
#pragma unroll
    for (int j = 0; j < C; ++j) {
      const int e = lay.chunk(k) * C + j;
      float cj = 1.0f, sj = 0.0f;
      if (lay.has(k) && e < p.rotary_dim) {
        const int pair = p.style == Style::kNeox ? (e < half ? e : e - half) : e / 2;
        float one_c[1], one_s[1];
        load_angles<1>(a, position, pair, one_c, one_s);
        cj = one_c[0];
        sj = one_s[0];
      }
      c[k][j] = cj;
      s[k][j] = sj;
    }
  }
}

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
      if (lay.has(k)) {
#pragma unroll
        for (int j = 0; j < C; ++j) row[lay.chunk(k) * C + j] = v[k][j];
      }
    }
    __syncwarp();
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (!lay.has(k)) continue;
#pragma unroll
      for (int j = 0; j < C; ++j) {
        const int e = lay.chunk(k) * C + j;
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

// One pair of a lane group in the generic kernels, with its chunks loaded (possibly still in flight).
template <typename T, int C, int K>
struct GenericPair {
  bool valid;
  int group;
  int64_t token, offset;
  Chunk<T, C> raw[K];

  __device__ __forceinline__ void fetch(const Problem& p, const GenericLayout& lay, const PairCursor& cur, bool ok) {
    valid = ok;
    int local = 0;
    group = valid ? split_head(p, cur.head, &local) : 0;
    token = cur.token;
    offset = valid ? head_offset(p, group, cur.token, local) : 0;
    const T* src = static_cast<const T*>(p.group[group].in) + offset;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (valid && lay.has(k)) {
        raw[k].load(src + lay.chunk(k) * C);
      } else {
        raw[k].zero();
      }
    }
  }
};

template <typename T, int C, Style S>
__global__ void __launch_bounds__(kMaxThreads) forward_generic_kernel(const KernelArgs a, int pairs_per_warp,
                                                                       int lanes_per_head) {
  constexpr int K = kMaxHeadDim / (kWarp * C);  // chunk slots per lane (enough for L = 32)
  extern __shared__ float smem[];
  const Problem& p = a.p;
  const GenericLayout lay(lanes_per_head, p.head_dim, C);
  const int heads = p.total_heads();
  const int64_t total = p.total_pairs();
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp * pairs_per_warp;
  const int64_t end = first + pairs_per_warp < total ? first + pairs_per_warp : total;
  float* row = head_row(smem, lay, p.head_dim);
  wait_for_previous_kernel(a.pdl);
  if (first >= end) return;  // warp-uniform

  float cs[K][C], sn[K][C];
  int64_t angles_token = -1;
  PairCursor cur(first + lay.grp, heads);
  GenericPair<T, C, K> now;
  now.fetch(p, lay, cur, first + lay.grp < end);
  for (int64_t base = first; base < end; base += lay.G) {  // warp-uniform
    // Issue the next pair's loads before working on this one.
    GenericPair<T, C, K> next;
    const bool more = base + lay.G < end;
    if (more) {
      cur.advance(lay.G, heads);
      next.fetch(p, lay, cur, base + lay.G + lay.grp < end);
    }
    const int g = now.group;
    if (now.valid && g < 2 && now.token != angles_token) {
      load_generic_angles<K, C>(a, load_position(p, now.token), lay, cs, sn);
      angles_token = now.token;
    }
    float v[K][C];
    float sumsq = 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
#pragma unroll
      for (int j = 0; j < C; ++j) {
        v[k][j] = now.raw[k].get(j);
        sumsq += v[k][j] * v[k][j];
      }
    }
    const float r = rsqrtf(group_sum_runtime(sumsq, lay.L) / static_cast<float>(p.head_dim) + p.eps);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      float w[C];
      if (now.valid && g < 2 && lay.has(k)) {
        load_scale<C>(p, g, lay.chunk(k) * C, a.weight_vec, w);
      } else {
#pragma unroll
        for (int j = 0; j < C; ++j) w[j] = 0.0f;
      }
#pragma unroll
      for (int j = 0; j < C; ++j) v[k][j] = v[k][j] * r * w[j];
    }
    rotate_generic<K, C, S>(p, row, lay, v, cs, sn, 1.0f);
    if (now.valid) {
      T* dst = static_cast<T*>(p.group[g].out) + now.offset;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        if (!lay.has(k)) continue;
        if (g == 2) {  // V of an unaliased packed qkv: copy
          now.raw[k].store(dst + lay.chunk(k) * C);
          continue;
        }
        Chunk<T, C> out;
#pragma unroll
        for (int j = 0; j < C; ++j) out.set(j, v[k][j]);
        out.store(dst + lay.chunk(k) * C);
      }
    }
    if (more) now = next;
  }
}

}  // namespace qkrope::cuda
