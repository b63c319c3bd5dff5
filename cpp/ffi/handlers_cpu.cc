// CPU FFI handlers: decode, then run the plain loops of cpu/qkrope_cpu.cc.
#include <cstring>

#include "cpu/qkrope_cpu.h"
#include "ffi/bindings.h"
#include "ffi/decode.h"
#include "ffi/handlers.h"
#include "ffi/poison.h"

namespace qkrope {
namespace {

namespace ffi = ::xla::ffi;
using ffi::AnyBuffer;
using Out = ffi::Result<ffi::AnyBuffer>;

// Test hook (ffi/poison.h): NaN-fill the outputs that do not alias `input`.
void poison(std::initializer_list<ffi::AnyBuffer> outputs, const void* input = nullptr) {
  if (!poison_outputs()) return;
  for (const ffi::AnyBuffer& b : outputs) {
    if (b.untyped_data() != input) std::memset(b.untyped_data(), 0xff, b.size_bytes());
  }
}

ffi::Error forward(AnyBuffer q, AnyBuffer k, AnyBuffer positions, AnyBuffer q_weight, AnyBuffer k_weight,
                   AnyBuffer table, Out q_out, Out k_out, ffi::Dictionary attrs) {
  ffi_decode::Forward f;
  if (auto e = ffi_decode::decode_forward(q, k, positions, q_weight, k_weight, table, q_out, k_out, attrs, &f);
      e.failure()) {
    return e;
  }
  poison({*q_out}, q.untyped_data());
  poison({*k_out}, k.untyped_data());
  cpu::forward(f.problem);
  return ffi::Error::Success();
}

ffi::Error forward_packed(AnyBuffer qkv, AnyBuffer positions, AnyBuffer q_weight, AnyBuffer k_weight,
                          AnyBuffer table, Out qkv_out, ffi::Dictionary attrs) {
  ffi_decode::Forward f;
  if (auto e = ffi_decode::decode_forward_packed(qkv, positions, q_weight, k_weight, table, qkv_out, attrs, &f);
      e.failure()) {
    return e;
  }
  poison({*qkv_out}, qkv.untyped_data());
  cpu::forward(f.problem);
  return ffi::Error::Success();
}

ffi::Error backward(AnyBuffer q, AnyBuffer k, AnyBuffer dq_out, AnyBuffer dk_out, AnyBuffer positions,
                    AnyBuffer q_weight, AnyBuffer k_weight, AnyBuffer table, Out dq, Out dk, Out dq_weight,
                    Out dk_weight, Out partials, ffi::Dictionary attrs) {
  ffi_decode::Backward b;
  if (auto e = ffi_decode::decode_backward(q, k, dq_out, dk_out, positions, q_weight, k_weight, table, dq, dk,
                                           dq_weight, dk_weight, partials, attrs, &b);
      e.failure()) {
    return e;
  }
  poison({*dq, *dk, *dq_weight, *dk_weight, *partials}, dq_out.untyped_data());
  cpu::backward(b.problem, b.outputs);
  return ffi::Error::Success();
}

ffi::Error backward_packed(AnyBuffer qkv, AnyBuffer dqkv_out, AnyBuffer positions, AnyBuffer q_weight,
                           AnyBuffer k_weight, AnyBuffer table, Out dqkv, Out dq_weight, Out dk_weight, Out partials,
                           ffi::Dictionary attrs) {
  ffi_decode::Backward b;
  if (auto e = ffi_decode::decode_backward_packed(qkv, dqkv_out, positions, q_weight, k_weight, table, dqkv,
                                                  dq_weight, dk_weight, partials, attrs, &b);
      e.failure()) {
    return e;
  }
  poison({*dq_weight, *dk_weight, *partials});
  cpu::backward(b.problem, b.outputs);
  return ffi::Error::Success();
}

}  // namespace
}  // namespace qkrope

XLA_FFI_DEFINE_HANDLER_SYMBOL(QkropeCpuForward, qkrope::forward,
                              qkrope::ffi_bindings::forward(xla::ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(QkropeCpuForwardPacked, qkrope::forward_packed,
                              qkrope::ffi_bindings::forward_packed(xla::ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(QkropeCpuBackward, qkrope::backward,
                              qkrope::ffi_bindings::backward(xla::ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(QkropeCpuBackwardPacked, qkrope::backward_packed,
                              qkrope::ffi_bindings::backward_packed(xla::ffi::Ffi::Bind()));
