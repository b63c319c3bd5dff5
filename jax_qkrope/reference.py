"""The executable spec of the op in plain jax.numpy: the oracle of every test.

For each token t and head h, with x the head's D values in float32:

1. ``n = x * rsqrt(mean(x * x) + eps) * (w + weight_offset)``  (w = 1 and no offset without a weight)
2. the first R = rotary_dim dims of n are rotated by ``pos[t] * inv_freq[i]``, with cos/sin from row
   ``pos[t]`` of ``cos_sin_cache`` (clamped to the table) or computed from ``inv_freq``;
   ``neox`` pairs (i, i + R/2), ``gptj`` pairs (2i, 2i + 1);
3. dims R..D-1 keep the normalized value; the result is rounded once to the input dtype.

XLA fuses this into a few kernels; it is also the "XLA-fused reference" the benchmarks compare with.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jax_qkrope.rope import rope_inv_freq

Array = jax.Array


def cos_sin(
    positions: Array,
    rotary_dim: int,
    cos_sin_cache: Array | None = None,
    inv_freq: Array | None = None,
) -> tuple[Array, Array]:
    """cos and sin ``[..., R/2]`` float32 for each position, from the cache or from ``inv_freq``."""
    half = rotary_dim // 2
    if cos_sin_cache is not None:
        rows = jnp.take(cos_sin_cache, positions, axis=0, mode="clip").astype(jnp.float32)
        return rows[..., :half], rows[..., half:]
    angle = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    return jnp.cos(angle), jnp.sin(angle)


def rotate(n: Array, cos: Array, sin: Array, rotary_dim: int, style: str) -> Array:
    """Rotates the first ``rotary_dim`` dims of ``n`` ([..., D] float32) by the given cos/sin."""
    rot, rest = n[..., :rotary_dim], n[..., rotary_dim:]
    if style == "neox":
        a, b = rot[..., : rotary_dim // 2], rot[..., rotary_dim // 2 :]
        rot = jnp.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
    else:
        a, b = rot[..., 0::2], rot[..., 1::2]
        rot = jnp.stack([a * cos - b * sin, b * cos + a * sin], axis=-1).reshape(rot.shape)
    return jnp.concatenate([rot, rest], axis=-1)


def norm_rope_heads(
    x: Array,
    weight: Array | None,
    cos: Array,
    sin: Array,
    *,
    rotary_dim: int,
    style: str,
    eps: float,
    weight_offset: float,
) -> Array:
    """RMSNorm + RoPE of ``x [..., H, D]``; cos/sin ``[..., R/2]`` broadcast over the heads."""
    xf = x.astype(jnp.float32)
    n = xf * lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    if weight is not None:
        n = n * (weight.astype(jnp.float32) + weight_offset)
    return rotate(n, cos[..., None, :], sin[..., None, :], rotary_dim, style).astype(x.dtype)


def fused(
    q: Array,
    k: Array,
    positions: Array,
    q_weight: Array | None = None,
    k_weight: Array | None = None,
    *,
    cos_sin_cache: Array | None = None,
    rope_theta: float = 10000.0,
    inv_freq: Array | None = None,
    rotary_dim: int | None = None,
    style: str = "neox",
    eps: float = 1e-6,
    weight_offset: float = 0.0,
) -> tuple[Array, Array]:
    """Reference for :func:`jax_qkrope.fused` (same arguments, no launch options)."""
    head_dim = q.shape[-1]
    if rotary_dim is None:
        if cos_sin_cache is not None:
            rotary_dim = cos_sin_cache.shape[-1]
        elif inv_freq is not None:
            rotary_dim = 2 * jnp.shape(inv_freq)[0]
        else:
            rotary_dim = head_dim
    if cos_sin_cache is None and inv_freq is None:
        inv_freq = rope_inv_freq(rotary_dim, rope_theta)
    cos, sin = cos_sin(positions, rotary_dim, cos_sin_cache, inv_freq)
    common = dict(rotary_dim=rotary_dim, style=style, eps=eps, weight_offset=weight_offset)
    return (
        norm_rope_heads(q, q_weight, cos, sin, **common),
        norm_rope_heads(k, k_weight, cos, sin, **common),
    )


def fused_qkv(
    qkv: Array,
    positions: Array,
    num_q_heads: int,
    num_kv_heads: int,
    q_weight: Array | None = None,
    k_weight: Array | None = None,
    **kwargs,
) -> Array:
    """Reference for :func:`jax_qkrope.fused_qkv`: V is passed through untouched."""
    heads = num_q_heads + 2 * num_kv_heads
    head_dim = qkv.shape[-1] // heads
    lead = qkv.shape[:-1]
    x = qkv.reshape(*lead, heads, head_dim)
    q, k, v = jnp.split(x, [num_q_heads, num_q_heads + num_kv_heads], axis=-2)
    q, k = fused(q, k, positions, q_weight, k_weight, **kwargs)
    return jnp.concatenate([q, k, v], axis=-2).reshape(qkv.shape)
