"""jax_qkrope: per-head QK RMSNorm + rotary position embedding for JAX in one fused CUDA kernel."""

from jax_qkrope import reference
from jax_qkrope._extension import COMPILED_FFI_API_VERSION, CUDA_ARCHITECTURES, HAS_CUDA_KERNELS
from jax_qkrope.api import fused, fused_qkv
from jax_qkrope.rope import rope_cos_sin_cache, rope_inv_freq
from jax_qkrope.rope_scaling import RopeScaling, scaled_inv_freq

__version__ = "0.1.0"

__all__ = [
    "COMPILED_FFI_API_VERSION",
    "CUDA_ARCHITECTURES",
    "HAS_CUDA_KERNELS",
    "RopeScaling",
    "fused",
    "fused_qkv",
    "reference",
    "rope_cos_sin_cache",
    "rope_inv_freq",
    "scaled_inv_freq",
]
