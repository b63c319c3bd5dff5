// Device helpers shared by the forward and backward kernels: element conversion, vector loads and
// stores of head chunks, group reductions, positions and cos/sin.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "core/fast_divisor.h"
#include "core/problem.h"
#include "core/rope_math.h"

namespace qkrope::cuda {

constexpr int kWarp = 32;
constexpr int kMaxThreads = kWarp * kMaxWarpsPerBlock;
constexpr int kMaxHeadDim = 512;

// What a tuned kernel (forward or backward) may assume about its inputs at compile time. kCommon: an f32
// cos/sin cache whose rows are read as 16-byte runs that never cross the rotary half (full rotary), and
// weights absent or of the storage type, 16-byte aligned. The run-time type switches this removes sit on
// the critical path: forward 2.24 -> 1.59 us per call at T = 1 under graph replay (results/run8_probe),
// backward 90-91 -> 95-97% of memcpy at T >= 16384 (results/run9_backward).
enum class Inputs { kAny, kCommon };

// The weight type a kernel built for In may assume (see load_scale): T for kCommon, read at run time (void)
// otherwise.
template <typename T, Inputs In>
using AssumedWeight = std::conditional_t<In == Inputs::kCommon, T, void>;

// Arguments every kernel receives by value.
struct KernelArgs {
  Problem p;
  FastDivisor heads;     // p.total_heads(): pair index -> token
  int64_t total_pairs;   // p.total_pairs()
  int32_t row_slots_log2;  // RowPrefetch: lanes per cos/sin row, log2 (row_prefetch_slots_log2)
  bool table_vec;   // cos/sin rows (or inv_freq) are 16-byte aligned everywhere a lane reads a run
  bool weight_vec;  // both weights (where present) are 16-byte aligned
  bool pdl;        // wait for the previous kernel through programmatic dependent launch
  int32_t prefetch_pairs;  // see Launch::prefetch_pairs
  int32_t l2_policy;       // see Launch::l2_policy
  float l2_keep_fraction;  // L2Policy::kKeepOutputs: the share of the output's lines stored evict-last
};

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}

// The widest plain word of a byte count (loads and stores of whole chunks use one instruction).
template <int kBytes>
struct WordOf;
template <>
struct WordOf<16> {
  using type = uint4;
};
template <>
struct WordOf<8> {
  using type = uint2;
};
template <>
struct WordOf<4> {
  using type = uint32_t;
};
template <>
struct WordOf<2> {
  using type = uint16_t;
};

// The L2 cache policies of a kernel's head loads and stores (Launch::l2_policy), made once per thread.
// createpolicy and the .L2::cache_hint qualifier exist from sm_80 on; older builds use plain accesses.
// `hinted`: kKeepOutputs on such a build. The tuned kernels always pass the hints (evict_normal for
// kDefault): branching on `hinted` per access moved their registers by -6 to +9 and made seven bf16/f16
// builds spill. The generic forward is built both ways and picks one per launch (forward_generic_kernel).
struct HeadCachePolicy {
  uint64_t load = 0, store = 0;
  bool hinted = false;

  __device__ __forceinline__ HeadCachePolicy(int32_t mode, float keep_fraction) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    // Every policy, then a select: no branch. Behind a branch (only the mode's policies), the compiler sank the
    // loads' address arithmetic below the PDL wait with it: 58 instructions from the wait to the first load,
    // 2-10% slower at T <= 16 on the H200 (results/run24_fast_divisor).
    uint64_t normal, first, keep;
    asm("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(normal));
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(first));
    asm("createpolicy.fractional.L2::evict_last.L2::evict_first.b64 %0, %1;" : "=l"(keep) : "f"(keep_fraction));
    const bool keep_outputs = mode == static_cast<int32_t>(L2Policy::kKeepOutputs);
    load = keep_outputs ? first : normal;
    store = keep_outputs ? keep : normal;
    hinted = keep_outputs;
#else
    (void)mode;
    (void)keep_fraction;
#endif
  }
};

