"""Loads the compiled extension, checks its XLA FFI API version, and registers the FFI targets."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jax
import jaxlib

try:
    from jax_qkrope import _qkrope
except ImportError as err:  # pragma: no cover - only on a broken install
    raise ImportError(
        "jax_qkrope's compiled extension (_qkrope) is missing or failed to load; reinstall with "
        "`pip install .` from a checkout (a C++17 compiler and CMake are needed)."
    ) from err

COMPILED_FFI_API_VERSION: tuple[int, int] = tuple(_qkrope.ffi_api_version)


def runtime_ffi_api_version() -> tuple[int, int] | None:
    """The XLA FFI API version of the installed jaxlib, read from the headers it ships."""
    header = Path(jaxlib.__file__).parent / "include" / "xla" / "ffi" / "api" / "c_api.h"
    try:
        text = header.read_text()
    except OSError:
        return None
    major = re.search(r"#define XLA_FFI_API_MAJOR (\d+)", text)
    minor = re.search(r"#define XLA_FFI_API_MINOR (\d+)", text)
    if not (major and minor):
        return None
    return int(major.group(1)), int(minor.group(1))


def check_ffi_version(compiled: tuple[int, int], runtime: tuple[int, int] | None) -> None:
    """Raises ImportError when XLA would reject handlers built with `compiled` headers."""
    if runtime is None:
        return
    if compiled[0] != runtime[0] or compiled[1] > runtime[1]:
        raise ImportError(
            f"jax_qkrope was built against XLA FFI API {compiled[0]}.{compiled[1]}, but the installed "
            f"jaxlib {jaxlib.__version__} provides API {runtime[0]}.{runtime[1]}: XLA would reject its "
            "handlers. Rebuild jax_qkrope against this jaxlib or an older one "
            "(pip install --force-reinstall --no-binary jax_qkrope jax_qkrope), or upgrade jaxlib."
        )


check_ffi_version(COMPILED_FFI_API_VERSION, runtime_ffi_api_version())

HAS_CUDA_KERNELS: bool = bool(_qkrope.has_cuda)
CUDA_ARCHITECTURES: str = str(_qkrope.cuda_architectures)


@functools.cache
def register_targets() -> bool:
    """Registers the CPU targets, and the CUDA ones when built; True when CUDA targets registered."""
    for name, capsule in _qkrope.cpu_targets().items():
        jax.ffi.register_ffi_target(name, capsule, platform="cpu")
    if not HAS_CUDA_KERNELS:
        return False
    try:
        for name, capsule in _qkrope.cuda_targets().items():
            jax.ffi.register_ffi_target(name, capsule, platform="CUDA")
    except Exception:
        return False
    return True
