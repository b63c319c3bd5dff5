// Entry points handed to XLA, one per target and platform (module.cc registers them by name).
#pragma once

#include "xla/ffi/api/c_api.h"

extern "C" {
XLA_FFI_Error* QkropeCpuForward(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* QkropeCpuForwardPacked(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* QkropeCpuBackward(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* QkropeCpuBackwardPacked(XLA_FFI_CallFrame* call_frame);

#ifdef QKROPE_WITH_CUDA
XLA_FFI_Error* QkropeCudaForward(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* QkropeCudaForwardPacked(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* QkropeCudaBackward(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* QkropeCudaBackwardPacked(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* QkropeCudaCopy(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* QkropeCudaCopyInGraph(XLA_FFI_CallFrame* call_frame);
#endif
}