// One word loaded or stored with an L2 cache policy.
template <typename Word>
__device__ __forceinline__ Word load_with_policy(const Word* src, uint64_t policy);
template <typename Word>
__device__ __forceinline__ void store_with_policy(Word* dst, const Word& w, uint64_t policy);

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
template <>
__device__ __forceinline__ uint4 load_with_policy<uint4>(const uint4* src, uint64_t policy) {
  uint4 w;
  asm volatile("ld.global.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
               : "=r"(w.x), "=r"(w.y), "=r"(w.z), "=r"(w.w)
               : "l"(src), "l"(policy));
  return w;
}
template <>
__device__ __forceinline__ uint2 load_with_policy<uint2>(const uint2* src, uint64_t policy) {
  uint2 w;
  asm volatile("ld.global.L2::cache_hint.v2.u32 {%0, %1}, [%2], %3;" : "=r"(w.x), "=r"(w.y) : "l"(src), "l"(policy));
  return w;
}
template <>
__device__ __forceinline__ uint32_t load_with_policy<uint32_t>(const uint32_t* src, uint64_t policy) {
  uint32_t w;
  asm volatile("ld.global.L2::cache_hint.u32 %0, [%1], %2;" : "=r"(w) : "l"(src), "l"(policy));
  return w;
}
template <>
__device__ __forceinline__ uint16_t load_with_policy<uint16_t>(const uint16_t* src, uint64_t policy) {
  uint16_t w;
  asm volatile("ld.global.L2::cache_hint.u16 %0, [%1], %2;" : "=h"(w) : "l"(src), "l"(policy));
  return w;
}
template <>
__device__ __forceinline__ void store_with_policy<uint4>(uint4* dst, const uint4& w, uint64_t policy) {
  asm volatile("st.global.L2::cache_hint.v4.u32 [%0], {%1, %2, %3, %4}, %5;" ::"l"(dst), "r"(w.x), "r"(w.y),
               "r"(w.z), "r"(w.w), "l"(policy)
               : "memory");
}
template <>
__device__ __forceinline__ void store_with_policy<uint2>(uint2* dst, const uint2& w, uint64_t policy) {
  asm volatile("st.global.L2::cache_hint.v2.u32 [%0], {%1, %2}, %3;" ::"l"(dst), "r"(w.x), "r"(w.y), "l"(policy)
               : "memory");
}
template <>
__device__ __forceinline__ void store_with_policy<uint32_t>(uint32_t* dst, const uint32_t& w, uint64_t policy) {
  asm volatile("st.global.L2::cache_hint.u32 [%0], %1, %2;" ::"l"(dst), "r"(w), "l"(policy) : "memory");
}
template <>
__device__ __forceinline__ void store_with_policy<uint16_t>(uint16_t* dst, const uint16_t& w, uint64_t policy) {
  asm volatile("st.global.L2::cache_hint.u16 [%0], %1, %2;" ::"l"(dst), "h"(w), "l"(policy) : "memory");
}
#else
template <typename Word>
__device__ __forceinline__ Word load_with_policy(const Word* src, uint64_t) {
  return *src;
}
template <typename Word>
__device__ __forceinline__ void store_with_policy(Word* dst, const Word& w, uint64_t) {
  *dst = w;
}
#endif

// C consecutive elements of one head, moved as a single aligned word.
template <typename T, int C>
struct Chunk {
  static constexpr int kBytes = static_cast<int>(sizeof(T)) * C;
  static_assert(kBytes <= 16, "a chunk is at most one 16-byte word");
  using Word = typename WordOf<kBytes>::type;
  Word word;

  __device__ __forceinline__ void load(const T* src) { word = *reinterpret_cast<const Word*>(src); }
  __device__ __forceinline__ void store(T* dst) const { *reinterpret_cast<Word*>(dst) = word; }
  __device__ __forceinline__ void load(const T* src, uint64_t policy) {
    word = load_with_policy(reinterpret_cast<const Word*>(src), policy);
  }
  __device__ __forceinline__ void store(T* dst, uint64_t policy) const {
    store_with_policy(reinterpret_cast<Word*>(dst), word, policy);
  }
  __device__ __forceinline__ void zero() { word = Word{}; }
  __device__ __forceinline__ float get(int i) const { return to_float(reinterpret_cast<const T*>(&word)[i]); }
  __device__ __forceinline__ void set(int i, float v) { reinterpret_cast<T*>(&word)[i] = from_float<T>(v); }
};

