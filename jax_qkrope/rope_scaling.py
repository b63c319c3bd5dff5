"""RoPE scaling variants used by released checkpoints, as inverse frequencies plus an attention factor.

``scaled_inv_freq(rotary_dim, theta, scaling)`` returns the ``[R/2]`` float32 frequencies for the
cache-free path (``fused(..., inv_freq=...)``) and the factor cos and sin are multiplied by (1 except
for YaRN); ``rope_cos_sin_cache(..., scaling=...)`` builds the matching table. The parameter names
follow the ``rope_scaling`` dicts of Hugging Face configs, so ``RopeScaling.from_config(d)`` reads one.
Computed in float64, rounded once.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

KINDS = ("default", "linear", "dynamic", "llama3", "yarn")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """One scaling variant. ``factor``: context extension factor; ``original_max_position_embeddings``:
    the pre-training context (llama3, yarn, dynamic); ``seq_len``: for dynamic NTK, the sequence length
    the frequencies are computed for (they equal the default ones up to the original context)."""

    kind: str = "default"
    factor: float = 1.0
    original_max_position_embeddings: int = 4096
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    mscale: float | None = None  # yarn (DeepSeek-style pair with mscale_all_dim)
    mscale_all_dim: float | None = None
    attention_factor: float | None = None  # yarn: overrides the computed factor
    truncate: bool = True  # yarn: integer correction range
    seq_len: int | None = None  # dynamic

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"rope scaling kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind != "default" and not self.factor > 0:
            raise ValueError(f"rope scaling factor must be positive, got {self.factor}")

    @classmethod
    def from_config(cls, config: dict | None) -> RopeScaling:
        """From a Hugging Face ``rope_scaling`` dict (``rope_type`` or ``type``); None is the default."""
        if not config:
            return cls()
        config = dict(config)
        kind = config.pop("rope_type", None) or config.pop("type", "default")
        config.pop("type", None)
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(kind=kind, **{k: v for k, v in config.items() if k in fields})


def _default_inv_freq(rotary_dim: int, theta: float) -> np.ndarray:
    return float(theta) ** -(np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)


def _llama3(inv_freq: np.ndarray, s: RopeScaling) -> np.ndarray:
    # Long wavelengths are interpolated by `factor`, short ones kept, the band between blended.
    wavelength = 2 * math.pi / inv_freq
    low_wavelength = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelength = s.original_max_position_embeddings / s.high_freq_factor
    blend = (s.original_max_position_embeddings / wavelength - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    mixed = (1 - blend) * inv_freq / s.factor + blend * inv_freq
    return np.where(wavelength > low_wavelength, inv_freq / s.factor,
                    np.where(wavelength < high_wavelength, inv_freq, mixed))


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(rotary_dim: int, theta: float, s: RopeScaling) -> tuple[np.ndarray, float]:
    def correction_dim(rotations: float) -> float:
        # The dim index whose wavelength fits `rotations` times into the original context.
        context = s.original_max_position_embeddings
        return rotary_dim * math.log(context / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001  # a zero-width ramp would divide by zero
    ramp = np.clip((np.arange(rotary_dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    keep = 1.0 - ramp  # 1: extrapolate (high frequencies), 0: interpolate by `factor`
    base = _default_inv_freq(rotary_dim, theta)
    inv_freq = base / s.factor * (1 - keep) + base * keep
    if s.attention_factor is not None:
        factor = float(s.attention_factor)
    elif s.mscale is not None and s.mscale_all_dim is not None:
        factor = _yarn_mscale(s.factor, s.mscale) / _yarn_mscale(s.factor, s.mscale_all_dim)
    else:
        factor = _yarn_mscale(s.factor)
    return inv_freq, factor


def scaled_inv_freq(rotary_dim: int, theta: float = 10000.0,
                    scaling: RopeScaling | dict | None = None) -> tuple[np.ndarray, float]:
    """(inv_freq [R/2] float32, attention_factor) of a scaling variant."""
    if rotary_dim < 2 or rotary_dim % 2:
        raise ValueError(f"rotary_dim must be even and >= 2, got {rotary_dim}")
    if not theta > 0:
        raise ValueError(f"theta must be positive, got {theta}")
    s = scaling if isinstance(scaling, RopeScaling) else RopeScaling.from_config(scaling)
    inv_freq, attention_factor = _default_inv_freq(rotary_dim, theta), 1.0
    if s.kind == "linear":
        inv_freq = inv_freq / s.factor
    elif s.kind == "dynamic":
        seq_len = s.seq_len or s.original_max_position_embeddings
        if seq_len > s.original_max_position_embeddings:
            grown = s.factor * seq_len / s.original_max_position_embeddings - (s.factor - 1)
            inv_freq = _default_inv_freq(rotary_dim, theta * grown ** (rotary_dim / (rotary_dim - 2)))
    elif s.kind == "llama3":
        inv_freq = _llama3(inv_freq, s)
    elif s.kind == "yarn":
        inv_freq, attention_factor = _yarn(rotary_dim, theta, s)
    return inv_freq.astype(np.float32), attention_factor
