"""A Qwen3-style attention layer and a tiny decoder-only LM in Flax NNX, built on ``QKNormRoPE``.

``use_fused=False`` builds the same model (same parameters, same initialisation from the same seed) with
the pure-JAX reference in place of the fused op: the plain-Flax twin the examples and tests compare with.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jax_qkrope.nnx import QKNormRoPE


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
    vocab_size: int = 256
    hidden: int = 128
    num_layers: int = 2
    num_q_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    mlp_hidden: int = 256
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_positions: int | None = None  # None: cache-free RoPE
    eps: float = 1e-6
    tie_embeddings: bool = True
    dtype: str = "float32"  # activations; parameters stay float32


class Qwen3Attention(nnx.Module):
    """QKV projections -> QKNormRoPE -> causal GQA attention -> output projection."""

    def __init__(self, cfg: Qwen3Config, *, use_fused: bool = True, rngs: nnx.Rngs):
        self.cfg = cfg
        d, dtype = cfg.head_dim, jnp.dtype(cfg.dtype)
        linear = dict(use_bias=False, dtype=dtype, rngs=rngs)
        self.q_proj = nnx.Linear(cfg.hidden, cfg.num_q_heads * d, **linear)
        self.k_proj = nnx.Linear(cfg.hidden, cfg.num_kv_heads * d, **linear)
        self.v_proj = nnx.Linear(cfg.hidden, cfg.num_kv_heads * d, **linear)
        self.o_proj = nnx.Linear(cfg.num_q_heads * d, cfg.hidden, **linear)
        self.qk_norm_rope = QKNormRoPE(d, rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling,
                                       max_positions=cfg.max_positions, eps=cfg.eps, use_fused=use_fused)

    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """x [B, S, hidden], positions [B, S] -> [B, S, hidden]."""
        cfg = self.cfg
        heads = lambda y, n: y.reshape(*y.shape[:-1], n, cfg.head_dim)  # noqa: E731
        q = heads(self.q_proj(x), cfg.num_q_heads)
        k = heads(self.k_proj(x), cfg.num_kv_heads)
        v = heads(self.v_proj(x), cfg.num_kv_heads)
        q, k = self.qk_norm_rope(q, k, positions)
        out = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.reshape(*out.shape[:-2], -1))


class SwiGLU(nnx.Module):
    def __init__(self, cfg: Qwen3Config, *, rngs: nnx.Rngs):
        linear = dict(use_bias=False, dtype=jnp.dtype(cfg.dtype), rngs=rngs)
        self.gate = nnx.Linear(cfg.hidden, cfg.mlp_hidden, **linear)
        self.up = nnx.Linear(cfg.hidden, cfg.mlp_hidden, **linear)
        self.down = nnx.Linear(cfg.mlp_hidden, cfg.hidden, **linear)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class Qwen3Block(nnx.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: Qwen3Config, *, use_fused: bool = True, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        self.input_norm = nnx.RMSNorm(cfg.hidden, epsilon=cfg.eps, dtype=dtype, rngs=rngs)
        self.attn = Qwen3Attention(cfg, use_fused=use_fused, rngs=rngs)
        self.post_attention_norm = nnx.RMSNorm(cfg.hidden, epsilon=cfg.eps, dtype=dtype, rngs=rngs)
        self.mlp = SwiGLU(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        x = x + self.attn(self.input_norm(x), positions)
        return x + self.mlp(self.post_attention_norm(x))


class TinyLM(nnx.Module):
    """Embedding, num_layers blocks, final RMSNorm, tied or untied LM head."""

    def __init__(self, cfg: Qwen3Config, *, use_fused: bool = True, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        self.embed = nnx.Embed(cfg.vocab_size, cfg.hidden, dtype=dtype, rngs=rngs)
        blocks = [Qwen3Block(cfg, use_fused=use_fused, rngs=rngs) for _ in range(cfg.num_layers)]
        self.blocks = nnx.List(blocks) if hasattr(nnx, "List") else blocks  # nnx.List: flax >= 0.12
        self.norm = nnx.RMSNorm(cfg.hidden, epsilon=cfg.eps, dtype=dtype, rngs=rngs)
        self.lm_head = None if cfg.tie_embeddings else nnx.Linear(cfg.hidden, cfg.vocab_size, use_bias=False,
                                                                  dtype=dtype, rngs=rngs)

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """tokens [B, S] int -> logits [B, S, vocab] float32."""
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[-1], dtype=jnp.int32), tokens.shape)
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, positions)
        x = self.norm(x)
        logits = self.embed.attend(x) if self.lm_head is None else self.lm_head(x)
        return logits.astype(jnp.float32)


def next_token_loss(model: TinyLM, tokens: jax.Array) -> jax.Array:
    """Mean cross-entropy of predicting tokens[:, 1:] from tokens[:, :-1]."""
    logits = model(tokens[:, :-1])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1))
