// The FFI signatures of the four targets, shared by the CPU and CUDA handlers so both platforms
// decode exactly the same operands, results and attributes.
#pragma once

#include <utility>

#include "xla/ffi/api/ffi.h"

namespace qkrope::ffi_bindings {

namespace ffi = ::xla::ffi;

// q, k, positions, q_weight, k_weight, table -> q_out, k_out
template <typename Builder>
auto forward(Builder b) {
  return std::move(b).template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .Attrs();
}

// qkv, positions, q_weight, k_weight, table -> qkv_out
template <typename Builder>
auto forward_packed(Builder b) {
  return std::move(b).template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .Attrs();
}

// q, k, dq_out, dk_out, positions, q_weight, k_weight, table -> dq, dk, dq_weight, dk_weight, partials
template <typename Builder>
auto backward(Builder b) {
  return std::move(b).template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .Attrs();
}

// qkv, dqkv_out, positions, q_weight, k_weight, table -> dqkv, dq_weight, dk_weight, partials
template <typename Builder>
auto backward_packed(Builder b) {
  return std::move(b).template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .Attrs();
}

}  // namespace qkrope::ffi_bindings
