"""Forward op vs the reference over the issue's matrix: dtypes x styles x rotary_dim x head_dim x heads x
cache/no cache x int32/int64 positions, inside jit, on fresh random inputs with poisoned outputs."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import pytest
from conftest import DTYPES, assert_close, random_heads, random_positions, random_weight

import jax_qkrope as qkr
from jax_qkrope import reference as ref

HEAD_DIMS = (64, 80, 128, 256)
HEADS = ((8, 8), (16, 4), (4, 1))
STYLES = ("neox", "gptj")
MAX_POSITION = 4096


def rotary_dims(head_dim: int) -> tuple[int, ...]:
    return (head_dim, head_dim // 2, head_dim // 4, 2)


def x64(enabled: bool):
    return jax.enable_x64(True) if enabled else contextlib.nullcontext()


@pytest.mark.parametrize("pos_dtype", ["int32", "int64"])
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"hq{h[0]}-hk{h[1]}")
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_forward_matches_reference(dtype, head_dim, heads, pos_dtype):
    hq, hk = heads
    with x64(pos_dtype == "int64"):
        keys = jax.random.split(jax.random.PRNGKey(hash((head_dim, hq, hk, pos_dtype)) % 2**31), 5)
        token_shape = (2, 5)
        q = random_heads(keys[0], token_shape, hq, head_dim, dtype)
        k = random_heads(keys[1], token_shape, hk, head_dim, dtype)
        wq, wk = random_weight(keys[2], head_dim), random_weight(keys[3], head_dim, dtype)
        positions = random_positions(keys[4], token_shape, MAX_POSITION, jnp.dtype(pos_dtype))
        assert positions.dtype == jnp.dtype(pos_dtype)
        caches = {r: qkr.rope_cos_sin_cache(MAX_POSITION, r, theta=1e4) for r in rotary_dims(head_dim)}
        variants = [(s, r, c) for s in STYLES for r in rotary_dims(head_dim) for c in (False, True)]

        @jax.jit
        def run(q, k, positions, caches):
            pairs = []
            for style, rotary, use_cache in variants:
                kwargs = dict(style=style, rotary_dim=rotary, cos_sin_cache=caches[rotary] if use_cache else None)
                ours = qkr.fused(q, k, positions, wq, wk, **kwargs)
                pairs.append((ours, ref.fused(q, k, positions, wq, wk, **kwargs)))
            return pairs

        for (style, rotary, use_cache), (ours, expected) in zip(variants, run(q, k, positions, caches), strict=True):
            what = f"{style} rotary_dim={rotary} cache={use_cache}"
            assert ours[0].dtype == q.dtype and ours[0].shape == q.shape and ours[1].shape == k.shape
            assert_close(ours[0], expected[0], dtype, "q " + what)
            assert_close(ours[1], expected[1], dtype, "k " + what)


@pytest.mark.parametrize("cache_dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("style", STYLES)
def test_cache_dtypes(cache_dtype, style):
    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    q = random_heads(keys[0], (9,), 6, 128, jnp.bfloat16)
    k = random_heads(keys[1], (9,), 2, 128, jnp.bfloat16)
    positions = random_positions(keys[2], (9,), 500)
    cache = qkr.rope_cos_sin_cache(500, 128, dtype=cache_dtype)
    ours = jax.jit(lambda q, k, p, c: qkr.fused(q, k, p, cos_sin_cache=c, style=style))(q, k, positions, cache)
    expected = ref.fused(q, k, positions, cos_sin_cache=cache, style=style)
    for a, e in zip(ours, expected, strict=True):
        assert_close(a, e, jnp.bfloat16, f"cache {jnp.dtype(cache_dtype).name}")


@pytest.mark.parametrize("style", STYLES)
def test_positions_outside_the_cache_are_clamped(style):
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    q = random_heads(keys[0], (6,), 4, 64, jnp.float32)
    k = random_heads(keys[1], (6,), 2, 64, jnp.float32)
    positions = jnp.array([-5, -1, 0, 15, 16, 1000], jnp.int32)
    cache = qkr.rope_cos_sin_cache(16, 64)
    ours = qkr.fused(q, k, positions, cos_sin_cache=cache, style=style)
    clamped = qkr.fused(q, k, jnp.clip(positions, 0, 15), cos_sin_cache=cache, style=style)
    expected = ref.fused(q, k, positions, cos_sin_cache=cache, style=style)
    for a, c, e in zip(ours, clamped, expected, strict=True):
        assert_close(a, e, jnp.float32, "clamped positions")
        assert jnp.array_equal(a, c)


def test_inv_freq_and_theta_paths():
    keys = jax.random.split(jax.random.PRNGKey(4), 3)
    q = random_heads(keys[0], (3, 4), 8, 128, jnp.float32)
    k = random_heads(keys[1], (3, 4), 2, 128, jnp.float32)
    positions = random_positions(keys[2], (3, 4), 100_000)
    inv_freq = qkr.rope_inv_freq(64, theta=5e5) * 0.25  # a scaled variant, half rotary
    ours = jax.jit(lambda q, k, p, f: qkr.fused(q, k, p, inv_freq=f))(q, k, positions, inv_freq)
    expected = ref.fused(q, k, positions, inv_freq=inv_freq)
    for a, e in zip(ours, expected, strict=True):
        assert_close(a, e, jnp.float32, "inv_freq")
    ours = qkr.fused(q, k, positions, rope_theta=1e6, style="gptj")
    expected = ref.fused(q, k, positions, rope_theta=1e6, style="gptj")
    for a, e in zip(ours, expected, strict=True):
        assert_close(a, e, jnp.float32, "rope_theta")


@pytest.mark.parametrize("weight_dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_weight_dtypes_offset_and_missing_weights(weight_dtype):
    keys = jax.random.split(jax.random.PRNGKey(5), 4)
    q = random_heads(keys[0], (7,), 4, 64, jnp.bfloat16)
    k = random_heads(keys[1], (7,), 4, 64, jnp.bfloat16)
    positions = random_positions(keys[2], (7,), 50)
    w = random_weight(keys[3], 64, weight_dtype) - 1.0  # Gemma stores w with the 1 subtracted
    for q_weight, k_weight, offset in ((w, w, 1.0), (w, None, 0.0), (None, w, 0.5), (None, None, 0.0)):
        ours = qkr.fused(q, k, positions, q_weight, k_weight, weight_offset=offset)
        expected = ref.fused(q, k, positions, q_weight, k_weight, weight_offset=offset)
        for a, e in zip(ours, expected, strict=True):
            assert_close(a, e, jnp.bfloat16, f"weights {q_weight is not None}/{k_weight is not None} offset {offset}")


@pytest.mark.parametrize("token_shape", [(), (0,), (1,), (3,), (17,), (2, 0, 3), (2, 3, 4)])
def test_token_shapes(token_shape):
    keys = jax.random.split(jax.random.PRNGKey(6), 3)
    q = random_heads(keys[0], token_shape, 4, 64, jnp.float32)
    k = random_heads(keys[1], token_shape, 1, 64, jnp.float32)
    positions = random_positions(keys[2], token_shape, 100)
    ours = jax.jit(qkr.fused)(q, k, positions)
    expected = ref.fused(q, k, positions)
    for a, e in zip(ours, expected, strict=True):
        assert a.shape == e.shape
        assert_close(a, e, jnp.float32, f"tokens {token_shape}")
