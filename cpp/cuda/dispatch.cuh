// Kernel selection shared by the forward and backward launchers: alignment checks and the tables of
// template instantiations.
#pragma once

#include <climits>
#include <cstdint>
#include <type_traits>

#include "cuda/device_common.cuh"
#include "cuda/device_facts.cuh"
#include "cuda/launch_kernel.cuh"
#include "cuda/tuned_layout.cuh"

namespace qkrope::cuda {

inline bool aligned(const void* ptr, int bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// Every head of every group starts on a multiple of `bytes`.
template <typename T>
bool heads_aligned(const Problem& p, int bytes) {
  if ((static_cast<int64_t>(p.head_dim) * static_cast<int64_t>(sizeof(T))) % bytes != 0) return false;
  for (const HeadGroup& g : p.group) {
    if (g.num_heads == 0) continue;
    if ((g.token_stride * static_cast<int64_t>(sizeof(T))) % bytes != 0) return false;
    if (!aligned(g.in, bytes) || !aligned(g.out, bytes) || (g.grad && !aligned(g.grad, bytes))) return false;
  }
  return true;
}

template <typename T>
constexpr ElemType kElemTypeOf = std::is_same_v<T, float> ? ElemType::kF32
                                 : std::is_same_v<T, __half> ? ElemType::kF16
                                                             : ElemType::kBF16;

// The table and weights Inputs::kCommon assumes (see there), whatever the rotary_dim: an aligned f32
// cache and weights absent or of the storage type, aligned. Enough for the generic forward's PairedLayout,
// whose runs of angles never cross the rotary half by construction.
template <typename T>
bool common_table_and_weights(const KernelArgs& a) {
  const Problem& p = a.p;
  const auto weight_ok = [&](int g) { return p.weight[g] == nullptr || p.weight_dtype[g] == kElemTypeOf<T>; };
  return p.table.is_cache && p.table.dtype == ElemType::kF32 && a.table_vec && a.weight_vec && weight_ok(0) &&
         weight_ok(1);
}

inline bool tuned_head_dim(int head_dim) { return head_dim == 64 || head_dim == 128 || head_dim == 256; }

// The rotary half is a whole number of 16-byte words of T, so a lane can hold neox partners together in the
// tuned forward's partial layout and the generic PairedLayout.
template <typename T>
bool rotary_half_whole_words(const Problem& p) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  return (p.rotary_dim / 2) % kVec == 0;
}

// neox with rotary_dim < head_dim in the tuned forward's partial layout (TunedLane): a tuned head_dim,
// 16-byte aligned heads and a rotary half of whole 16-byte chunks, so of whole chunks of every layout (a
// tuned neox chunk is at most 16 bytes, and a power of two).
template <typename T>
bool tuned_partial_neox(const Problem& p) {
  return tuned_head_dim(p.head_dim) && p.style == Style::kNeox && p.rotary_dim < p.head_dim &&
         rotary_half_whole_words<T>(p) && heads_aligned<T>(p, 16);
}

// A tuned kernel serves the problem: in the plain layout, which keeps rotate-half partners in one lane and so
// needs full rotary for neox, or in the partial one (tuned_partial_neox).
template <typename T>
bool use_tuned(const Problem& p) {
  const bool plain = tuned_head_dim(p.head_dim) && (p.style == Style::kGptj || p.rotary_dim == p.head_dim) &&
                     heads_aligned<T>(p, 16);
  return plain || tuned_partial_neox<T>(p);
}

// The inputs Inputs::kCommon assumes for the tuned kernels: checked here, per call. Their runs of angles
// stay inside the rotary half with full rotary, and in the forward's partial layout.
template <typename T>
bool common_inputs(const KernelArgs& a) {
  return common_table_and_weights<T>(a) && (a.p.rotary_dim == a.p.head_dim || tuned_partial_neox<T>(a.p));
}

// Elements per chunk of the generic kernels: a 16-byte word when every head is aligned to one, else a
// pair of elements (aligned whenever the buffers are: head_dim is even).
template <typename T>
int generic_chunk(const Problem& p) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  return p.head_dim % kVec == 0 && heads_aligned<T>(p, 16) ? kVec : 2;
}


// N = 16 (an auto-dispatch choice) only where a lane then holds at most 4 heads; elsewhere it runs as 8.
template <typename T, int D, Style S>
constexpr int kSixteenOr8 = TunedLayout<T, D, 16, S>::I <= 4 ? 16 : 8;

// One instantiation of a tuned kernel family: the kernel, the pairs per warp it really runs (the grid is
// sized from this, not from the request), the dynamic shared memory each warp of a block needs, and
// whether it loops over tasks on a grid of resident blocks (streaming_blocks).
template <typename Kernel>
struct TunedChoice {
  Kernel kernel;
  int pairs;
  size_t smem_per_warp;
  bool persistent = false;
};

