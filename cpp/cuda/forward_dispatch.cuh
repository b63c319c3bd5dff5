// Picks and launches the forward kernel for one storage type; included once per type by forward_<type>.cu
// so the instantiations compile in parallel.
#pragma once

#include "cuda/dispatch.cuh"
#include "cuda/forward_kernels.cuh"
#include "cuda/forward_stream.cuh"
#include "cuda/occupancy.h"

namespace qkrope::cuda {

template <typename T, int D, int N, Style S>
struct ForwardTuned {
  static constexpr auto kernel = forward_tuned_kernel<T, D, N, S>;
};

// The streaming kernel of a head_dim and style, with the pairs one step of a warp covers.
struct StreamKernel {
  void (*kernel)(const KernelArgs);
  int pairs_per_step;
};

template <typename T, Style S, int D>
StreamKernel stream_kernel() {
  return {forward_stream_kernel<T, D, S>, StreamLayout<T, D, S>::Lay::G};
}

template <typename T, Style S>
StreamKernel stream_kernel_for(int head_dim) {
  switch (head_dim) {
    case 64:
      return stream_kernel<T, S, 64>();
    case 128:
      return stream_kernel<T, S, 128>();
    default:
      return stream_kernel<T, S, 256>();
  }
}

// The persistent streaming kernel: as many blocks as stay resident on `persistent_sms` multiprocessors,
// or fewer when the problem is smaller.
template <typename T>
cudaError_t launch_forward_stream(const KernelArgs& args, const Launch& launch, cudaStream_t stream) {
  const Problem& p = args.p;
  const StreamKernel k = p.style == Style::kNeox ? stream_kernel_for<T, Style::kNeox>(p.head_dim)
                                                 : stream_kernel_for<T, Style::kGptj>(p.head_dim);
  const int threads = launch.warps_per_block * kWarp;
  int per_sm = 0;
  if (cudaError_t err = resident_blocks_per_sm(k.kernel, threads, 0, &per_sm); err != cudaSuccess) return err;
  const int64_t steps = (p.total_pairs() + k.pairs_per_step - 1) / k.pairs_per_step;
  const int64_t needed = (steps + launch.warps_per_block - 1) / launch.warps_per_block;
  const int64_t resident = static_cast<int64_t>(per_sm > 0 ? per_sm : 1) * launch.persistent_sms;
  const int64_t blocks = needed < resident ? needed : resident;
  return launch_kernel(k.kernel, dim3(static_cast<unsigned>(blocks)), dim3(threads), 0, stream, launch.pdl, args);
}

template <typename T, int C, Style S>
struct ForwardGeneric {
  static constexpr auto kernel = forward_generic_kernel<T, C, S>;
};

template <typename T>
cudaError_t launch_forward_typed(const KernelArgs& args, const Launch& launch, cudaStream_t stream) {
  const Problem& p = args.p;
  if (!heads_aligned<T>(p, 2 * static_cast<int>(sizeof(T)))) return cudaErrorMisalignedAddress;
  const int64_t warps = (p.total_pairs() + launch.pairs_per_warp - 1) / launch.pairs_per_warp;
  const int64_t blocks = (warps + launch.warps_per_block - 1) / launch.warps_per_block;
  if (blocks > INT_MAX) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(blocks)), block(launch.warps_per_block * kWarp);
  if (use_tuned<T>(p) && launch.persistent_sms > 0) return launch_forward_stream<T>(args, launch, stream);
  if (use_tuned<T>(p)) {
    return launch_kernel(pick_tuned<ForwardTuned, T>(p, launch.pairs_per_warp), grid, block, 0, stream, launch.pdl,
                         args);
  }
  return launch_kernel(pick_generic<ForwardGeneric, T>(p), grid, block, generic_smem_bytes<T>(p, launch, false), stream,
                       launch.pdl, args, static_cast<int>(launch.pairs_per_warp),
                       generic_lanes_per_head<T>(p, launch.pairs_per_warp));
}

}  // namespace qkrope::cuda
