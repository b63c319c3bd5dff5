"""Gradients through the custom VJP vs jax.grad of the reference, over the forward matrix; check_grads on
float32; determinism; vmap of grad and grad under jit with donation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DTYPES, ON_GPU, assert_close, random_heads, random_positions, random_weight
from jax.test_util import check_grads

import jax_qkrope as qkr
from jax_qkrope import reference as ref

HEAD_DIMS = (64, 80, 128, 256)
HEADS = ((8, 8), (16, 4), (4, 1))
STYLES = ("neox", "gptj")
GRAD_TOLERANCE = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.bfloat16): 2e-2, jnp.dtype(jnp.float16): 2e-2}


def grads(fn, q, k, wq, wk, positions, cotangents, **kwargs):
    _, vjp = jax.vjp(lambda q, k, wq, wk: fn(q, k, positions, wq, wk, **kwargs), q, k, wq, wk)
    return vjp(cotangents)


@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"hq{h[0]}-hk{h[1]}")
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_gradients_match_reference(dtype, head_dim, heads):
    """Both position dtypes inside one x64 jit; bf16/f16 gradients against the float32 reference's."""
    hq, hk = heads
    rotaries = (head_dim, head_dim // 2, head_dim // 4, 2)
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.PRNGKey(hash((head_dim, hq, hk)) % 2**31), 7)
        q = random_heads(keys[0], (2, 3), hq, head_dim, dtype)
        k = random_heads(keys[1], (2, 3), hk, head_dim, dtype)
        wq, wk = random_weight(keys[2], head_dim), random_weight(keys[3], head_dim, dtype)
        cot = (random_heads(keys[4], (2, 3), hq, head_dim, dtype), random_heads(keys[5], (2, 3), hk, head_dim, dtype))
        pos32 = random_positions(keys[6], (2, 3), 2048, jnp.int32)
        caches = {r: qkr.rope_cos_sin_cache(2048, r) for r in rotaries}
        variants = [(s, r, c, p) for s in STYLES for r in rotaries for c in (False, True) for p in ("int32", "int64")]
        up = lambda x: x.astype(jnp.float32)  # noqa: E731

        @jax.jit
        def run(q, k, wq, wk, cot, pos32, caches):
            results = []
            for style, rotary, use_cache, pos_dtype in variants:
                positions = pos32.astype(pos_dtype)
                kw = dict(style=style, rotary_dim=rotary, cos_sin_cache=caches[rotary] if use_cache else None)
                ours = grads(qkr.fused, q, k, wq, wk, positions, cot, **kw)
                expected = grads(ref.fused, up(q), up(k), up(wq), up(wk), positions, tuple(map(up, cot)), **kw)
                results.append((ours, expected))
            return results

        for variant, (ours, expected) in zip(variants, run(q, k, wq, wk, cot, pos32, caches), strict=True):
            for name, a, e, x in zip(("dq", "dk", "dq_weight", "dk_weight"), ours, expected, (q, k, wq, wk),
                                     strict=True):
                assert a.dtype == x.dtype and a.shape == x.shape, name
                assert_close(a, e, jnp.float32, f"{name} {variant}", scale=GRAD_TOLERANCE[jnp.dtype(dtype)] / 1e-5)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("rotary_dim", [32, 16])