// The K chunks of a lane's share of one head as floats, and the sum of their squares (the lane's part of the
// RMS norm).
template <typename T, int K, int C>
__device__ __forceinline__ float unpack_sum_of_squares(const Chunk<T, C> (&raw)[K], float (&v)[K][C]) {
  float sumsq = 0.0f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
#pragma unroll
    for (int j = 0; j < C; ++j) {
      v[k][j] = raw[k].get(j);
      sumsq += v[k][j] * v[k][j];
    }
  }
  return sumsq;
}

// Sum over the L lanes of an aligned lane group (L a power of two, <= 32). Every lane of the warp
// must call it, active or not.
template <int L>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int offset = L / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ void wait_for_previous_kernel(bool pdl) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (pdl) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;");
  }
#endif
}

__device__ __forceinline__ int64_t load_position(const Problem& p, int64_t token) {
  return p.positions_64 ? static_cast<const int64_t*>(p.positions)[token]
                        : static_cast<int64_t>(static_cast<const int32_t*>(p.positions)[token]);
}

// A token's position read as two 32-bit words with no branch (int64: low and high word; int32: the same
// word twice), widened only where it is used. A load behind a branch on the positions' dtype, widened on
// the spot, made every warp of the tuned forward wait for its position before it issued its data loads,
// and merged the two paths' scoreboards so the cos/sin row then waited for the data as well: three
// dependent round trips instead of two (ncu source counters, results/run10_chain).
struct PositionWords {
  int32_t lo = 0, hi = 0;

  // Token indexes past the last token read the last one (pairs past the end of the grid): no predicate.
  __device__ __forceinline__ void fetch(const Problem& p, int64_t token, bool /*valid*/ = true) {
    const int64_t t = token < p.num_tokens ? token : p.num_tokens - 1;
    const int32_t* words = static_cast<const int32_t*>(p.positions);
    const int64_t at = p.positions_64 ? 2 * t : t;
    lo = words[at];
    hi = words[p.positions_64 ? at + 1 : at];
  }
  __device__ __forceinline__ int64_t value(const Problem& p) const {
    const int64_t wide = static_cast<int64_t>((static_cast<uint64_t>(static_cast<uint32_t>(hi)) << 32) |
                                              static_cast<uint32_t>(lo));
    return p.positions_64 ? wide : static_cast<int64_t>(lo);
  }
};

template <typename T>
__device__ __forceinline__ float load_one(const void* base, int64_t index) {
  return to_float(static_cast<const T*>(base)[index]);
}

__device__ __forceinline__ float load_scalar(const void* base, ElemType type, int64_t index) {
  switch (type) {
    case ElemType::kF32:
      return load_one<float>(base, index);
    case ElemType::kBF16:
      return load_one<__nv_bfloat16>(base, index);
    default:
      return load_one<__half>(base, index);
  }
}

// K consecutive floats starting at base[index] of a runtime float type; one or two 16-byte words per
// lane when `vec` (the caller guarantees alignment), scalar loads otherwise.
template <int K, typename T>
__device__ __forceinline__ void load_run_typed(const void* base, int64_t index, bool vec, float (&out)[K]) {
  constexpr int kBytes = static_cast<int>(sizeof(T)) * K;
  if constexpr (kBytes >= 4) {
    if (vec) {
      constexpr int kWordBytes = kBytes < 16 ? kBytes : 16;
      constexpr int kPerWord = kWordBytes / static_cast<int>(sizeof(T));
      using Word = typename WordOf<kWordBytes>::type;
      const Word* src = reinterpret_cast<const Word*>(static_cast<const T*>(base) + index);
#pragma unroll
      for (int w = 0; w < K / kPerWord; ++w) {
        const Word word = src[w];
        const T* e = reinterpret_cast<const T*>(&word);
#pragma unroll
        for (int j = 0; j < kPerWord; ++j) out[w * kPerWord + j] = to_float(e[j]);
      }
      return;
    }
  }
#pragma unroll
  for (int j = 0; j < K; ++j) out[j] = load_one<T>(base, index + j);
}

