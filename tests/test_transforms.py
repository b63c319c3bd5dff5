"""vmap over any argument and axis, fused_qkv, and in-place updates of donated inputs."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest
from conftest import assert_close, random_heads, random_positions, random_weight

import jax_qkrope as qkr
from jax_qkrope import reference as ref


def inputs(seed=0, token_shape=(4, 6), hq=4, hk=2, d=64, dtype=jnp.float32):
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    return (random_heads(keys[0], token_shape, hq, d, dtype), random_heads(keys[1], token_shape, hk, d, dtype),
            random_positions(keys[2], token_shape, 300), random_weight(keys[3], d))


@pytest.mark.parametrize(
    "in_axes",
    [(0, 0, 0), (1, 1, 1), (0, 0, None), (None, None, 0), (0, None, 0), (2, 2, 1)],
    ids=str,
)
def test_vmap_axes(in_axes):
    q, k, positions, w = inputs(token_shape=(3, 5, 2))
    if in_axes[2] is None:
        positions = positions[0]
    if in_axes[0] is None:
        q = q[0]
    if in_axes[1] is None:
        k = k[0]
    if in_axes == (2, 2, 1):  # batch axis inside the token dims of q/k, and a different one of positions
        q, k = jnp.moveaxis(q, 0, 2), jnp.moveaxis(k, 0, 2)
        positions = jnp.moveaxis(positions, 0, 1)
    f = lambda fn: jax.vmap(lambda q, k, p: fn(q, k, p, w, w, style="gptj"), in_axes=in_axes)  # noqa: E731
    ours, expected = jax.jit(f(qkr.fused))(q, k, positions), f(ref.fused)(q, k, positions)
    for a, e in zip(ours, expected, strict=True):
        assert_close(a, e, jnp.float32, f"vmap {in_axes}")


def test_nested_vmap_and_batched_weights_and_cache():
    q, k, positions, w = inputs(token_shape=(3, 4, 5))
    ws = jnp.stack([w, 2 * w, 0.5 * w])
    caches = jnp.stack([qkr.rope_cos_sin_cache(300, 64, theta=t) for t in (1e4, 5e5, 1e6)])

    def f(fn):
        inner = jax.vmap(lambda q, k, p, w, c: fn(q, k, p, w, None, cos_sin_cache=c), in_axes=(0, 0, 0, None, None))
        return jax.vmap(inner, in_axes=(0, 0, 0, 0, 0))

    ours, expected = jax.jit(f(qkr.fused))(q, k, positions, ws, caches), f(ref.fused)(q, k, positions, ws, caches)
    for a, e in zip(ours, expected, strict=True):
        assert_close(a, e, jnp.float32, "nested vmap with batched weights and cache")


@pytest.mark.parametrize("donate", [False, True])
def test_fused_qkv_leaves_v_bit_identical(donate):
    hq, hk, d = 8, 2, 128
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    qkv = random_heads(keys[0], (3, 5), hq + 2 * hk, d, jnp.bfloat16).reshape(3, 5, -1)
    positions = random_positions(keys[1], (3, 5), 100)
    w = random_weight(keys[2], d, jnp.bfloat16)
    v = jnp.copy(qkv[..., (hq + hk) * d :])
    expected = ref.fused_qkv(qkv, positions, hq, hk, w, w)
    f = jax.jit(lambda x, p: qkr.fused_qkv(x, p, hq, hk, w, w), donate_argnums=(0,) if donate else ())
    ours = f(jnp.copy(qkv) if donate else qkv, positions)
    assert jnp.array_equal(ours[..., (hq + hk) * d :], v)
    assert_close(ours, expected, jnp.bfloat16, "fused_qkv")
    batched = jax.vmap(lambda x, p: qkr.fused_qkv(x, p, hq, hk, w, w))(qkv, positions)
    assert_close(batched, expected, jnp.bfloat16, "vmap fused_qkv")


def aliasing_and_copies(hlo: str) -> tuple[str, int]:
    alias = re.search(r"output_to_operand_aliasing=\{(.*?)\}, api_version", hlo)
    copies = len(re.findall(r"= \S+ copy\(", hlo))
    return (alias.group(1) if alias else ""), copies


def test_donated_inputs_are_updated_in_place():
    q, k, positions, w = inputs()
    f = lambda q, k, p: qkr.fused(q, k, p, w, w)  # noqa: E731
    expected = ref.fused(q, k, positions, w, w)
    donated = jax.jit(f, donate_argnums=(0, 1))
    alias, copies = aliasing_and_copies(donated.lower(q, k, positions).compile().as_text())
    assert "{0}: (0, {})" in alias and "{1}: (1, {})" in alias, alias
    assert copies == 0
    ours = donated(jnp.copy(q), jnp.copy(k), positions)  # in place: an unwritten element keeps its input
    for a, e in zip(ours, expected, strict=True):
        assert_close(a, e, jnp.float32, "in place")
    alias, copies = aliasing_and_copies(jax.jit(f).lower(q, k, positions).compile().as_text())
    assert alias == "" and copies == 0  # not donated: a fresh output, no copy either


def test_packed_donation_is_in_place():
    qkv = random_heads(jax.random.PRNGKey(2), (6,), 4 + 2 * 2, 64, jnp.float32).reshape(6, -1)
    positions = jnp.arange(6, dtype=jnp.int32)
    f = jax.jit(lambda x, p: qkr.fused_qkv(x, p, 4, 2), donate_argnums=(0,))
    alias, copies = aliasing_and_copies(f.lower(qkv, positions).compile().as_text())
    assert "{}: (0, {})" in alias and copies == 0, alias
