// Turns XLA FFI buffers and attributes into a validated qkrope::Problem.
//
// Every size the kernels rely on is checked here against the buffers themselves, so a bad call from
// any caller returns an ffi::Error instead of reaching a kernel that could touch memory out of bounds.
#pragma once

#include <cstdint>

#include "core/problem.h"
#include "xla/ffi/api/ffi.h"

namespace qkrope::ffi_decode {

namespace ffi = ::xla::ffi;

struct Forward {
  Problem problem;
  Launch launch;
};

struct Backward {
  Problem problem;
  Launch launch;
  BackwardOutputs outputs;
};

// Separate q [..., Hq, D] and k [..., Hk, D].
ffi::Error decode_forward(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer positions, ffi::AnyBuffer q_weight,
                          ffi::AnyBuffer k_weight, ffi::AnyBuffer table, ffi::Result<ffi::AnyBuffer> q_out,
                          ffi::Result<ffi::AnyBuffer> k_out, const ffi::Dictionary& attrs, Forward* out);

// Packed qkv [..., (Hq + 2 Hk) D]; V is copied unless the output aliases the input.
ffi::Error decode_forward_packed(ffi::AnyBuffer qkv, ffi::AnyBuffer positions, ffi::AnyBuffer q_weight,
                                 ffi::AnyBuffer k_weight, ffi::AnyBuffer table, ffi::Result<ffi::AnyBuffer> qkv_out,
                                 const ffi::Dictionary& attrs, Forward* out);

ffi::Error decode_backward(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer dq_out, ffi::AnyBuffer dk_out,
                           ffi::AnyBuffer positions, ffi::AnyBuffer q_weight, ffi::AnyBuffer k_weight,
                           ffi::AnyBuffer table, ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dk,
                           ffi::Result<ffi::AnyBuffer> dq_weight, ffi::Result<ffi::AnyBuffer> dk_weight,
                           ffi::Result<ffi::AnyBuffer> partials, const ffi::Dictionary& attrs, Backward* out);

// Packed backward: the gradient must alias the cotangent, which already holds V's gradient.
ffi::Error decode_backward_packed(ffi::AnyBuffer qkv, ffi::AnyBuffer dqkv_out, ffi::AnyBuffer positions,
                                  ffi::AnyBuffer q_weight, ffi::AnyBuffer k_weight, ffi::AnyBuffer table,
                                  ffi::Result<ffi::AnyBuffer> dqkv, ffi::Result<ffi::AnyBuffer> dq_weight,
                                  ffi::Result<ffi::AnyBuffer> dk_weight, ffi::Result<ffi::AnyBuffer> partials,
                                  const ffi::Dictionary& attrs, Backward* out);

}  // namespace qkrope::ffi_decode
