// Forward kernel instantiations for __nv_bfloat16 q/k (one unit per type so they compile in parallel).
#include "cuda/forward_dispatch.cuh"

namespace qkrope::cuda {
template cudaError_t launch_forward_typed<__nv_bfloat16>(const KernelArgs&, const Launch&, cudaStream_t);
}  // namespace qkrope::cuda
