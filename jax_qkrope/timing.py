"""Device time per call of a jitted op, and the copy bandwidth the op is measured against.

Method: a jitted chain of K calls, each feeding the next and separated by ``lax.optimization_barrier``
(XLA runs it as one program). Two chain lengths are timed by wall clock around ``block_until_ready``,
alternately, many times; the per-call device time is the difference of the fastest run of each length
over the difference of the lengths, which cancels the fixed dispatch and sync costs (host noise only
ever adds time, so the fastest runs are the cleanest).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

Step = Callable[..., tuple]


def chain(step: Step, length: int) -> Callable:
    """A jitted function applying `step` `length` times: state -> step(*state) -> ... ."""

    def run(*state):
        for _ in range(length):
            state = jax.lax.optimization_barrier(step(*state))
        return state

    return jax.jit(run)


def _seconds(fn: Callable, args: Sequence) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def per_call_us(step: Step, state: Sequence, repeats: int = 21, target_ms: float = 6.0) -> float:
    """Device microseconds of one `step`, from the fastest runs of two chain lengths (module docstring).

    The long chain adds enough calls to run about `target_ms` (384 for launch-bound tiny calls); short
    and long runs alternate so that slow drifts (clocks, temperature) affect both alike.
    """
    short = 2
    short_fn = chain(step, short)
    for _ in range(3):  # compile, warm up, probe
        probe = _seconds(short_fn, state)
    estimate_us = probe / short * 1e6  # an over-estimate: includes the dispatch overhead
    extra = 384 if estimate_us < 20 else int(min(384, max(4, math.ceil(target_ms * 1e3 / estimate_us))))
    long_fn = chain(step, short + extra)
    jax.block_until_ready(long_fn(*state))
    jax.block_until_ready(long_fn(*state))
    # Host-side noise only ever adds time: the fastest of many alternating runs of each length is the
    # closest to its device time.
    longs, shorts = [], []
    for _ in range(repeats):
        longs.append(_seconds(long_fn, state))
        shorts.append(_seconds(short_fn, state))
    return max(min(longs) - min(shorts), 0.0) / extra * 1e6


def _copy_step(x):
    if jax.default_backend() == "gpu":
        # A plain cudaMemcpyAsync device-to-device through the extension.
        return (jax.ffi.ffi_call("qkrope_copy", jax.ShapeDtypeStruct(x.shape, x.dtype))(x),)
    return (-x,)  # elsewhere, XLA's elementwise kernel is the copy


def copy_bandwidth_gbps(megabytes: int = 1024) -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    n = megabytes * 2**20 // 4
    x = jnp.arange(n, dtype=jnp.float32)
    seconds = per_call_us(_copy_step, (x,)) * 1e-6
    return 2 * n * 4 / seconds / 1e9 if seconds > 0 else math.nan  # nan: lost in host noise (CPU)
