// Picks and launches the forward kernel for one storage type; included once per type by forward_<type>.cu
// so the instantiations compile in parallel.
#pragma once

#include "cuda/dispatch.cuh"
#include "cuda/forward_kernels.cuh"

namespace qkrope::cuda {

template <typename T, int D, int N, Style S>
struct ForwardTuned {
  static constexpr int kPairs = N == 16 ? kSixteenOr8<T, D, S> : N;
  static TunedChoice<void (*)(KernelArgs)> choice() { return {forward_tuned_kernel<T, D, kPairs, S>, kPairs, 0}; }
};

template <typename T, int C, Style S>
struct ForwardGeneric {
  static constexpr auto kernel = forward_generic_kernel<T, C, S>;
};

template <typename T>
cudaError_t launch_forward_typed(const KernelArgs& args, const Launch& launch, cudaStream_t stream) {
  const Problem& p = args.p;
  if (!heads_aligned<T>(p, 2 * static_cast<int>(sizeof(T)))) return cudaErrorMisalignedAddress;
  const dim3 block(launch.warps_per_block * kWarp);
  const bool tuned = use_tuned<T>(p);
  const auto choice = pick_tuned<ForwardTuned, T>(p, launch.pairs_per_warp);
  const int pairs = tuned ? choice.pairs : launch.pairs_per_warp;
  const int64_t warps = (p.total_pairs() + pairs - 1) / pairs;
  const int64_t blocks = (warps + launch.warps_per_block - 1) / launch.warps_per_block;
  if (blocks > INT_MAX) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(blocks));
  if (tuned) return launch_kernel(choice.kernel, grid, block, 0, stream, launch.pdl, args);
  return launch_kernel(pick_generic<ForwardGeneric, T>(p), grid, block, generic_smem_bytes<T>(p, launch, false), stream,
                       launch.pdl, args, static_cast<int>(launch.pairs_per_warp),
                       generic_lanes_per_head<T>(p, launch.pairs_per_warp));
}

}  // namespace qkrope::cuda
