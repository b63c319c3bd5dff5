// Picks and launches the forward kernel for one storage type; included once per type by forward_<type>.cu
// so the instantiations compile in parallel.
#pragma once

#include <algorithm>

#include "cuda/dispatch.cuh"
#include "cuda/forward_kernels.cuh"
#include "cuda/forward_single.cuh"

namespace qkrope::cuda {

template <Inputs In>
struct ForwardTuned {
  template <typename T, int D, int N, Style S>
  struct Family {
    static constexpr int kPairs = N == 16 ? kSixteenOr8<T, D, S> : N;
    static TunedChoice<void (*)(KernelArgs)> choice() {
      return {forward_tuned_kernel<T, D, kPairs, S, In>, kPairs, 0};
    }
  };
};

// The tuned forward for the common inputs at full rotary with its cos/sin rows in shared memory
// (Launch::shared_rows) where a build has that variant (kSharedRowsBuild), the plain one elsewhere.
struct ForwardTunedSharedRows {
  template <typename T, int D, int N, Style S>
  struct Family {
    static constexpr int kPairs = N == 16 ? kSixteenOr8<T, D, S> : N;
    static TunedChoice<void (*)(KernelArgs)> choice() {
      if constexpr (kSharedRowsBuild<T, D, kPairs, S>) {
        return {forward_tuned_kernel<T, D, kPairs, S, Inputs::kCommon, false, true>, kPairs, 0};
      } else {
        return ForwardTuned<Inputs::kCommon>::Family<T, D, N, S>::choice();
      }
    }
  };
};

// The tuned forward for partial-rotary neox (tuned_partial_neox); plain grid only.
template <Inputs In>
struct ForwardTunedPartial {
  template <typename T, int D, int N, Style S>
  struct Family {
    static constexpr int kPairs = N == 16 ? kSixteenOr8<T, D, Style::kNeox> : N;
    static TunedChoice<void (*)(KernelArgs)> choice() {
      return {forward_tuned_kernel<T, D, kPairs, Style::kNeox, In, true>, kPairs, 0};
    }
  };
};

// The tuned forward on a persistent grid (forward_streaming_kernel) for the common inputs, where a lane
// group holds two pairs (the next task's data then fits in 128 registers); the plain common-input kernel
// elsewhere.
struct ForwardStreaming {
  template <typename T, int D, int N, Style S>
  struct Family {
    static constexpr int kPairs = N == 16 ? kSixteenOr8<T, D, S> : N;
    static TunedChoice<void (*)(KernelArgs)> choice() {
      if constexpr (TunedLayout<T, D, kPairs, S>::I == 2) {
        return {forward_streaming_kernel<T, D, kPairs, S>, kPairs, 0, true};
      } else {
        return ForwardTuned<Inputs::kCommon>::Family<T, D, N, S>::choice();
      }
    }
  };
};

template <typename T, int C, Style S>
struct ForwardGeneric {
  static constexpr auto kernel = forward_generic_kernel<T, C, S>;
};

// The single-pair kernel where it serves the launch: a build for N (pick_single), the common inputs at full
// rotary, no V to copy, no cos/sin prefetch (which only launches of more pairs than a wave of warps turn on), no
// persistent grid or rows in shared memory asked for (tuned variants of N >= 4) and a pair count that fits its
// 32-bit indices; nullptr elsewhere (forward_tuned_kernel runs).
template <typename T>
void (*fitting_single_kernel(const KernelArgs& a, const Launch& launch))(SingleArgs) {
  const Problem& p = a.p;
  const bool fits = launch.prefetch_pairs == 0 && !launch.persistent && !launch.shared_rows && use_tuned<T>(p) &&
                    p.rotary_dim == p.head_dim && p.group[2].num_heads == 0 && common_inputs<T>(a) &&
                    a.total_pairs <= INT_MAX;
  return fits ? pick_single<T>(p, launch.pairs_per_warp) : nullptr;
}

template <typename T>
cudaError_t launch_forward_typed(const KernelArgs& args, const Launch& launch, cudaStream_t stream) {
  const Problem& p = args.p;
  if (!heads_aligned<T>(p, 2 * static_cast<int>(sizeof(T)))) return cudaErrorMisalignedAddress;
  // Enough blocks of `warps_per_block` warps for every pair at `pairs` per warp.
  const auto grid_for = [&](int pairs, int warps_per_block, dim3* grid) {
    const int64_t warps = (p.total_pairs() + pairs - 1) / pairs;
    const int64_t blocks = (warps + warps_per_block - 1) / warps_per_block;
    *grid = dim3(static_cast<unsigned>(blocks));
    return blocks <= INT_MAX;
  };
  dim3 grid;
  if (const auto single = fitting_single_kernel<T>(args, launch)) {
    if (!grid_for(launch.pairs_per_warp, launch.single_warps_per_block, &grid)) return cudaErrorInvalidConfiguration;
    const dim3 single_block(launch.single_warps_per_block * kWarp);
    return launch_kernel(single, grid, single_block, 0, stream, launch.pdl,
                         make_single_args(args, launch.single_warps_per_block));
  }
  const dim3 block(launch.warps_per_block * kWarp);
  if (use_tuned<T>(p)) {
    const int n = launch.pairs_per_warp;
    const bool common_full = common_inputs<T>(args) && !tuned_partial_neox<T>(p);
    const auto choice = launch.persistent && common_full    ? pick_tuned<ForwardStreaming::Family, T>(p, n)
                        : launch.shared_rows && common_full ? pick_tuned<ForwardTunedSharedRows::Family, T>(p, n)
                                                            : pick_tuned_kernel<ForwardTuned, ForwardTunedPartial, T>(args, n);
    if (!grid_for(choice.pairs, launch.warps_per_block, &grid)) return cudaErrorInvalidConfiguration;
    if (choice.persistent) {
      int64_t resident = 0;
      const cudaError_t err = resident_blocks(choice.kernel, static_cast<int>(block.x), &resident);
      if (err != cudaSuccess) return err;
      const int64_t tasks = (p.total_pairs() + choice.pairs - 1) / choice.pairs;
      grid.x = static_cast<unsigned>(std::min<int64_t>(grid.x, streaming_blocks(tasks, resident, launch.warps_per_block)));
    }
    return launch_kernel(choice.kernel, grid, block, 0, stream, launch.pdl, args);
  }
  // A warp of the generic kernel runs G = 32 / lanes heads side by side, `rounds` times: N = 16 maps to
  // fewer pairs where a lane would hold more than kGenericRounds of them (as the tuned family maps it).
  const int lanes = generic_lanes_per_head<T>(p, launch.pairs_per_warp);
  const int groups = kWarp / lanes;
  const int rounds = std::min(std::max(1, launch.pairs_per_warp / groups), kGenericRounds<T>);
  if (!grid_for(groups * rounds, launch.warps_per_block, &grid)) return cudaErrorInvalidConfiguration;
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  const bool paired = paired_layout<T>(p);
  // gptj reads a chunk's angles as one run when no chunk straddles the rotary end.
  const bool gptj_runs = p.style == Style::kGptj && generic_chunk<T>(p) == kVec && p.rotary_dim % kVec == 0;
  // Those two with the common table and weights: built without the run-time type switches as well (the
  // kAny build was 8328 SASS instructions with six inlined cos/sin paths; results/run11_generic/ncu_paired).
  const bool common = common_table_and_weights<T>(args);
  auto kernel = pick_generic<ForwardGeneric, T>(p);
  if (paired) {
    kernel = common ? forward_generic_kernel<T, kVec, Style::kNeox, true, Inputs::kCommon>
                    : forward_generic_kernel<T, kVec, Style::kNeox, true, Inputs::kAny>;
  } else if (gptj_runs && common) {
    kernel = forward_generic_kernel<T, kVec, Style::kGptj, false, Inputs::kCommon>;
  }
  const size_t smem = generic_smem_bytes(p, lanes, launch.warps_per_block, p.style == Style::kNeox && !paired);
  return launch_kernel(kernel, grid, block, smem, stream, launch.pdl, args, rounds, lanes);
}

}  // namespace qkrope::cuda
