// Picks and launches the backward kernels for one storage type; included once per type by
// backward_<type>.cu so the instantiations compile in parallel.
#pragma once

#include <algorithm>

#include "cuda/backward_kernels.cuh"
#include "cuda/dispatch.cuh"

namespace qkrope::cuda {

template <Inputs In, bool Partial>
struct BackwardTunedFamily {
  template <typename T, int D, int N, Style S>
  struct Family {
    static constexpr int kPairs = N == 16 ? 8 : N;  // the backward has no 16-pair variant
    // Shared memory per warp: a [2][D] float weight-gradient reduction row.
    static TunedChoice<void (*)(KernelArgs, BackwardOutputs)> choice() {
      return {backward_tuned_kernel<T, D, kPairs, S, In, Partial>, kPairs, 2 * D * sizeof(float)};
    }
  };
};

template <Inputs In>
using BackwardTuned = BackwardTunedFamily<In, false>;
// The tuned backward for partial-rotary neox (tuned_partial_neox).
template <Inputs In>
using BackwardTunedPartial = BackwardTunedFamily<In, true>;

template <typename T, int C, Style S>
struct BackwardGeneric {
  static constexpr auto kernel = backward_generic_kernel<T, C, S>;
};

// The generic backward: N mapped onto lanes per head and rounds of G pairs as for the forward, neox
// partners in one lane where the rotary half is whole 16-byte chunks.
template <typename T>
cudaError_t launch_backward_generic(const KernelArgs& args, const BackwardOutputs& out, const Launch& launch,
                                    dim3 grid, dim3 block, cudaStream_t stream) {
  const Problem& p = args.p;
  const int lanes = generic_lanes_per_head<T>(p, launch.pairs_per_warp);
  const int groups = kWarp / lanes;
  const int rounds = std::min(std::max(1, launch.pairs_per_warp / groups), kGenericBackwardRounds<T>);
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  const bool paired = paired_layout<T>(p);
  const auto kernel =
      paired ? backward_generic_kernel<T, kVec, Style::kNeox, true> : pick_generic<BackwardGeneric, T>(p);
  const bool neox_rows = p.style == Style::kNeox && !paired;
  const BackwardSmem plan{static_cast<int>(p.head_dim), launch.warps_per_block, neox_rows ? groups : 0, rounds};
  const size_t smem = plan.total_bytes(sizeof(T));
  if (smem > kDefaultSmemBytes) {  // opt in past the default; fails cleanly where the device has less
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  return launch_kernel(kernel, grid, block, smem, stream, launch.pdl, args, out, rounds, lanes);
}

// The grid is one block per partials row: the row count fixes the (deterministic) reduction order.
template <typename T>
cudaError_t launch_backward_typed(const KernelArgs& args, const BackwardOutputs& out, const Launch& launch,
                                  cudaStream_t stream) {
  const Problem& p = args.p;
  if (!heads_aligned<T>(p, 2 * static_cast<int>(sizeof(T)))) return cudaErrorMisalignedAddress;
  const int64_t blocks = out.num_examples * out.blocks_per_example;
  if (blocks > INT_MAX) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(blocks)), block(launch.warps_per_block * kWarp);
  cudaError_t err;
  if (use_tuned<T>(p)) {
    const auto c = pick_tuned_kernel<BackwardTuned, BackwardTunedPartial, T>(args, launch.pairs_per_warp);
    const size_t smem = c.smem_per_warp * launch.warps_per_block;
    err = launch_kernel(c.kernel, grid, block, smem, stream, launch.pdl, args, out);
  } else {
    err = launch_backward_generic<T>(args, out, launch, grid, block, stream);
  }
  if (err != cudaSuccess || (out.dweight[0] == nullptr && out.dweight[1] == nullptr)) return err;
  const int64_t reduce_blocks = (out.num_examples * 2 * p.head_dim + kReduceColumns - 1) / kReduceColumns;
  if (reduce_blocks > INT_MAX) return cudaErrorInvalidConfiguration;
  return launch_kernel(reduce_partials_kernel, dim3(static_cast<unsigned>(reduce_blocks)),
                       dim3(kReduceColumns, kReduceSlices), 0, stream, false, out, static_cast<int>(p.head_dim));
}

}  // namespace qkrope::cuda
