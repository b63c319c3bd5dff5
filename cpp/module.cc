// The Python extension: hands out the FFI handler capsules and reports how it was built.
#include <nanobind/nanobind.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <vector>

#include "core/fast_divisor.h"
#include "ffi/handlers.h"
#include "ffi/poison.h"
#include "xla/ffi/api/c_api.h"

namespace nb = nanobind;

namespace {

template <typename Fn>
nb::capsule handler_capsule(Fn* fn) {
  return nb::capsule(reinterpret_cast<void*>(fn));
}

nb::dict cpu_targets() {
  nb::dict d;
  d["qkrope_fwd"] = handler_capsule(QkropeCpuForward);
  d["qkrope_fwd_packed"] = handler_capsule(QkropeCpuForwardPacked);
  d["qkrope_bwd"] = handler_capsule(QkropeCpuBackward);
  d["qkrope_bwd_packed"] = handler_capsule(QkropeCpuBackwardPacked);
  return d;
}

nb::dict cuda_targets() {
  nb::dict d;
#ifdef QKROPE_WITH_CUDA
  d["qkrope_fwd"] = handler_capsule(QkropeCudaForward);
  d["qkrope_fwd_packed"] = handler_capsule(QkropeCudaForwardPacked);
  d["qkrope_bwd"] = handler_capsule(QkropeCudaBackward);
  d["qkrope_bwd_packed"] = handler_capsule(QkropeCudaBackwardPacked);
  d["qkrope_copy"] = handler_capsule(QkropeCudaCopy);
  d["qkrope_copy_in_graph"] = handler_capsule(QkropeCudaCopyInGraph);
#endif
  return d;
}

}  // namespace

NB_MODULE(_qkrope, m) {
  m.doc() = "jax_qkrope's compiled part: XLA FFI handlers for the fused QK RMSNorm + RoPE op.";
  m.def("cpu_targets", &cpu_targets, "FFI handler capsules for the CPU platform, by target name.");
  m.def("cuda_targets", &cuda_targets, "FFI handler capsules for the CUDA platform (empty without CUDA).");
  m.def(
      "set_poison_outputs", [](bool on) { qkrope::poison_outputs_flag().store(on); },
      "Test hook: NaN-fill every non-aliased output before the kernels run.");
  m.def(
      "_fast_divide",
      [](uint32_t divisor, const std::vector<uint32_t>& dividends) {
        const qkrope::FastDivisor d = qkrope::FastDivisor::make(divisor);
        std::vector<uint32_t> q;
        q.reserve(dividends.size());
        for (uint32_t n : dividends) q.push_back(d.divide(n));
        return q;
      },
      "Test hook: the kernels' pair -> token division (FastDivisor), on the host, of dividends < 2^31.");
  m.attr("ffi_api_version") = nb::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR);
#ifdef QKROPE_WITH_CUDA
  m.attr("has_cuda") = true;
  m.attr("cuda_architectures") = QKROPE_CUDA_ARCHS;
#else
  m.attr("has_cuda") = false;
  m.attr("cuda_architectures") = "";
#endif
}
