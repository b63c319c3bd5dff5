// The forward for one (token, head) pair per lane group with the common inputs at full rotary and no V to
// copy: N = 1 (one pair per warp, what small T runs), 2, 4 or 8 (one pair per 32 / N lanes: fewer warps, and each
// lane moves N times the bytes per load) where the tuned forward's layout (TunedLayout<T, D, N, S>) has G = N groups
// of one pair, without what only larger launches need. Its own small argument struct, 32-bit pair and token indices
// (the launcher checks the pair count), no cos/sin prefetch, no staged weights, no per-pair loop and no branch after
// the loads: a group's path from launch to its stores is the position -> row chain, with the data, the weights
// and the norm's reduction alongside. (With a V branch, nvcc sank the row's load into the q/k side, behind the
// reduction's shuffles.) Each group loads its own token's cos/sin row; the groups of a warp mostly share a token,
// and their loads of the same words coalesce.
#pragma once

#include <cstddef>

#include "cuda/device_common.cuh"
#include "cuda/forward_kernels.cuh"
#include "cuda/tuned_layout.cuh"

namespace qkrope::cuda {

// The arguments, ordered by when a warp first needs them. A kernel reads its parameters through the constant cache, and
// each 64-byte line a warp touches first misses there: the warp cannot issue past that instruction until the line
// arrives. With the fields in declaration order, a warp waited for four such lines in a row before it issued its
// position's load (ncu: 38% of the warp-state samples of (64, 8, 128) at T = 16 came before that load,
// results/run31_param_lines; in this order 26%, and that point went from 1.70 to 1.50-1.54 us,
// results/run32_param_lines_merged). Parameters start at offset 0x210 of the constant bank on sm_90, in the line that also
// holds the global memory descriptor every load uses (0x208): so everything up to the position's and the row's loads
// goes in the first 48 bytes, the data's fields in the next line, the stores' in the one after.
struct SingleArgs {
  // 0x210-0x23f: the position -> row chain.
  const int32_t* positions = nullptr;  // int32, or int64 as two words (positions_64)
  const float* table = nullptr;        // [rows, head_dim] float32: cos, then sin
  int64_t rows = 0;
  FastDivisor heads;                   // pair -> token
  uint32_t total_pairs = 0;
  int32_t warps_per_block = 1;         // blockDim.x / 32, here instead of the first line of the bank
  bool positions_64 = false;
  bool pdl = false;
  // The L2 policy (an L2Policy value): HeadCachePolicy tests it before the loads too, so a byte of this line; as an
  // int32 in the next line it put a second wait before the position's load (read from the SASS).
  int8_t l2_policy = 0;
  // 0x240-0x27f: the data's and the weights' loads.
  const void* in[2] = {nullptr, nullptr};  // q, k
  int64_t token_stride[2] = {0, 0};
  const void* weight[2] = {nullptr, nullptr};
  int32_t heads_q = 0;  // q's heads; then k's
  float l2_keep_fraction = 1.0f;
  float weight_offset = 0.0f;
  // 0x280-: the stores.
  void* out[2] = {nullptr, nullptr};
  float eps = 0.0f;
};
static_assert(offsetof(SingleArgs, l2_policy) < 48 && offsetof(SingleArgs, in) == 48 &&
                  offsetof(SingleArgs, out) == 112,
              "the chain's fields share the descriptor's constant line, the data's the next one");

// Host side: the single-pair arguments of a problem (fitting_single_kernel found a kernel) for blocks of
// warps_per_block warps.
inline SingleArgs make_single_args(const KernelArgs& a, int32_t warps_per_block) {
  const Problem& p = a.p;
  SingleArgs s;
  for (int g = 0; g < 2; ++g) {
    s.in[g] = p.group[g].in;
    s.out[g] = p.group[g].out;
    s.token_stride[g] = p.group[g].token_stride;
  }
  s.weight[0] = p.weight[0];
  s.weight[1] = p.weight[1];
  s.positions = static_cast<const int32_t*>(p.positions);
  s.table = static_cast<const float*>(p.table.data);
  s.rows = p.table.rows;
  s.heads = a.heads;
  s.heads_q = p.group[0].num_heads;
  s.total_pairs = static_cast<uint32_t>(a.total_pairs);
  s.warps_per_block = warps_per_block;
  s.eps = p.eps;
  s.weight_offset = p.weight_offset;
  s.l2_keep_fraction = a.l2_keep_fraction;
  s.l2_policy = static_cast<int8_t>(a.l2_policy);  // 0 or 1 (decode.cc)
  s.positions_64 = p.positions_64;
  s.pdl = a.pdl;
  return s;
}

template <typename T, int D, int N, Style S>
__global__ void __launch_bounds__(kWarp * kMaxSingleWarpsPerBlock) forward_single_kernel(const SingleArgs a) {
  using Lay = TunedLayout<T, D, N, S>;
  constexpr int C = Lay::C, SL = Lay::SL;
  static_assert(Lay::G == N && Lay::I == 1, "one pair per lane group");
  // No overflow: the grid has at most 2^31 pairs (the launcher checks total_pairs).
  const uint32_t first = (blockIdx.x * a.warps_per_block + threadIdx.x / kWarp) * N;
  if (first >= a.total_pairs) return;  // the whole warp
  const int lane = static_cast<int>(threadIdx.x % Lay::L);
  // A group past the last pair (a pair count not a multiple of N) redoes the last pair and stores nothing: every lane
  // of the warp takes part in the reduction's shuffles.
  const uint32_t wanted = first + threadIdx.x % kWarp / Lay::L;
  const bool stores = N == 1 || wanted < a.total_pairs;
  const uint32_t pair = stores ? wanted : a.total_pairs - 1;
  const uint32_t token = a.heads.divide(pair);
  const int head = static_cast<int>(pair - token * a.heads.divisor);
  const bool is_q = head < a.heads_q;
  const int local = is_q ? head : head - a.heads_q;
  // Selects, not an index into the argument arrays: indexed, they were copied to the stack.
  const void* in = is_q ? a.in[0] : a.in[1];
  void* out = is_q ? a.out[0] : a.out[1];
  const int64_t stride = is_q ? a.token_stride[0] : a.token_stride[1];
  const int64_t offset = static_cast<int64_t>(token) * stride + local * D;
  const void* weight = is_q ? a.weight[0] : a.weight[1];
  wait_for_previous_kernel(a.pdl);

  // The position and its row first, the longest chain (written after the data's loads, ptxas issued the 256-dim
  // row's load behind the norm's shuffles), then the data and the weights.
  const int64_t at = a.positions_64 ? 2 * static_cast<int64_t>(token) : token;
  const int32_t lo = a.positions[at], hi = a.positions[a.positions_64 ? at + 1 : at];
  const int64_t position = a.positions_64
                               ? static_cast<int64_t>((static_cast<uint64_t>(static_cast<uint32_t>(hi)) << 32) |
                                                      static_cast<uint32_t>(lo))
                               : static_cast<int64_t>(lo);
  const float* row = a.table + clamp_row(position, a.rows) * D;
  float cs[Lay::AS][Lay::NA], sn[Lay::AS][Lay::NA];
#pragma unroll
  for (int r = 0; r < Lay::AS; ++r) {
    load_run_typed<Lay::NA, float>(row, Lay::angle_start(r, lane), true, cs[r]);
    load_run_typed<Lay::NA, float>(row, D / 2 + Lay::angle_start(r, lane), true, sn[r]);
  }

  const HeadCachePolicy cache(a.l2_policy, a.l2_keep_fraction);
  const T* src = static_cast<const T*>(in) + offset;
  Chunk<T, C> raw[SL];
#pragma unroll
  for (int s = 0; s < SL; ++s) raw[s].load(src + Lay::chunk_start(s, lane), cache.load);
  float w[SL][C];
#pragma unroll
  for (int s = 0; s < SL; ++s) {
    if (weight == nullptr) {
#pragma unroll
      for (int j = 0; j < C; ++j) w[s][j] = 1.0f;
    } else {
      load_run_typed<C, T>(weight, Lay::chunk_start(s, lane), true, w[s]);
#pragma unroll
      for (int j = 0; j < C; ++j) w[s][j] += a.weight_offset;
    }
  }
  float v[SL][C];
  const float sumsq = group_sum<Lay::L>(unpack_sum_of_squares(raw, v));
  T* dst = static_cast<T*>(out) + offset;
  const float r = rsqrtf(sumsq / static_cast<float>(D) + a.eps);
#pragma unroll
  for (int s = 0; s < SL; ++s) {
#pragma unroll
    for (int j = 0; j < C; ++j) v[s][j] = v[s][j] * r * w[s][j];
  }
  rotate_tuned<Lay, S>(v, cs, sn, 1.0f);
  if (!stores) return;
#pragma unroll
  for (int s = 0; s < SL; ++s) {
    Chunk<T, C> o;
#pragma unroll
    for (int j = 0; j < C; ++j) o.set(j, v[s][j]);
    o.store(dst + Lay::chunk_start(s, lane), cache.store);
  }
}

// forward_single_kernel at N pairs per warp for head_dim D and style S; nullptr where its layout does not give
// each pair a lane group of its own: a lane of the tuned layout holds at most two 16-byte words of a head, so
// N = 2 has no build for float32 256-dim heads, N = 4 none for 256-dim heads and float32 128-dim ones, and N = 8
// one only for 64-dim heads in 16-bit types.
template <typename T, int D, int N, Style S>
void (*single_kernel_at())(SingleArgs) {
  if constexpr (TunedLayout<T, D, N, S>::G == N) {
    return forward_single_kernel<T, D, N, S>;
  } else {
    return nullptr;
  }
}
template <typename T, int D, Style S>
void (*single_kernel_for(int pairs_per_warp))(SingleArgs) {
  switch (pairs_per_warp) {
    case 1:
      return single_kernel_at<T, D, 1, S>();
    case 2:
      return single_kernel_at<T, D, 2, S>();
    case 4:
      return single_kernel_at<T, D, 4, S>();
    case 8:
      return single_kernel_at<T, D, 8, S>();
    default:
      return nullptr;
  }
}

// forward_single_kernel for a problem (a tuned head_dim) at pairs_per_warp; nullptr where none is built.
template <typename T>
void (*pick_single(const Problem& p, int pairs_per_warp))(SingleArgs) {
  const bool neox = p.style == Style::kNeox;
  switch (p.head_dim) {
    case 64:
      return neox ? single_kernel_for<T, 64, Style::kNeox>(pairs_per_warp)
                  : single_kernel_for<T, 64, Style::kGptj>(pairs_per_warp);
    case 128:
      return neox ? single_kernel_for<T, 128, Style::kNeox>(pairs_per_warp)
                  : single_kernel_for<T, 128, Style::kGptj>(pairs_per_warp);
    default:
      return neox ? single_kernel_for<T, 256, Style::kNeox>(pairs_per_warp)
                  : single_kernel_for<T, 256, Style::kGptj>(pairs_per_warp);
  }
}

}  // namespace qkrope::cuda
