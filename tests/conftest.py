"""Shared test helpers. The suite runs on JAX's default backend: CPU here and in CI, the GPU on a
CUDA machine; GPU-only tests skip cleanly elsewhere."""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# The reference's XLA compile dominates the suite's time; optimisation doesn't matter for correctness.
# Eight virtual CPU devices for the sharding tests (the GPU, if any, stays the default backend).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0 --xla_force_host_platform_device_count=8"
)

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_qkrope import _qkrope

ON_GPU = jax.default_backend() == "gpu"
requires_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU visible to JAX")

DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
# Max |actual - expected| / max |expected|: float32 math throughout, then one rounding to the dtype.
TOLERANCE = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.bfloat16): 1e-2, jnp.dtype(jnp.float16): 2e-3}


def pytest_configure(config):
    # Every output a handler does not alias to an input starts as NaN: an unwritten element fails.
    _qkrope.set_poison_outputs(True)


def relative_error(actual, expected) -> float:
    a = np.asarray(jnp.asarray(actual, jnp.float32), np.float64)
    e = np.asarray(jnp.asarray(expected, jnp.float32), np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    if a.size == 0:
        return 0.0
    assert np.all(np.isfinite(a)), "output has NaN/inf (an unwritten element?)"
    return float(np.max(np.abs(a - e)) / max(np.max(np.abs(e)), 1e-30))


def assert_close(actual, expected, dtype, what: str = "", scale: float = 1.0) -> None:
    tol = TOLERANCE[jnp.dtype(dtype)] * scale
    err = relative_error(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.3g}"


def random_heads(key, token_shape, heads: int, head_dim: int, dtype):
    """Fresh random [..., heads, head_dim] values with per-head offsets and scales (never zeros)."""
    k1, k2, k3 = jax.random.split(key, 3)
    shape = (*token_shape, heads, head_dim)
    x = jax.random.normal(k1, shape, jnp.float32)
    x = x * jax.random.uniform(k2, (*token_shape, heads, 1), minval=0.5, maxval=3.0)
    x = x + jax.random.normal(k3, (*token_shape, heads, 1)) * 0.5
    return x.astype(dtype)


def random_weight(key, head_dim: int, dtype=jnp.float32):
    return (1.0 + 0.3 * jax.random.normal(key, (head_dim,))).astype(dtype)


def random_positions(key, token_shape, max_position: int, dtype=jnp.int32):
    return jax.random.randint(key, token_shape, 0, max_position).astype(dtype)
