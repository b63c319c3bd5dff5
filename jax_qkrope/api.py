"""The public API: argument checks, defaults, and the custom VJP around the primitives."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jax_qkrope import checks, primitive
from jax_qkrope.config import OpConfig
from jax_qkrope.rope import rope_inv_freq

Array = jax.Array


def _absent_weight() -> Array:
    return jnp.zeros((0,), jnp.float32)


def _table(cos_sin_cache, inv_freq, rope_theta, rotary_dim: int) -> Array:
    if cos_sin_cache is not None:
        return jnp.asarray(cos_sin_cache)
    if inv_freq is not None:
        return jnp.asarray(inv_freq, jnp.float32)
    return jnp.asarray(rope_inv_freq(rotary_dim, rope_theta))


def _make_config(head_dim, cos_sin_cache, inv_freq, rope_theta, rotary_dim, style, eps, weight_offset,
                 token_heads_per_warp, packed_heads=None) -> OpConfig:
    checks.check_head_dim(head_dim)
    checks.check_scalars(style, eps, weight_offset, token_heads_per_warp)
    rotary_dim = checks.resolve_rotary_dim(rotary_dim, head_dim, cos_sin_cache, inv_freq)
    checks.check_table(cos_sin_cache, inv_freq, rope_theta, rotary_dim)
    return OpConfig(style, rotary_dim, float(eps), float(weight_offset), token_heads_per_warp, packed_heads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _apply(config: OpConfig, tensors, positions, q_weight, k_weight, table):
    # Not differentiated: outputs may alias donated inputs (in place).
    return primitive.forward(tensors, positions, q_weight, k_weight, table, config=config, allow_alias=True)


def _apply_fwd(config: OpConfig, tensors, positions, q_weight, k_weight, table):
    outputs = primitive.forward(tensors, positions, q_weight, k_weight, table, config=config, allow_alias=False)
    # Residuals are the inputs themselves: the backward recomputes the normalisation in one pass.
    return outputs, (tensors, positions, q_weight, k_weight, table)


def _varying_axes(x) -> frozenset:
    """The shard_map mesh axes over which x varies (empty outside shard_map)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)
    return frozenset(mat.varying) if mat is not None else frozenset(getattr(aval, "vma", ()))


def _weight_cotangent(dweight: Array, weight: Array):
    if not weight.shape[0]:
        return None
    # Inside shard_map a weight replicated over some axes gets the sum of the shards' gradients, as
    # JAX's own autodiff gives it (the transpose of broadcasting an invariant value is a psum).
    extra = _varying_axes(dweight) - _varying_axes(weight)
    if extra:
        dweight = jax.lax.psum(dweight, tuple(sorted(extra)))
    return dweight[0].astype(weight.dtype)


def _apply_bwd(config: OpConfig, residuals, cotangents):
    tensors, positions, q_weight, k_weight, table = residuals
    dtensors, dq_weight, dk_weight = primitive.backward(
        tensors, cotangents, positions, q_weight, k_weight, table, config=config, num_examples=1
    )
    # Positions and the rope table get no gradient.
    return dtensors, None, _weight_cotangent(dq_weight, q_weight), _weight_cotangent(dk_weight, k_weight), None