// Blocks of a persistent grid for `tasks` tasks: no more warps than `resident_blocks` hold at once, and
// every warp given the same number of tasks, or one fewer, so that none runs a round alone at the end.
inline int64_t streaming_blocks(int64_t tasks, int64_t resident_blocks, int warps_per_block) {
  const int64_t slots = resident_blocks * warps_per_block > 0 ? resident_blocks * warps_per_block : 1;
  const int64_t per_warp = (tasks + slots - 1) / slots;
  const int64_t warps = (tasks + per_warp - 1) / per_warp;
  return (warps + warps_per_block - 1) / warps_per_block;
}

template <template <typename, int, int, Style> class Family, typename T, Style S, int D>
auto tuned_for_pairs(int n) {
  switch (n) {
    case 1:
      return Family<T, D, 1, S>::choice();
    case 2:
      return Family<T, D, 2, S>::choice();
    case 4:
      return Family<T, D, 4, S>::choice();
    case 8:
      return Family<T, D, 8, S>::choice();
    default:
      return Family<T, D, 16, S>::choice();  // the family maps 16 to what it supports
  }
}

template <template <typename, int, int, Style> class Family, typename T, Style S>
auto tuned_for_dim(int head_dim, int n) {
  switch (head_dim) {
    case 64:
      return tuned_for_pairs<Family, T, S, 64>(n);
    case 128:
      return tuned_for_pairs<Family, T, S, 128>(n);
    default:
      return tuned_for_pairs<Family, T, S, 256>(n);
  }
}

template <template <typename, int, int, Style> class Family, typename T>
auto pick_tuned(const Problem& p, int n) {
  return p.style == Style::kNeox ? tuned_for_dim<Family, T, Style::kNeox>(p.head_dim, n)
                                 : tuned_for_dim<Family, T, Style::kGptj>(p.head_dim, n);
}

// The tuned kernel of family Tuned (ForwardTuned, BackwardTuned) for these arguments: built for the common
// inputs where they hold, for any inputs otherwise.
template <template <Inputs> class Tuned, typename T>
auto pick_tuned_for_inputs(const KernelArgs& a, int n) {
  return common_inputs<T>(a) ? pick_tuned<Tuned<Inputs::kCommon>::template Family, T>(a.p, n)
                             : pick_tuned<Tuned<Inputs::kAny>::template Family, T>(a.p, n);
}

// The tuned kernel for these arguments: of family TunedPartial (built for neox in TunedLane's partial
// layout) where tuned_partial_neox, of family Tuned otherwise; for the common inputs where they hold.
template <template <Inputs> class Tuned, template <Inputs> class TunedPartial, typename T>
auto pick_tuned_kernel(const KernelArgs& a, int n) {
  const Problem& p = a.p;
  if (!tuned_partial_neox<T>(p)) return pick_tuned_for_inputs<Tuned, T>(a, n);
  using Common = TunedPartial<Inputs::kCommon>;
  using Any = TunedPartial<Inputs::kAny>;
  return common_inputs<T>(a) ? tuned_for_dim<Common::template Family, T, Style::kNeox>(p.head_dim, n)
                             : tuned_for_dim<Any::template Family, T, Style::kNeox>(p.head_dim, n);
}

// Lanes per head of the generic kernels: enough for every chunk within the K slots of a lane, and at
// least 32 / pairs_per_warp so a warp never runs more heads at once than it owns.
template <typename T>
int generic_lanes_per_head(const Problem& p, int pairs_per_warp) {
  const int c = generic_chunk<T>(p);
  const int slots = kMaxHeadDim / (kWarp * c);
  const int chunks = p.head_dim / c;
  const int need = (chunks + slots - 1) / slots;
  int lanes = 1;
  while (lanes < need || lanes < kWarp / pairs_per_warp) lanes *= 2;
  return lanes < kWarp ? lanes : kWarp;
}

// Whether the generic kernels hold neox partners in one lane (PairedLayout): the rotary half must be whole
// 16-byte chunks.
template <typename T>
bool paired_layout(const Problem& p) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  return p.style == Style::kNeox && generic_chunk<T>(p) == kVec && rotary_half_whole_words<T>(p);
}

// Shared memory of the generic forward at `lanes` per head: the block's [2][D] weight scales, then, where
// neox partners are exchanged through shared memory (neox_rows), a staging row per head a warp runs at
// once. (The backward's: BackwardSmem.)
inline size_t generic_smem_bytes(const Problem& p, int lanes, int warps_per_block, bool neox_rows) {
  const size_t rows_per_warp = neox_rows ? kWarp / lanes : 0;
  return (2 + warps_per_block * rows_per_warp) * p.head_dim * sizeof(float);
}

// Dynamic shared memory a kernel may take without opting in (cudaFuncAttributeMaxDynamicSharedMemorySize).
constexpr size_t kDefaultSmemBytes = 48 * 1024;

template <template <typename, int, Style> class Family, typename T>
auto pick_generic(const Problem& p) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  const bool neox = p.style == Style::kNeox;
  if (generic_chunk<T>(p) == kVec) {
    return neox ? Family<T, kVec, Style::kNeox>::kernel : Family<T, kVec, Style::kGptj>::kernel;
  }
  return neox ? Family<T, 2, Style::kNeox>::kernel : Family<T, 2, Style::kGptj>::kernel;
}

}  // namespace qkrope::cuda