template <int K>
__device__ __forceinline__ void load_run(const void* base, ElemType type, int64_t index, bool vec, float (&out)[K]) {
  switch (type) {
    case ElemType::kF32:
      load_run_typed<K, float>(base, index, vec, out);
      break;
    case ElemType::kBF16:
      load_run_typed<K, __nv_bfloat16>(base, index, vec, out);
      break;
    case ElemType::kF16:
      load_run_typed<K, __half>(base, index, vec, out);
      break;
  }
}

// A position loaded and widened at once, as load_position does: fewer live registers than PositionWords,
// for the tuned kernels where registers decide (see forward_tuned_kernel).
struct WidePosition {
  int64_t wide = 0;

  // Only where `valid` (a pair past the end of the grid keeps 0).
  __device__ __forceinline__ void fetch(const Problem& p, int64_t token, bool valid = true) {
    wide = valid ? load_position(p, token) : 0;
  }
  __device__ __forceinline__ int64_t value(const Problem&) const { return wide; }
};

// The scale of an element whose weight (if `weight` is not null) has value w: weight_offset + w, or 1.
__device__ __forceinline__ float scale_of(const Problem& p, const void* weight, float w) {
  return weight != nullptr ? w + p.weight_offset : 1.0f;
}

// Per-element scale of a run of K elements (scale_of; nothing is loaded for a missing weight). WeightT
// void: the weight's type is read at run time. WeightT given: the weight is known to have that type and
// 16-byte alignment (Inputs::kCommon), so it is one typed load with no switch between the load and its use.
template <int K, typename WeightT = void>
__device__ __forceinline__ void load_scale(const Problem& p, int group, int64_t index, bool vec, float (&out)[K]) {
  const void* w = p.weight[group & 1];
  if (w == nullptr) {
#pragma unroll
    for (int j = 0; j < K; ++j) out[j] = 1.0f;
    return;
  }
  if constexpr (std::is_void_v<WeightT>) {
    load_run<K>(w, p.weight_dtype[group & 1], index, vec, out);
  } else {
    load_run_typed<K, WeightT>(w, index, true, out);
  }
#pragma unroll
  for (int j = 0; j < K; ++j) out[j] = scale_of(p, w, out[j]);
}

// Fills scale[g * D + e] with element e of weight g's scale (weight_offset + w, or 1 without a weight),
// cooperatively over the block, then synchronises it. Every thread of the block calls it.
template <int D>
__device__ __forceinline__ void stage_scales(const Problem& p, float* scale) {
  for (int t = threadIdx.x; t < 2 * D; t += blockDim.x) {
    float one[1];
    load_scale<1>(p, t / D, t % D, false, one);
    scale[t] = one[0];
  }
  __syncthreads();
}

// stage_scales in two steps for weights of the storage type T, 16-byte aligned (Inputs::kCommon): fetch()
// issues one 16-byte load per thread (at 4 warps per block) with the caller's other loads, commit()
// converts, stores and synchronises once they are needed. The element-wise loop waited for each of its
// loads in turn, ahead of the block barrier (ncu: a tenth of the forward's warp time at T = 4096).
template <typename T, int D>
class StagedScales {
 public:
  __device__ __forceinline__ void fetch(const Problem& p) {
#pragma unroll
    for (int r = 0; r < kPerThread; ++r) {
      const int w = static_cast<int>(threadIdx.x) + r * static_cast<int>(blockDim.x);
      const void* weight = weight_of(p, w);
      if (w < kWords && weight != nullptr) {
        word_[r].load(static_cast<const T*>(weight) + (w % kWordsPerWeight) * kVec);
      } else {
        word_[r].zero();
      }
    }
  }

