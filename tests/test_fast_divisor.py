"""The kernels' pair -> token division (cpp/core/fast_divisor.h): a multiply and a shift by a host-computed
multiplier, exact for every dividend below 2^31. The same header code runs here on the host."""

from __future__ import annotations

import numpy as np
import pytest

from jax_qkrope import _qkrope

LIMIT = 2**31


def dividends(d: int, rng: np.random.Generator) -> list[int]:
    """Where a wrong multiplier fails first: either side of each multiple of d near 0 and near 2^31, and random."""
    edge = [0, 1, d - 1, d, d + 1, 2 * d - 1, 2 * d, LIMIT - 1, LIMIT - 2]
    top = (LIMIT - 1) // d
    for k in (top - 2, top - 1, top, 1 << 20, 12345):
        edge += [k * d - 1, k * d, k * d + 1, k * d + d - 1]
    edge += rng.integers(0, LIMIT, 2000).tolist()
    return sorted({n for n in edge if 0 <= n < LIMIT})


DIVISORS = (
    list(range(1, 300))
    + [2**k + e for k in range(9, 31) for e in (-1, 0, 1)]
    + [641, 1000, 4099, 65521, 1_000_003, 2**31 - 1]
)


@pytest.mark.parametrize("chunk", range(0, len(DIVISORS), 64))
def test_fast_divide_matches_integer_division(chunk: int) -> None:
    rng = np.random.default_rng(chunk)
    for d in DIVISORS[chunk : chunk + 64]:
        ns = dividends(d, rng)
        got = _qkrope._fast_divide(d, ns)
        want = [n // d for n in ns]
        bad = [(n, g, w) for n, g, w in zip(ns, got, want, strict=True) if g != w]
        assert not bad, f"divisor {d}: (n, got, want) {bad[:5]}"
