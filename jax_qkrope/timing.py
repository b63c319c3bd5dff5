"""Device time per call of a jitted op, and the copy bandwidth the op is measured against.

Method: a jitted chain of K calls, each feeding the next and separated by ``lax.optimization_barrier``
(XLA runs it as one program, on GPU captured into a CUDA graph). Two chain lengths are timed by wall
clock around ``block_until_ready``, many times each; the per-call device time is the difference of
the medians over the difference of the lengths, which cancels the fixed dispatch and sync costs.
"""

from __future__ import annotations

import math
import statistics
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


def _median_seconds(fn: Callable, args: Sequence, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    jax.block_until_ready(fn(*args))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def per_call_us(step: Step, state: Sequence, repeats: int = 15, target_ms: float = 4.0) -> float:
    """Median device microseconds of one `step`, from chains of two lengths (see module docstring).

    The longer chain adds enough calls to run about `target_ms`, estimated from a probe of the short one.
    """
    short = 2
    short_fn = chain(step, short)
    t_short = _median_seconds(short_fn, state, repeats)
    estimate_us = t_short / short * 1e6  # an over-estimate: includes the dispatch overhead
    extra = int(min(256, max(4, math.ceil(target_ms * 1e3 / max(estimate_us, 1.0)))))
    t_long = _median_seconds(chain(step, short + extra), state, repeats)
    return max(t_long - t_short, 0.0) / extra * 1e6


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
    return 2 * n * 4 / seconds / 1e9
