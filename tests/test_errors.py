"""Bad input: a ValueError or TypeError at trace time that names the argument and what was expected."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_qkrope as qkr

Q = jnp.ones((4, 8, 64), jnp.bfloat16)
K = jnp.ones((4, 2, 64), jnp.bfloat16)
POS = jnp.arange(4, dtype=jnp.int32)
CACHE = qkr.rope_cos_sin_cache(16, 64)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(k=jnp.ones((4, 2, 2, 64), jnp.bfloat16)), ValueError, "equal rank"),
        (dict(k=jnp.ones((5, 2, 64), jnp.bfloat16)), ValueError, "leading dims and head_dim"),
        (dict(k=jnp.ones((4, 2, 32), jnp.bfloat16)), ValueError, "leading dims and head_dim"),
        (dict(q=jnp.ones((64,), jnp.bfloat16)), ValueError, "heads, head_dim"),
        (dict(positions=jnp.arange(5, dtype=jnp.int32)), ValueError, "positions must have shape"),
        (dict(positions=jnp.zeros(4, jnp.float32)), TypeError, "positions must be int32 or int64"),
        (dict(positions=jnp.zeros(4, jnp.uint8)), TypeError, "positions must be int32 or int64"),
        (dict(q=jnp.ones((4, 8, 63)), k=jnp.ones((4, 2, 63))), ValueError, "head_dim must be even"),
        (dict(q=jnp.ones((4, 8, 514)), k=jnp.ones((4, 2, 514))), ValueError, "head_dim must be even"),
        (dict(q=jnp.ones((4, 8, 64), jnp.int32), k=jnp.ones((4, 2, 64), jnp.int32)), TypeError, "q must be float32"),
        (dict(k=jnp.ones((4, 2, 64), jnp.float32)), TypeError, "k must have q's dtype"),
        (dict(rotary_dim=31), ValueError, "rotary_dim must be even"),
        (dict(rotary_dim=128), ValueError, "rotary_dim must be even and in"),
        (dict(rotary_dim=0), ValueError, "rotary_dim must be even"),
        (dict(rotary_dim=32.0), TypeError, "rotary_dim must be an int"),
        (dict(cos_sin_cache=qkr.rope_cos_sin_cache(16, 32), rotary_dim=64), ValueError, "cos_sin_cache must have"),
        (dict(cos_sin_cache=jnp.ones((16,))), ValueError, "cos_sin_cache must have"),
        (dict(cos_sin_cache=jnp.ones((16, 64), jnp.int32)), TypeError, "cos_sin_cache must be float32"),
        (dict(cos_sin_cache=CACHE, inv_freq=np.ones(32)), ValueError, "either cos_sin_cache or inv_freq"),
        (dict(inv_freq=np.ones(16), rotary_dim=64), ValueError, "inv_freq must have shape"),
        (dict(rope_theta=-1.0), ValueError, "rope_theta"),
        (dict(q_weight=jnp.ones(32)), ValueError, "q_weight must have shape"),
        (dict(k_weight=jnp.ones((1, 64))), ValueError, "k_weight must have shape"),
        (dict(q_weight=jnp.ones(64, jnp.int32)), TypeError, "q_weight must be float32"),
        (dict(style="llama"), ValueError, "style must be 'neox' or 'gptj'"),
        (dict(eps=0.0), ValueError, "eps must be a positive"),
        (dict(eps=float("nan")), ValueError, "eps must be a positive"),
        (dict(weight_offset=float("inf")), ValueError, "weight_offset"),
        (dict(token_heads_per_warp=3), ValueError, "token_heads_per_warp must be None, 1, 2, 4 or 8"),
        (dict(token_heads_per_warp=True), ValueError, "token_heads_per_warp"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_input_raises_at_trace_time(kwargs, error, match):
    args = dict(q=Q, k=K, positions=POS)
    for name in ("q", "k", "positions"):
        if name in kwargs:
            args[name] = kwargs.pop(name)
    with pytest.raises(error, match=match):
        jax.jit(lambda q, k, p: qkr.fused(q, k, p, **kwargs)).trace(args["q"], args["k"], args["positions"])


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((jnp.ones((4, 100)), POS, 4, 1), "last dim must be"),
        ((jnp.ones((4, 6 * 64)), POS, 0, 3), "num_q_heads must be a positive int"),
        ((jnp.ones((4, 6 * 64)), POS, 4, 1.0), "num_kv_heads must be a positive int"),
        ((jnp.ones((4, 6 * 64)), jnp.arange(3), 4, 1), "positions must have shape"),
    ],
)
def test_bad_packed_input(args, match):
    with pytest.raises(ValueError, match=match):
        qkr.fused_qkv(*args)


def test_integer_qkv_is_rejected():
    with pytest.raises(TypeError, match="qkv must be float32"):
        qkr.fused_qkv(jnp.ones((4, 6 * 64), jnp.int8), POS, 4, 1)