  __device__ __forceinline__ void commit(const Problem& p, float* scale) const {
#pragma unroll
    for (int r = 0; r < kPerThread; ++r) {
      const int w = static_cast<int>(threadIdx.x) + r * static_cast<int>(blockDim.x);
      if (w >= kWords) continue;
      const void* weight = weight_of(p, w);
#pragma unroll
      for (int j = 0; j < kVec; ++j) scale[w * kVec + j] = scale_of(p, weight, word_[r].get(j));
    }
    // Blocks of fewer than 4 warps: the words the unrolled step did not reach.
    for (int w = static_cast<int>(threadIdx.x) + kPerThread * static_cast<int>(blockDim.x); w < kWords;
         w += blockDim.x) {
      float run[kVec];
      load_scale<kVec, T>(p, w / kWordsPerWeight, (w % kWordsPerWeight) * kVec, true, run);
#pragma unroll
      for (int j = 0; j < kVec; ++j) scale[w * kVec + j] = run[j];
    }
    __syncthreads();
  }

 private:
  // Word w of the staged [2][D] row belongs to q's weight (first half) or k's.
  __device__ __forceinline__ static const void* weight_of(const Problem& p, int w) {
    return p.weight[w < kWordsPerWeight ? 0 : 1];
  }

  static constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  static constexpr int kWordsPerWeight = D / kVec;
  static constexpr int kWords = 2 * kWordsPerWeight;
  static constexpr int kPerThread = (kWords + 4 * kWarp - 1) / (4 * kWarp);
  Chunk<T, kVec> word_[kPerThread];
};

// The identity rotation (cos 1, sin 0) for a run of C elements that no angle reaches.
template <int C>
__device__ __forceinline__ void identity_angles(float (&c)[C], float (&s)[C]) {
#pragma unroll
  for (int j = 0; j < C; ++j) {
    c[j] = 1.0f;
    s[j] = 0.0f;
  }
}

// cos/sin of K consecutive rotary pairs [first, first + K) of one token. Pairs at or past rotary_dim / 2
// get the identity rotation (cos 1, sin 0), which leaves the pass-through dims unchanged.
template <int K, Inputs In = Inputs::kAny>
__device__ __forceinline__ void load_angles(const KernelArgs& a, int64_t position, int first, float (&c)[K],
                                            float (&s)[K]) {
  const Problem& p = a.p;
  const int half = p.rotary_dim / 2;
  if constexpr (In == Inputs::kCommon) {
    const int64_t row = clamp_row(position, p.table.rows) * p.rotary_dim;
    load_run_typed<K, float>(p.table.data, row + first, true, c);
    load_run_typed<K, float>(p.table.data, row + half + first, true, s);
    return;
  }
  const bool whole = first + K <= half;
  if (p.table.is_cache) {
    const int64_t row = clamp_row(position, p.table.rows) * p.rotary_dim;
    if (whole) {
      load_run<K>(p.table.data, p.table.dtype, row + first, a.table_vec, c);
      load_run<K>(p.table.data, p.table.dtype, row + half + first, a.table_vec, s);
      return;
    }
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const bool in = first + j < half;
      c[j] = in ? load_scalar(p.table.data, p.table.dtype, row + first + j) : 1.0f;
      s[j] = in ? load_scalar(p.table.data, p.table.dtype, row + half + first + j) : 0.0f;
    }
    return;
  }
  const float* inv_freq = static_cast<const float*>(p.table.data);
  const float pos = static_cast<float>(position);
  float f[K];
  if (whole) {
    load_run_typed<K, float>(inv_freq, first, a.table_vec, f);
  } else {
#pragma unroll
    for (int j = 0; j < K; ++j) f[j] = first + j < half ? inv_freq[first + j] : 0.0f;
  }
#pragma unroll
  for (int j = 0; j < K; ++j) sincosf(pos * f[j], &s[j], &c[j]);
}

// Which head group (0 q, 1 k, 2 v) a head index of a token belongs to, and its index inside it.
__device__ __forceinline__ int split_head(const Problem& p, int head, int* local) {
  const int h0 = p.group[0].num_heads, h1 = p.group[1].num_heads;
  if (head < h0) {
    *local = head;
    return 0;
  }
  if (head < h0 + h1) {
    *local = head - h0;
    return 1;
  }
  *local = head - h0 - h1;
  return 2;
}