def test_check_grads_float32(style, rotary_dim):
    keys = jax.random.split(jax.random.PRNGKey(11), 5)
    q = random_heads(keys[0], (3,), 2, 32, jnp.float32)
    k = random_heads(keys[1], (3,), 1, 32, jnp.float32)
    wq, wk = random_weight(keys[2], 32), random_weight(keys[3], 32)
    positions = random_positions(keys[4], (3,), 64)

    def f(q, k, wq, wk):
        return qkr.fused(q, k, positions, wq, wk, style=style, rotary_dim=rotary_dim, weight_offset=0.5)

    check_grads(f, (q, k, wq, wk), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


def test_fused_qkv_gradient_passes_v_through():
    keys = jax.random.split(jax.random.PRNGKey(12), 4)
    hq, hk, d = 4, 2, 64
    qkv = random_heads(keys[0], (5,), hq + 2 * hk, d, jnp.float32).reshape(5, -1)
    positions = random_positions(keys[1], (5,), 100)
    w = random_weight(keys[2], d)
    cot = jax.random.normal(keys[3], qkv.shape)
    ours = jax.vjp(lambda x, w: qkr.fused_qkv(x, positions, hq, hk, w, w), qkv, w)[1](cot)
    expected = jax.vjp(lambda x, w: ref.fused_qkv(x, positions, hq, hk, w, w), qkv, w)[1](cot)
    assert_close(ours[0], expected[0], jnp.float32, "dqkv")
    assert_close(ours[1], expected[1], jnp.float32, "dweight")
    assert jnp.array_equal(ours[0][:, (hq + hk) * d :], cot[:, (hq + hk) * d :])


def loss(fn, q, k, wq, wk, positions):
    qo, ko = fn(q, k, positions, wq, wk)
    return jnp.sum(jnp.sin(qo.astype(jnp.float32))) + jnp.sum(jnp.cos(ko.astype(jnp.float32)) * 0.5)


def test_vmap_of_grad_gives_per_example_weight_gradients():
    keys = jax.random.split(jax.random.PRNGKey(13), 5)
    q = random_heads(keys[0], (3, 4), 4, 64, jnp.float32)  # vmapped axis 0: 3 examples of 4 tokens
    k = random_heads(keys[1], (3, 4), 2, 64, jnp.float32)
    wq, wk = random_weight(keys[2], 64), random_weight(keys[3], 64)
    positions = random_positions(keys[4], (3, 4), 50)
    g = jax.grad(loss, argnums=(1, 2, 3, 4))
    in_axes = (None, 0, 0, None, None, 0)
    ours = jax.jit(jax.vmap(lambda *a: g(qkr.fused, *a[1:]), in_axes=in_axes))(None, q, k, wq, wk, positions)
    expected = jax.vmap(lambda *a: g(ref.fused, *a[1:]), in_axes=in_axes)(None, q, k, wq, wk, positions)
    assert ours[2].shape == (3, 64)
    for a, e in zip(ours, expected, strict=True):
        assert_close(a, e, jnp.float32, "vmap(grad)")
    # Nested: vmap over examples of a vmap over a second axis, batched weights in the outer one.
    wqs = jnp.stack([wq, wq * 1.5, wq * 0.5])
    nested = jax.vmap(jax.vmap(g, in_axes=(None, 0, 0, None, None, 0)), in_axes=(None, 0, 0, 0, None, 0))
    ours = nested(qkr.fused, q, k, wqs, wk, positions)
    expected = nested(ref.fused, q, k, wqs, wk, positions)
    for a, e in zip(ours, expected, strict=True):
        assert_close(a, e, jnp.float32, "nested vmap(grad)")


def test_grad_under_jit_with_donation_and_remat():
    keys = jax.random.split(jax.random.PRNGKey(14), 5)
    q = random_heads(keys[0], (8,), 4, 128, jnp.bfloat16)
    k = random_heads(keys[1], (8,), 4, 128, jnp.bfloat16)
    wq, wk = random_weight(keys[2], 128), random_weight(keys[3], 128)
    positions = random_positions(keys[4], (8,), 50)
    expected = jax.grad(loss, argnums=(1, 2, 3, 4))(ref.fused, q, k, wq, wk, positions)
    g = jax.jit(jax.grad(loss, argnums=(1, 2, 3, 4)), static_argnums=0, donate_argnums=(1, 2))
    ours = g(qkr.fused, jnp.copy(q), jnp.copy(k), wq, wk, positions)
    remat = jax.grad(jax.checkpoint(lambda *a: loss(qkr.fused, *a)), argnums=(0, 1, 2, 3))(q, k, wq, wk, positions)
    for a, r, e in zip(ours, remat, expected, strict=True):
        assert_close(a, e, jnp.bfloat16, "jit+donate grad", scale=2)
        assert_close(r, e, jnp.bfloat16, "remat grad", scale=2)


def test_backward_is_deterministic():
    tokens = 4096 if ON_GPU else 64
    keys = jax.random.split(jax.random.PRNGKey(15), 5)
    q = random_heads(keys[0], (tokens,), 32, 128, jnp.bfloat16)
    k = random_heads(keys[1], (tokens,), 8, 128, jnp.bfloat16)
    wq, wk = random_weight(keys[2], 128, jnp.bfloat16), random_weight(keys[3], 128, jnp.bfloat16)
    positions = random_positions(keys[4], (tokens,), 40000)
    g = jax.jit(jax.grad(lambda *a: loss(qkr.fused, *a), argnums=(0, 1, 2, 3)))
    first = g(q, k, wq, wk, positions)
    for _ in range(3):
        again = g(q, k, wq, wk, positions)
        for a, b in zip(first, again, strict=True):
            assert np.array_equal(np.asarray(a.astype(jnp.float32)), np.asarray(b.astype(jnp.float32)))
