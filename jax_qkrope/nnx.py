"""Flax NNX layer: ``QKNormRoPE`` holds the q/k RMSNorm scales and the RoPE configuration and runs the
fused op. Needs flax (``pip install jax_qkrope[flax]``).

The scales are ``nnx.Param``s named ``q_norm`` and ``k_norm``: the ``self_attn.q_norm.weight`` /
``self_attn.k_norm.weight`` tensors of Qwen3-style checkpoints load into them unchanged (Gemma-style
checkpoints store ``w`` of a ``(1 + w)`` scale: use ``weight_offset=1.0``). The RoPE frequencies or table
are a ``RopeTable`` variable: state, but not a parameter, so ``nnx.grad`` and optimisers skip it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_qkrope import reference
from jax_qkrope.api import fused
from jax_qkrope.rope import rope_cos_sin_cache
from jax_qkrope.rope_scaling import RopeScaling, scaled_inv_freq


class RopeTable(nnx.Variable):
    """Precomputed RoPE frequencies ([R/2]) or cos/sin table ([P, R]): constant state, not trained."""


class QKNormRoPE(nnx.Module):
    """Per-head RMSNorm of q and k, then rotary position embedding, in one fused kernel.

    Args:
      head_dim: D, the last dim of q and k.
      rotary_dim: rotated leading part of each head (default: all of it).
      rope_theta: RoPE base.
      rope_scaling: a ``RopeScaling`` or Hugging Face ``rope_scaling`` dict (linear, dynamic, llama3, yarn).
      max_positions: build a cos/sin table for positions below this (None: cache-free, frequencies only).
      style: "neox" (rotate-half, Qwen/Llama) or "gptj" (interleaved).
      eps, weight_offset: RMSNorm epsilon; 1.0 for Gemma's ``(1 + w)`` scale.
      table_dtype: dtype of the cos/sin table (float32 by default).
      param_dtype: dtype of the scales.
      use_fused: False runs the pure-JAX reference instead (same parameters): a twin for comparisons.
    """

    def __init__(self, head_dim: int, *, rotary_dim: int | None = None, rope_theta: float = 10000.0,
                 rope_scaling: RopeScaling | dict | None = None, max_positions: int | None = None,
                 style: str = "neox", eps: float = 1e-6, weight_offset: float = 0.0, table_dtype=jnp.float32,
                 param_dtype=jnp.float32, use_fused: bool = True, rngs: nnx.Rngs | None = None):
        del rngs  # deterministic initialisation; accepted for the usual NNX constructor signature
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim or head_dim
        self.style, self.eps, self.weight_offset, self.use_fused = style, eps, weight_offset, use_fused
        init = jnp.zeros if weight_offset else jnp.ones  # an identity scale either way
        self.q_norm = nnx.Param(init((head_dim,), param_dtype))
        self.k_norm = nnx.Param(init((head_dim,), param_dtype))
        inv_freq, self.attention_factor = scaled_inv_freq(self.rotary_dim, rope_theta, rope_scaling)
        self.cached = max_positions is not None
        if self.cached:
            table = rope_cos_sin_cache(max_positions, self.rotary_dim, rope_theta, table_dtype, inv_freq=inv_freq,
                                       attention_factor=self.attention_factor)
            self.rope = RopeTable(table)
        else:
            if self.attention_factor != 1.0 and self.rotary_dim != head_dim:
                raise ValueError("a RoPE attention factor (YaRN) with partial rotary needs max_positions (a table)")
            self.rope = RopeTable(jnp.asarray(inv_freq))

    def __call__(self, q: jax.Array, k: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """q [..., Hq, D], k [..., Hk, D], positions [...] -> normalised and rotated (q, k)."""
        q_weight, k_weight, offset = self.q_norm[...], self.k_norm[...], self.weight_offset
        if not self.cached and self.attention_factor != 1.0:
            # Cache-free YaRN with full rotary: the factor scales whole heads, so it folds into the scales.
            q_weight = (offset + q_weight) * self.attention_factor
            k_weight = (offset + k_weight) * self.attention_factor
            offset = 0.0
        options = dict(rotary_dim=self.rotary_dim, style=self.style, eps=self.eps, weight_offset=offset)
        if self.cached:
            options["cos_sin_cache"] = self.rope[...]
        else:
            options["inv_freq"] = self.rope[...]
        op = fused if self.use_fused else reference.fused
        return op(q, k, positions, q_weight.astype(q.dtype), k_weight.astype(k.dtype), **options)