_apply.defvjp(_apply_fwd, _apply_bwd)


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
    token_heads_per_warp: int | None = None,
) -> tuple[Array, Array]:
    """Per-head RMSNorm then rotary embedding of q and k, in one fused kernel.

    Args:
      q: ``[..., Hq, D]`` bfloat16, float16 or float32.
      k: ``[..., Hk, D]``, same dtype and leading dims as q (GQA/MQA: Hk may differ from Hq).
      positions: ``[...]`` int32 or int64, the leading dims of q. Positions outside the cache are
        clamped to its first or last row (like ``jnp.take(mode="clip")``).
      q_weight, k_weight: ``[D]`` RMSNorm scales, or None for a scale of 1.
      cos_sin_cache: ``[P, R]`` table (cos in the first R/2 columns, sin in the last), float32,
        bfloat16 or float16. Without it cos/sin are computed from ``rope_theta`` or ``inv_freq``.
      rope_theta: base of the default frequencies ``theta ** (-2i / R)``.
      inv_freq: ``[R/2]`` frequencies for scaled RoPE variants (instead of rope_theta).
      rotary_dim: R, the rotated leading dims of each head (even, <= D); defaults to the table's width,
        else D. Dims R..D-1 are normalised only.
      style: ``"neox"`` (rotate-half pairs (i, i + R/2)) or ``"gptj"`` (interleaved pairs (2i, 2i + 1)).
      eps: RMSNorm epsilon (> 0).
      weight_offset: added to the weights (1.0 gives Gemma's ``(1 + w)`` scale).
      token_heads_per_warp: force how many (token, head) pairs one GPU warp processes (1, 2, 4, 8);
        None picks from the shape and the device (calibrated).

    Returns:
      ``(q_out, k_out)`` with the inputs' shapes and dtypes. Under ``jax.jit`` with q/k donated, the
      outputs are written in place. Differentiable in q, k and the weights.
    """
    q, k, positions = jnp.asarray(q), jnp.asarray(k), jnp.asarray(positions)
    checks.check_data_dtype("q", q)
    checks.check_data_dtype("k", k)
    if q.dtype != k.dtype:
        raise TypeError(f"k must have q's dtype {q.dtype}, got {k.dtype}")
    if q.ndim < 2 or k.ndim != q.ndim:
        raise ValueError(f"q and k must be [..., heads, head_dim] of equal rank, got {q.shape} and {k.shape}")
    if q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {q.shape} and k {k.shape} must share leading dims and head_dim")
    head_dim = q.shape[-1]
    config = _make_config(head_dim, cos_sin_cache, inv_freq, rope_theta, rotary_dim, style, eps, weight_offset,
                          token_heads_per_warp)
    checks.check_positions(positions, q.shape[:-2], "q")
    checks.check_weight("q_weight", q_weight, head_dim)
    checks.check_weight("k_weight", k_weight, head_dim)
    table = _table(cos_sin_cache, inv_freq, rope_theta, config.rotary_dim)
    q_w = _absent_weight() if q_weight is None else jnp.asarray(q_weight)
    k_w = _absent_weight() if k_weight is None else jnp.asarray(k_weight)
    return _apply(config, (q, k), positions, q_w, k_w, table)


def fused_qkv(
    qkv: Array,
    positions: Array,
    num_q_heads: int,
    num_kv_heads: int,
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
    token_heads_per_warp: int | None = None,
) -> Array:
    """:func:`fused` on the packed layout of inference engines, ``qkv [..., (Hq + 2 Hkv) * D]``.

    Returns the packed array with q and k normalised and rotated and V bit-identical. With ``qkv``
    donated under ``jax.jit`` it is updated in place.
    """
    qkv, positions = jnp.asarray(qkv), jnp.asarray(positions)
    checks.check_data_dtype("qkv", qkv)
    for name, value in (("num_q_heads", num_q_heads), ("num_kv_heads", num_kv_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    heads = num_q_heads + 2 * num_kv_heads
    if qkv.ndim < 1 or qkv.shape[-1] % heads:
        raise ValueError(
            f"qkv's last dim must be (num_q_heads + 2 * num_kv_heads) * head_dim = {heads} * head_dim, "
            f"got shape {qkv.shape}"
        )
    head_dim = qkv.shape[-1] // heads
    config = _make_config(head_dim, cos_sin_cache, inv_freq, rope_theta, rotary_dim, style, eps, weight_offset,
                          token_heads_per_warp, packed_heads=(num_q_heads, num_kv_heads))
    checks.check_positions(positions, qkv.shape[:-1], "qkv")
    checks.check_weight("q_weight", q_weight, head_dim)
    checks.check_weight("k_weight", k_weight, head_dim)
    table = _table(cos_sin_cache, inv_freq, rope_theta, config.rotary_dim)
    q_w = _absent_weight() if q_weight is None else jnp.asarray(q_weight)
    k_w = _absent_weight() if k_weight is None else jnp.asarray(k_weight)
    return _apply(config, (qkv,), positions, q_w, k_w, table)[0]
