"""RoPE frequency vectors and cos/sin tables.

``rope_inv_freq`` gives the ``[R/2]`` float32 inverse frequencies the cache-free path rotates with;
``rope_cos_sin_cache`` gives the ``[P, R]`` table (first R/2 columns cos, last R/2 sin) the cache path
reads. Both are computed in float64 on the host and rounded once.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jax_qkrope.rope_scaling import RopeScaling, scaled_inv_freq


def rope_inv_freq(rotary_dim: int, theta: float = 10000.0) -> np.ndarray:
    """``theta ** (-2i / R)`` for i < R/2, as float32."""
    return scaled_inv_freq(rotary_dim, theta)[0]


def rope_cos_sin_cache(
    max_positions: int,
    rotary_dim: int,
    theta: float = 10000.0,
    dtype=jnp.float32,
    *,
    inv_freq: np.ndarray | None = None,
    attention_factor: float = 1.0,
    scaling: RopeScaling | dict | None = None,
) -> jnp.ndarray:
    """The ``[max_positions, rotary_dim]`` cos/sin table for positions ``0 .. max_positions - 1``.

    ``scaling`` picks a variant (``RopeScaling`` or a Hugging Face ``rope_scaling`` dict: linear,
    dynamic, llama3, yarn), which sets the frequencies and YaRN's attention factor. Lower level:
    ``inv_freq`` overrides the default frequencies; ``attention_factor`` multiplies cos and sin.
    """
    if max_positions < 1:
        raise ValueError(f"max_positions must be >= 1, got {max_positions}")
    if scaling is not None:
        if inv_freq is not None:
            raise ValueError("give either inv_freq or scaling, not both")
        inv_freq, factor = scaled_inv_freq(rotary_dim, theta, scaling)
        attention_factor *= factor
    freq = rope_inv_freq(rotary_dim, theta) if inv_freq is None else np.asarray(inv_freq, np.float32)
    if freq.shape != (rotary_dim // 2,):
        raise ValueError(f"inv_freq must have shape ({rotary_dim // 2},), got {freq.shape}")
    angle = np.arange(max_positions, dtype=np.float64)[:, None] * freq.astype(np.float64)[None, :]
    table = np.concatenate([np.cos(angle), np.sin(angle)], axis=-1) * attention_factor
    return jnp.asarray(table, dtype=dtype)
