"""RoPE scaling variants against independent float64 formulas (scalar math, written per frequency), and
the table and cache-free paths of the op agreeing for each of them."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close

import jax_qkrope as qkr
from jax_qkrope import reference as ref
from jax_qkrope.rope_scaling import RopeScaling

R, THETA = 128, 500000.0


def default_freq(i: int, rotary_dim: int = R, theta: float = THETA) -> float:
    return 1.0 / theta ** (2 * i / rotary_dim)


def expected_linear(factor: float) -> list[float]:
    return [default_freq(i) / factor for i in range(R // 2)]


def expected_dynamic(factor: float, original: int, seq_len: int) -> list[float]:
    if seq_len <= original:
        return [default_freq(i) for i in range(R // 2)]
    base = THETA * (factor * seq_len / original - (factor - 1)) ** (R / (R - 2))
    return [default_freq(i, theta=base) for i in range(R // 2)]


def expected_llama3(factor: float, low: float, high: float, original: int) -> list[float]:
    out = []
    for i in range(R // 2):
        f = default_freq(i)
        rotations = original * f / (2 * math.pi)  # turns a frequency makes over the original context
        if rotations < low:
            out.append(f / factor)
        elif rotations > high:
            out.append(f)
        else:
            t = (rotations - low) / (high - low)
            out.append(f * (t + (1 - t) / factor))
    return out


def expected_yarn(factor: float, original: int, fast: float = 32.0, slow: float = 1.0) -> tuple[list[float], float]:
    def dim_of(rotations):
        return R * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(THETA))

    lo, hi = max(math.floor(dim_of(fast)), 0), min(math.ceil(dim_of(slow)), R - 1)
    out = []
    for i in range(R // 2):
        ramp = min(max((i - lo) / (hi - lo), 0.0), 1.0)  # 0: keep the frequency, 1: divide it by factor
        out.append(default_freq(i) * ((1 - ramp) + ramp / factor))
    return out, 1.0 + 0.1 * math.log(factor)


VARIANTS = [
    ("default", None, [default_freq(i) for i in range(R // 2)], 1.0),
    ("linear", {"rope_type": "linear", "factor": 4.0}, expected_linear(4.0), 1.0),
    ("dynamic short", {"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 4096, "seq_len": 2048},
     expected_dynamic(2.0, 4096, 2048), 1.0),
    ("dynamic long", {"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 4096, "seq_len": 16384},
     expected_dynamic(2.0, 4096, 16384), 1.0),
    ("llama3", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}, expected_llama3(8.0, 1.0, 4.0, 8192), 1.0),
    ("yarn", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
     *expected_yarn(4.0, 32768)),
]


@pytest.mark.parametrize(("name", "config", "freqs", "factor"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_frequencies_match_float64_formula(name, config, freqs, factor):
    inv_freq, attention_factor = qkr.scaled_inv_freq(R, THETA, config)
    assert inv_freq.dtype == np.float32 and inv_freq.shape == (R // 2,)
    np.testing.assert_allclose(inv_freq, np.array(freqs), rtol=2e-7, atol=0)
    assert attention_factor == pytest.approx(factor, rel=1e-12)


@pytest.mark.parametrize(("name", "config", "freqs", "factor"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_table_matches_float64_formula(name, config, freqs, factor):
    table = np.asarray(qkr.rope_cos_sin_cache(3000, R, THETA, scaling=config))
    positions = np.arange(3000, dtype=np.float64)[:, None]
    # The table rotates by the float32 frequencies (like the cache-free path), in float64 angles.
    angle = positions * np.array(freqs, np.float32).astype(np.float64)[None, :]
    np.testing.assert_allclose(table[:, : R // 2], factor * np.cos(angle), atol=2e-6 * factor)
    np.testing.assert_allclose(table[:, R // 2 :], factor * np.sin(angle), atol=2e-6 * factor)


@pytest.mark.parametrize(("name", "config", "freqs", "factor"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_op_with_table_and_cache_free_agree(name, config, freqs, factor):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q = jax.random.normal(keys[0], (5, 4, R))
    k = jax.random.normal(keys[1], (5, 2, R))
    positions = jax.random.randint(keys[2], (5,), 0, 3000)
    inv_freq, attention_factor = qkr.scaled_inv_freq(R, THETA, config)
    table = qkr.rope_cos_sin_cache(3000, R, THETA, scaling=config)
    with_table = qkr.fused(q, k, positions, cos_sin_cache=table)
    # Cache-free with full rotary: the attention factor scales whole heads, i.e. the norm weight.
    w = jnp.full((R,), attention_factor, jnp.float32)
    cache_free = qkr.fused(q, k, positions, w, w, inv_freq=inv_freq)
    expected = ref.fused(q, k, positions, w, w, inv_freq=jnp.asarray(freqs, jnp.float32))
    for a, b, e in zip(with_table, cache_free, expected, strict=True):
        assert_close(a, e, jnp.float32, f"{name} table", scale=20)  # the table's angles come from float64
        assert_close(b, e, jnp.float32, f"{name} cache-free")


def test_from_config_reads_hugging_face_dicts():
    s = RopeScaling.from_config({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768,
                                 "unknown_key": 1})
    assert (s.kind, s.factor, s.original_max_position_embeddings) == ("yarn", 4.0, 32768)
    assert RopeScaling.from_config(None).kind == "default"
    with pytest.raises(ValueError, match="rope scaling kind"):
        RopeScaling.from_config({"rope_type": "longrope2"})
    with pytest.raises(ValueError, match="inv_freq or scaling"):
        qkr.rope_cos_sin_cache(8, 8, inv_freq=np.ones(4), scaling={"rope_type": "linear", "factor": 2.0})


def test_yarn_mscale_pair_and_explicit_attention_factor():
    _, factor = qkr.scaled_inv_freq(64, 10000.0, {"rope_type": "yarn", "factor": 40.0, "mscale": 1.0,
                                                   "mscale_all_dim": 0.707})
    expected = (0.1 * 1.0 * math.log(40.0) + 1) / (0.1 * 0.707 * math.log(40.0) + 1)
    assert factor == pytest.approx(expected, rel=1e-12)
    _, factor = qkr.scaled_inv_freq(64, 10000.0, {"rope_type": "yarn", "factor": 4.0, "attention_factor": 1.25})
    assert factor == 1.25
