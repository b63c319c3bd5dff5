#include "cuda/launch.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/device_common.cuh"
#include "cuda/device_facts.cuh"

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

// L2Policy::kKeepOutputs: the share of the output's lines stored evict-last, as many as half the current
// device's L2 holds (the rest of the L2 serves the inputs, the cos/sin rows and the other kernels).
cudaError_t keep_fraction(const Problem& p, float* fraction) {
  int l2_bytes = 0;
  const cudaError_t err = cached_device_attribute(cudaDevAttrL2CacheSize, &l2_bytes);
  const double out_bytes = static_cast<double>(p.total_pairs()) * p.head_dim * elem_bytes(p.dtype);
  const double f = 0.5 * l2_bytes / out_bytes;  // out_bytes > 0: the forward returns early without pairs
  *fraction = static_cast<float>(f < 1.0 / 64 ? 1.0 / 64 : (f > 1.0 ? 1.0 : f));
  return err;
}

// Fills the flags the kernels branch on uniformly: 16-byte cos/sin runs and weights.
KernelArgs make_args(const Problem& p, const Launch& launch) {
  KernelArgs a;
  a.p = p;
  a.heads = FastDivisor::make(static_cast<uint32_t>(p.total_heads()));
  a.total_pairs = p.total_pairs();
  a.row_slots_log2 = row_prefetch_slots_log2(p);
  a.pdl = launch.pdl;
  a.prefetch_pairs = launch.prefetch_pairs;
  a.l2_policy = launch.l2_policy;
  a.l2_keep_fraction = 1.0f;
  const int64_t table_elem = elem_bytes(p.table.dtype);
  const bool half_row_aligned = (static_cast<int64_t>(p.rotary_dim / 2) * table_elem) % 16 == 0;
  a.table_vec = aligned16(p.table.data) && (!p.table.is_cache || half_row_aligned);
  a.weight_vec = (p.weight[0] == nullptr || aligned16(p.weight[0])) && (p.weight[1] == nullptr || aligned16(p.weight[1]));
  return a;
}

}  // namespace

cudaError_t forward(const Problem& p, const Launch& launch, cudaStream_t stream) {
  if (p.total_pairs() == 0) return cudaSuccess;
  KernelArgs args = make_args(p, launch);
  if (launch.l2_policy == static_cast<int32_t>(L2Policy::kKeepOutputs)) {
    const cudaError_t err = keep_fraction(p, &args.l2_keep_fraction);
    if (err != cudaSuccess) return err;
  }
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
