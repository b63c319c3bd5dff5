// Picks and launches the forward kernel for one storage type; included once per type by forward_<type>.cu
// so the instantiations compile in parallel.
#pragma once

#include "cuda/dispatch.cuh"
#include "cuda/forward_kernels.cuh"

namespace qkrope::cuda {

template <typename T, int D, int N, Style S>
struct ForwardTuned {
  static constexpr int kPairs = N == 16 ? kSixteenOr8<T, D, S> : N;
  static TunedChoice<void (*)(KernelArgs)> choice() {
    return {forward_tuned_kernel<T, D, kPairs, S>, kPairs, 2 * TunedBatch<T, D, kPairs, S>::kStageBytes};
  }
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
  if (use_tuned<T>(p)) {  // the tuned kernels' warps stride over the batches: the grid may be persistent
    const auto c = pick_tuned<ForwardTuned, T>(p, launch.pairs_per_warp);
    const size_t smem = c.smem_per_warp * launch.warps_per_block;
    if (cudaError_t err = allow_smem(c.kernel, smem); err != cudaSuccess) return err;
    const int64_t warps = (p.total_pairs() + c.pairs - 1) / c.pairs;
    const int64_t grid = persistent_grid(c.kernel, (warps + launch.warps_per_block - 1) / launch.warps_per_block,
                                         launch, smem);
    if (grid > INT_MAX) return cudaErrorInvalidConfiguration;
    return launch_kernel(c.kernel, dim3(static_cast<unsigned>(grid)), block, smem, stream, launch.pdl, args);
  }
  const int64_t warps = (p.total_pairs() + launch.pairs_per_warp - 1) / launch.pairs_per_warp;
  const int64_t blocks = (warps + launch.warps_per_block - 1) / launch.warps_per_block;
  if (blocks > INT_MAX) return cudaErrorInvalidConfiguration;
  return launch_kernel(pick_generic<ForwardGeneric, T>(p), dim3(static_cast<unsigned>(blocks)), block,
                       generic_smem_bytes<T>(p, launch, false), stream, launch.pdl, args,
                       static_cast<int>(launch.pairs_per_warp), generic_lanes_per_head<T>(p, launch.pairs_per_warp));
}

}  // namespace qkrope::cuda