// Element offset of head `local` of group g at `token`.
__device__ __forceinline__ int64_t head_offset(const Problem& p, int g, int64_t token, int local) {
  return token * p.group[g].token_stride + static_cast<int64_t>(local) * p.head_dim;
}

// Walks the (token, head) pairs of a warp in order without a division per pair.
struct PairCursor {
  int64_t token;
  int head;
  __device__ __forceinline__ PairCursor(int64_t pair, const FastDivisor& heads) {
    const int h = static_cast<int>(heads.divisor);
    if (pair <= 0x7fffffff) {  // the common case: a multiply and a shift (FastDivisor)
      const uint32_t p32 = static_cast<uint32_t>(pair), t32 = heads.divide(p32);
      token = t32;
      head = static_cast<int>(p32 - t32 * heads.divisor);
      return;
    }
    token = pair / h;  // more than 2^31 pairs: a 64-bit division
    head = static_cast<int>(pair - token * h);
  }
  __device__ __forceinline__ void advance(int step, const FastDivisor& heads) {
    head += step;
    while (head >= static_cast<int>(heads.divisor)) {
      head -= static_cast<int>(heads.divisor);
      ++token;
    }
  }
};

// Warms L2 with the position and the cos/sin row of each token whose head-0 pair lies in
// [first, first + count), for warps that reach those tokens later: their position -> row chain then
// hits L2 instead of costing two dependent DRAM round trips, the wait that otherwise keeps a streaming
// kernel well below copy bandwidth. In two steps so the position load overlaps the caller's own work:
// begin() loads it, finish() issues the prefetches once it has arrived. Every lane calls both. Lanes
// take 2^a.row_slots_log2 consecutive lanes per token, one 128-byte line each (shifts and masks: a
// division by the run-time line count cost about 40 instructions per lane). Position: PositionWords or
// WidePosition, as the calling kernel holds its own.
constexpr int kPrefetchLine = 128;  // bytes per L2 line RowPrefetch warms

// RowPrefetch's lanes per cos/sin row of `p`, log2: a row of R bytes straddles at most R / 128 + 1 lines,
// rounded up to a power of two. Host side, once per launch (KernelArgs::row_slots_log2).
inline int32_t row_prefetch_slots_log2(const Problem& p) {
  return ceil_log2(p.rotary_dim * elem_bytes(p.table.dtype) / kPrefetchLine + 1);
}

template <typename Position>
class RowPrefetch {
 public:
  __device__ __forceinline__ void begin(const KernelArgs& a, int64_t first, int count) {
    const Problem& p = a.p;
    if (!p.table.is_cache || first >= a.total_pairs) return;
    const PairCursor start(first, a.heads);
    const int64_t last_pair = first + count - 1 < a.total_pairs ? first + count - 1 : a.total_pairs - 1;
    const int64_t t_first = start.head == 0 ? start.token : start.token + 1;
    // The head-0 pair of t_last is <= last_pair; start.head + count < 2^31.
    const int64_t t_last = start.token + a.heads.divide(static_cast<uint32_t>(start.head + (last_pair - first)));
    const int lane = threadIdx.x % kWarp;
    const int64_t token = t_first + (lane >> a.row_slots_log2);
    if (token > t_last) return;
    line_ = lane & ((1 << a.row_slots_log2) - 1);
    position_.fetch(p, token);
    active_ = true;
  }

  __device__ __forceinline__ void finish(const Problem& p) const {
    if (!active_) return;
    const int row_bytes = p.rotary_dim * elem_bytes(p.table.dtype);
    const uintptr_t row =
        reinterpret_cast<uintptr_t>(p.table.data) + clamp_row(position_.value(p), p.table.rows) * row_bytes;
    const uintptr_t line =
        (row & ~static_cast<uintptr_t>(kPrefetchLine - 1)) + static_cast<uintptr_t>(line_) * kPrefetchLine;
    if (line >= row + row_bytes) return;  // the row ends before this lane's line
    asm volatile("prefetch.global.L2 [%0];" ::"l"(line));
  }

 private:
  Position position_;
  int line_ = 0;
  bool active_ = false;
};

}  // namespace qkrope::cuda
