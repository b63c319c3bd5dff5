// CUDA FFI handlers: decode, then launch on XLA's stream. Marked command-buffer compatible: they only
// launch kernels on the given stream (no allocation, sync, stream query or per-call device query).
#include <cuda_runtime_api.h>

#include <string>

#include "cuda/launch.h"
#include "ffi/bindings.h"
#include "ffi/decode.h"
#include "ffi/handlers.h"
#include "ffi/poison.h"

namespace qkrope {
namespace {

namespace ffi = ::xla::ffi;
using ffi::AnyBuffer;
using Out = ffi::Result<ffi::AnyBuffer>;
using Stream = cudaStream_t;

ffi::Error cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return ffi::Error::Success();
  return ffi::Error::Internal(std::string("qkrope: ") + what + " failed: " + cudaGetErrorName(err) + ": " +
                              cudaGetErrorString(err));
}

// Test hook (ffi/poison.h): NaN-fill, on the stream, the outputs that do not alias `input`.
cudaError_t poison(cudaStream_t stream, std::initializer_list<ffi::AnyBuffer> outputs, const void* input = nullptr) {
  if (!poison_outputs()) return cudaSuccess;
  for (const ffi::AnyBuffer& b : outputs) {
    if (b.untyped_data() == input || b.size_bytes() == 0) continue;
    if (cudaError_t err = cudaMemsetAsync(b.untyped_data(), 0xff, b.size_bytes(), stream); err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

ffi::Error forward(Stream stream, AnyBuffer q, AnyBuffer k, AnyBuffer positions, AnyBuffer q_weight,
                   AnyBuffer k_weight, AnyBuffer table, Out q_out, Out k_out, ffi::Dictionary attrs) {
  ffi_decode::Forward f;
  if (auto e = ffi_decode::decode_forward(q, k, positions, q_weight, k_weight, table, q_out, k_out, attrs, &f);
      e.failure()) {
    return e;
  }
  if (auto e = cuda_status(poison(stream, {*q_out}, q.untyped_data()), "poison"); e.failure()) return e;
  if (auto e = cuda_status(poison(stream, {*k_out}, k.untyped_data()), "poison"); e.failure()) return e;
  return cuda_status(cuda::forward(f.problem, f.launch, stream), "forward kernel launch");
}

ffi::Error forward_packed(Stream stream, AnyBuffer qkv, AnyBuffer positions, AnyBuffer q_weight, AnyBuffer k_weight,
                          AnyBuffer table, Out qkv_out, ffi::Dictionary attrs) {
  ffi_decode::Forward f;
  if (auto e = ffi_decode::decode_forward_packed(qkv, positions, q_weight, k_weight, table, qkv_out, attrs, &f);
      e.failure()) {
    return e;
  }
  if (auto e = cuda_status(poison(stream, {*qkv_out}, qkv.untyped_data()), "poison"); e.failure()) return e;
  return cuda_status(cuda::forward(f.problem, f.launch, stream), "forward kernel launch");
}

ffi::Error backward(Stream stream, AnyBuffer q, AnyBuffer k, AnyBuffer dq_out, AnyBuffer dk_out, AnyBuffer positions,
                    AnyBuffer q_weight, AnyBuffer k_weight, AnyBuffer table, Out dq, Out dk, Out dq_weight,
                    Out dk_weight, Out partials, ffi::Dictionary attrs) {
  ffi_decode::Backward b;
  if (auto e = ffi_decode::decode_backward(q, k, dq_out, dk_out, positions, q_weight, k_weight, table, dq, dk,
                                           dq_weight, dk_weight, partials, attrs, &b);
      e.failure()) {
    return e;
  }
  if (auto e = cuda_status(poison(stream, {*dq, *dk, *dq_weight, *dk_weight, *partials}, dq_out.untyped_data()),
                           "poison");
      e.failure()) {
    return e;
  }
  return cuda_status(cuda::backward(b.problem, b.outputs, b.launch, stream), "backward kernel launch");
}

ffi::Error backward_packed(Stream stream, AnyBuffer qkv, AnyBuffer dqkv_out, AnyBuffer positions, AnyBuffer q_weight,
                           AnyBuffer k_weight, AnyBuffer table, Out dqkv, Out dq_weight, Out dk_weight, Out partials,
                           ffi::Dictionary attrs) {
  ffi_decode::Backward b;
  if (auto e = ffi_decode::decode_backward_packed(qkv, dqkv_out, positions, q_weight, k_weight, table, dqkv,
                                                  dq_weight, dk_weight, partials, attrs, &b);
      e.failure()) {
    return e;
  }
  if (auto e = cuda_status(poison(stream, {*dq_weight, *dk_weight, *partials}), "poison"); e.failure()) return e;
  return cuda_status(cuda::backward(b.problem, b.outputs, b.launch, stream), "backward kernel launch");
}

// A plain device-to-device copy for the benchmarks (two registrations below).
ffi::Error copy(Stream stream, AnyBuffer src, Out dst) {
  if (src.size_bytes() != dst->size_bytes()) return ffi::Error::InvalidArgument("qkrope: copy sizes differ");
  return cuda_status(
      cudaMemcpyAsync(dst->untyped_data(), src.untyped_data(), src.size_bytes(), cudaMemcpyDeviceToDevice, stream),
      "device copy");
}

auto cuda_bind() { return ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>(); }

}  // namespace
}  // namespace qkrope

XLA_FFI_DEFINE_HANDLER_SYMBOL(QkropeCudaForward, qkrope::forward, qkrope::ffi_bindings::forward(qkrope::cuda_bind()),
                              {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(QkropeCudaForwardPacked, qkrope::forward_packed,
                              qkrope::ffi_bindings::forward_packed(qkrope::cuda_bind()),
                              {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(QkropeCudaBackward, qkrope::backward,
                              qkrope::ffi_bindings::backward(qkrope::cuda_bind()),
                              {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(QkropeCudaBackwardPacked, qkrope::backward_packed,
                              qkrope::ffi_bindings::backward_packed(qkrope::cuda_bind()),
                              {xla::ffi::Traits::kCmdBufferCompatible});
// Outside command buffers: the bandwidth the benchmark reports against. Captured in a CUDA graph the same
// copy becomes a memcpy node that ran at 2291 instead of 2982 GB/s on the H100.
XLA_FFI_DEFINE_HANDLER_SYMBOL(QkropeCudaCopy, qkrope::copy,
                              qkrope::cuda_bind().Arg<xla::ffi::AnyBuffer>().Ret<xla::ffi::AnyBuffer>());
// Inside command buffers, like the op's handlers: at 4 bytes, the per-call floor of a custom call.
XLA_FFI_DEFINE_HANDLER_SYMBOL(QkropeCudaCopyInGraph, qkrope::copy,
                              qkrope::cuda_bind().Arg<xla::ffi::AnyBuffer>().Ret<xla::ffi::AnyBuffer>(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
