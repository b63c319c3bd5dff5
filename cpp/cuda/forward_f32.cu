// Forward kernel instantiations for float q/k (one unit per type so they compile in parallel).
#include "cuda/forward_dispatch.cuh"

namespace qkrope::cuda {
template cudaError_t launch_forward_typed<float>(const KernelArgs&, const Launch&, cudaStream_t);
}  // namespace qkrope::cuda
