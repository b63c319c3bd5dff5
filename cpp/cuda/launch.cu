#include "cuda/launch.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/device_common.cuh"

namespace qkrope::cuda {

// Defined in forward_<type>.cu / backward_<type>.cu.
template <typename T>
cudaError_t launch_forward_typed(const KernelArgs& args, const Launch& launch, cudaStream_t stream);
template <typename T>
cudaError_t launch_backward_typed(const KernelArgs& args, const BackwardOutputs& out, const Launch& launch,
                                  cudaStream_t stream);
extern template cudaError_t launch_forward_typed<float>(const KernelArgs&, const Launch&, cudaStream_t);
extern template cudaError_t launch_forward_typed<__nv_bfloat16>(const KernelArgs&, const Launch&, cudaStream_t);
extern template cudaError_t launch_forward_typed<__half>(const KernelArgs&, const Launch&, cudaStream_t);
extern template cudaError_t launch_backward_typed<float>(const KernelArgs&, const BackwardOutputs&, const Launch&,
                                                         cudaStream_t);
extern template cudaError_t launch_backward_typed<__nv_bfloat16>(const KernelArgs&, const BackwardOutputs&,
                                                                 const Launch&, cudaStream_t);
extern template cudaError_t launch_backward_typed<__half>(const KernelArgs&, const BackwardOutputs&, const Launch&,
                                                          cudaStream_t);

namespace {

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Fills the flags the kernels branch on uniformly: 16-byte cos/sin runs and weights.
KernelArgs make_args(const Problem& p, const Launch& launch) {
  KernelArgs a;
  a.p = p;
  a.pdl = launch.pdl;
  a.prefetch_pairs = launch.prefetch_pairs;
  const int64_t table_elem = elem_bytes(p.table.dtype);
  const bool half_row_aligned = (static_cast<int64_t>(p.rotary_dim / 2) * table_elem) % 16 == 0;
  a.table_vec = aligned16(p.table.data) && (!p.table.is_cache || half_row_aligned);
  a.weight_vec = (p.weight[0] == nullptr || aligned16(p.weight[0])) && (p.weight[1] == nullptr || aligned16(p.weight[1]));
  return a;
}

}  // namespace

cudaError_t forward(const Problem& p, const Launch& launch, cudaStream_t stream) {
  if (p.total_pairs() == 0) return cudaSuccess;
  const KernelArgs args = make_args(p, launch);
  switch (p.dtype) {
    case ElemType::kF32:
      return launch_forward_typed<float>(args, launch, stream);
    case ElemType::kBF16:
      return launch_forward_typed<__nv_bfloat16>(args, launch, stream);
    case ElemType::kF16:
      return launch_forward_typed<__half>(args, launch, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t backward(const Problem& p, const BackwardOutputs& out, const Launch& launch, cudaStream_t stream) {
  // Launched even with no tokens: the kernels then write zero partials and the weight gradients are 0.
  const KernelArgs args = make_args(p, launch);
  switch (p.dtype) {
    case ElemType::kF32:
      return launch_backward_typed<float>(args, out, launch, stream);
    case ElemType::kBF16:
      return launch_backward_typed<__nv_bfloat16>(args, out, launch, stream);
    case ElemType::kF16:
      return launch_backward_typed<__half>(args, out, launch, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace qkrope::cuda
