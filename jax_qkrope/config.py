"""The static configuration of one call: hashable, so it can be a primitive parameter."""

from __future__ import annotations

import dataclasses

import numpy as np

STYLES = ("neox", "gptj")
PAIRS_PER_WARP = (1, 2, 4, 8)
MAX_HEAD_DIM = 512


@dataclasses.dataclass(frozen=True)
class OpConfig:
    style: str
    rotary_dim: int
    eps: float
    weight_offset: float
    token_heads_per_warp: int | None = None
    # (num_q_heads, num_kv_heads) of a packed [..., (Hq + 2 Hk) * D] qkv; None for separate q and k.
    packed_heads: tuple[int, int] | None = None

    @property
    def num_tensors(self) -> int:
        """Data operands: q and k, or the one packed qkv."""
        return 1 if self.packed_heads else 2

    def token_rank(self, tensor_ndim: int) -> int:
        """How many leading dims of a data operand index tokens."""
        return tensor_ndim - (1 if self.packed_heads else 2)

    def head_layout(self, tensor_shapes: list[tuple[int, ...]]) -> tuple[int, int, int]:
        """(num_q_heads, num_kv_heads, head_dim) from the data operands' shapes."""
        if self.packed_heads:
            hq, hk = self.packed_heads
            return hq, hk, tensor_shapes[0][-1] // (hq + 2 * hk)
        return tensor_shapes[0][-2], tensor_shapes[1][-2], tensor_shapes[0][-1]

    def ffi_attributes(self) -> dict:
        """The attributes every FFI target reads (types must match the C++ decoding exactly)."""
        attrs = dict(
            style=STYLES.index(self.style),
            rotary_dim=int(self.rotary_dim),
            eps=np.float32(self.eps),
            weight_offset=np.float32(self.weight_offset),
        )
        if self.packed_heads:
            attrs.update(num_q_heads=int(self.packed_heads[0]), num_kv_heads=int(self.packed_heads[1]))
        return attrs
