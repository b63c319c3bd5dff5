"""Argument checks of the public API: a clear error at trace time, naming the argument."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from jax_qkrope.config import MAX_HEAD_DIM, PAIRS_PER_WARP, STYLES

DATA_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
POSITION_DTYPES = (jnp.dtype(jnp.int32), jnp.dtype(jnp.int64))


def dtype_name(dtype) -> str:
    return jnp.dtype(dtype).name


def check_data_dtype(name: str, x) -> None:
    if jnp.dtype(x.dtype) not in DATA_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {dtype_name(x.dtype)}")


def check_positions(positions, token_shape: Sequence[int], shape_source: str) -> None:
    if jnp.dtype(positions.dtype) not in POSITION_DTYPES:
        raise TypeError(f"positions must be int32 or int64, got {dtype_name(positions.dtype)}")
    if tuple(positions.shape) != tuple(token_shape):
        raise ValueError(
            f"positions must have shape {tuple(token_shape)} (the leading dims of {shape_source}), "
            f"got {tuple(positions.shape)}"
        )


def check_head_dim(head_dim: int) -> None:
    if head_dim < 2 or head_dim % 2 or head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be even and in [2, {MAX_HEAD_DIM}], got {head_dim}")


def check_weight(name: str, weight, head_dim: int) -> None:
    if weight is None:
        return
    if tuple(weight.shape) != (head_dim,):
        raise ValueError(f"{name} must have shape ({head_dim},) (head_dim), got {tuple(weight.shape)}")
    if jnp.dtype(weight.dtype) not in DATA_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {dtype_name(weight.dtype)}")


def resolve_rotary_dim(rotary_dim, head_dim: int, cos_sin_cache, inv_freq) -> int:
    """rotary_dim, defaulting to the table's width (cache or inv_freq) or head_dim."""
    if rotary_dim is None:
        if cos_sin_cache is not None and np.ndim(cos_sin_cache) == 2:
            rotary_dim = cos_sin_cache.shape[1]
        elif inv_freq is not None and np.ndim(inv_freq) == 1:
            rotary_dim = 2 * np.shape(inv_freq)[0]
        else:
            rotary_dim = head_dim
    if not isinstance(rotary_dim, int | np.integer) or isinstance(rotary_dim, bool):
        raise TypeError(f"rotary_dim must be an int, got {type(rotary_dim).__name__}")
    rotary_dim = int(rotary_dim)
    if rotary_dim < 2 or rotary_dim % 2 or rotary_dim > head_dim:
        raise ValueError(f"rotary_dim must be even and in [2, head_dim={head_dim}], got {rotary_dim}")
    return rotary_dim


def check_table(cos_sin_cache, inv_freq, rope_theta, rotary_dim: int) -> None:
    if cos_sin_cache is not None and inv_freq is not None:
        raise ValueError("pass either cos_sin_cache or inv_freq, not both")
    if cos_sin_cache is not None:
        if np.ndim(cos_sin_cache) != 2 or cos_sin_cache.shape[1] != rotary_dim or cos_sin_cache.shape[0] < 1:
            raise ValueError(
                f"cos_sin_cache must have shape [max_positions >= 1, rotary_dim={rotary_dim}], "
                f"got {tuple(np.shape(cos_sin_cache))}"
            )
        if jnp.dtype(cos_sin_cache.dtype) not in DATA_DTYPES:
            raise TypeError(
                f"cos_sin_cache must be float32, bfloat16 or float16, got {dtype_name(cos_sin_cache.dtype)}"
            )
    elif inv_freq is not None:
        if tuple(np.shape(inv_freq)) != (rotary_dim // 2,):
            raise ValueError(
                f"inv_freq must have shape ({rotary_dim // 2},) (rotary_dim / 2), got {tuple(np.shape(inv_freq))}"
            )
        if not jnp.issubdtype(jnp.result_type(inv_freq), jnp.floating):
            raise TypeError("inv_freq must be a floating-point array")
    elif not (isinstance(rope_theta, int | float | np.floating) and math.isfinite(rope_theta) and rope_theta > 0):
        raise ValueError(f"rope_theta must be a positive finite number, got {rope_theta!r}")


def check_scalars(style, eps, weight_offset, token_heads_per_warp) -> None:
    if style not in STYLES:
        raise ValueError(f"style must be 'neox' or 'gptj', got {style!r}")
    if not isinstance(eps, int | float | np.floating) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    if not isinstance(weight_offset, int | float | np.floating) or not math.isfinite(weight_offset):
        raise ValueError(f"weight_offset must be a finite number, got {weight_offset!r}")
    if token_heads_per_warp is not None and (
        isinstance(token_heads_per_warp, bool) or token_heads_per_warp not in PAIRS_PER_WARP
    ):
        raise ValueError(f"token_heads_per_warp must be None, 1, 2, 4 or 8, got {token_heads_per_warp!r}")
