"""Flax NNX: QKNormRoPE and the Qwen3-style model against their plain-JAX twins (forward and gradients),
checkpoint-style parameter names, and the NNX transforms (jit, grad, vmap to stack layers, scan over them)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close

nnx = pytest.importorskip("flax.nnx")

from jax_qkrope import reference as ref  # noqa: E402
from jax_qkrope.nnx import QKNormRoPE, RopeTable  # noqa: E402
from jax_qkrope.qwen3 import Qwen3Attention, Qwen3Config, TinyLM, next_token_loss  # noqa: E402

D = 64


def qk(seed=0, tokens=(2, 9), dtype=jnp.float32):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(keys[0], (*tokens, 4, D), dtype)
    k = jax.random.normal(keys[1], (*tokens, 2, D), dtype)
    positions = jax.random.randint(keys[2], tokens, 0, 500)
    return q, k, positions


def randomise_scales(layer: QKNormRoPE, seed: int) -> None:
    keys = jax.random.split(jax.random.PRNGKey(seed))
    layer.q_norm[...] = 1 + 0.3 * jax.random.normal(keys[0], layer.q_norm[...].shape)
    layer.k_norm[...] = 1 + 0.3 * jax.random.normal(keys[1], layer.k_norm[...].shape)


LAYERS = [
    dict(),
    dict(max_positions=512, style="gptj"),
    dict(rotary_dim=32, rope_theta=1e6),
    dict(weight_offset=1.0, max_positions=512),
    dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}),
    dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
         rotary_dim=32, max_positions=512),
    dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 256}),
]


@pytest.mark.parametrize("options", LAYERS, ids=[str(sorted(o)) for o in LAYERS])
def test_layer_matches_plain_twin_forward_and_gradients(options):
    layer, twin = QKNormRoPE(D, **options), QKNormRoPE(D, use_fused=False, **options)
    randomise_scales(layer, 1)
    randomise_scales(twin, 1)
    q, k, positions = qk()

    def loss(module, q, k):
        out_q, out_k = module(q, k, positions)
        return jnp.sum(out_q * jnp.sin(out_q)) + jnp.sum(out_k**2)

    for a, e in zip(nnx.jit(lambda m, q, k: m(q, k, positions))(layer, q, k), twin(q, k, positions), strict=True):
        assert_close(a, e, jnp.float32, "forward")
    grads = nnx.jit(nnx.grad(loss, argnums=(0, 1, 2)))(layer, q, k)
    twin_grads = nnx.grad(loss, argnums=(0, 1, 2))(twin, q, k)
    assert_close(grads[0].q_norm[...], twin_grads[0].q_norm[...], jnp.float32, "d q_norm")
    assert_close(grads[0].k_norm[...], twin_grads[0].k_norm[...], jnp.float32, "d k_norm")
    for a, e in zip(grads[1:], twin_grads[1:], strict=True):
        assert_close(a, e, jnp.float32, "dq/dk")


def test_parameter_names_and_rope_state_is_not_a_parameter():
    layer = QKNormRoPE(D, max_positions=64)
    params = {".".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(layer, nnx.Param))}
    assert params == {"q_norm", "k_norm"}
    rope = list(nnx.to_flat_state(nnx.state(layer, RopeTable)))
    assert len(rope) == 1 and rope[0][1][...].shape == (64, D)
    gemma = QKNormRoPE(D, weight_offset=1.0)  # (1 + w) with w = 0: identity scale, as Gemma initialises
    np.testing.assert_array_equal(np.asarray(gemma.q_norm[...]), 0)


def test_layer_matches_reference_call_directly():
    layer = QKNormRoPE(D, max_positions=512, eps=1e-5)
    randomise_scales(layer, 2)
    q, k, positions = qk(seed=3, dtype=jnp.bfloat16)
    out = layer(q, k, positions)
    expected = ref.fused(q.astype(jnp.float32), k.astype(jnp.float32), positions, layer.q_norm[...].astype(
        jnp.bfloat16).astype(jnp.float32), layer.k_norm[...].astype(jnp.bfloat16).astype(jnp.float32),
        cos_sin_cache=layer.rope[...], eps=1e-5)
    for a, e in zip(out, expected, strict=True):
        assert a.dtype == jnp.bfloat16
        assert_close(a, e, jnp.bfloat16, "bf16 layer")


def test_vmap_stacked_layers_under_scan():
    layers_count = 3

    @nnx.vmap(in_axes=0, out_axes=0)
    def make(seed):
        layer = QKNormRoPE(D, max_positions=512)
        randomise_scales(layer, seed)
        return layer

    stacked = make(jnp.arange(layers_count))
    assert stacked.q_norm[...].shape == (layers_count, D)
    q, k, positions = qk(seed=4)

    @nnx.jit
    def run(stacked, q, k):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def step(carry, layer):
            return layer(*carry, positions)

        return step((q, k), stacked)

    out = run(stacked, q, k)
    expected = (q, k)
    for i in range(layers_count):
        expected = ref.fused(*expected, positions, stacked.q_norm[...][i], stacked.k_norm[...][i],
                             cos_sin_cache=stacked.rope[...][i])
    for a, e in zip(out, expected, strict=True):
        assert_close(a, e, jnp.float32, "scan over stacked layers", scale=4)


def test_attention_and_tiny_lm_match_plain_twin():
    with jax.default_matmul_precision("highest"):  # GPUs default to TF32 matmuls, which would dominate the gaps
        attention_and_tiny_lm_match_plain_twin()


def attention_and_tiny_lm_match_plain_twin():
    cfg = Qwen3Config(vocab_size=64, hidden=64, num_layers=2, num_q_heads=4, num_kv_heads=2, head_dim=16,
                      mlp_hidden=96)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 64))
    positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
    attn, attn_twin = Qwen3Attention(cfg, rngs=nnx.Rngs(0)), Qwen3Attention(cfg, use_fused=False, rngs=nnx.Rngs(0))
    assert_close(attn(x, positions), attn_twin(x, positions), jnp.float32, "attention")

    model, twin = TinyLM(cfg, rngs=nnx.Rngs(1)), TinyLM(cfg, use_fused=False, rngs=nnx.Rngs(1))
    tokens = jax.random.randint(jax.random.PRNGKey(2), (3, 12), 0, 64)
    loss, grads = nnx.jit(nnx.value_and_grad(next_token_loss))(model, tokens)
    twin_loss, twin_grads = nnx.value_and_grad(next_token_loss)(twin, tokens)
    assert float(loss) == pytest.approx(float(twin_loss), rel=1e-5)
    flat = dict(nnx.to_flat_state(nnx.state(grads, nnx.Param)))
    twin_flat = dict(nnx.to_flat_state(nnx.state(twin_grads, nnx.Param)))
    assert flat.keys() == twin_flat.keys() and any("q_norm" in map(str, path) for path in flat)
    for path, g in flat.items():
        assert_close(g[...], twin_flat[path][...], jnp.float32, f"grad {path}", scale=10)


def test_untied_head_and_cached_yarn_model_match_twin():
    cfg = Qwen3Config(vocab_size=48, hidden=32, num_layers=1, num_q_heads=2, num_kv_heads=1, head_dim=16,
                      mlp_hidden=64, tie_embeddings=False, max_positions=64,
                      rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 16})
    model, twin = TinyLM(cfg, rngs=nnx.Rngs(4)), TinyLM(cfg, use_fused=False, rngs=nnx.Rngs(4))
    assert model.lm_head is not None
    tokens = jax.random.randint(jax.random.PRNGKey(5), (2, 20), 0, 48)
    with jax.default_matmul_precision("highest"):
        assert_close(model(tokens), twin(tokens), jnp.float32, "untied logits", scale=10)
