// Host entry points of the CUDA kernels. They pick the kernel instantiation for a validated Problem
// and launch it on the caller's stream; nothing else (no allocation, no sync; the only queries are of
// the SM count and a kernel's occupancy, for persistent grids, and of the L2 size, for the L2 policy, each
// made once per device: device_facts.cuh), so they are safe inside XLA's CUDA-graph capture.
#pragma once

#include <cuda_runtime_api.h>

#include "core/problem.h"

namespace qkrope::cuda {

cudaError_t forward(const Problem& p, const Launch& launch, cudaStream_t stream);
cudaError_t backward(const Problem& p, const BackwardOutputs& out, const Launch& launch, cudaStream_t stream);

}  // namespace qkrope::cuda
