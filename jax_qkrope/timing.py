"""Device time per call of a jitted op, and the copy bandwidth the op is measured against.

Method: a jitted chain of K calls, each feeding the next and separated by ``lax.optimization_barrier``
(XLA runs it as one program, as CUDA graphs on a GPU).

On a GPU, one run of the chain is profiled (CUPTI, through ``jax.profiler``) and the per-call time is the
median interval between the device timestamps of activities one call apart: the device's own clock,
which no host delay enters. Elsewhere, or where the profile holds too few device activities, chains of
two lengths are timed by wall clock around ``block_until_ready``, the fastest of many alternating runs of
each (host noise only ever adds time), and the per-call time is the difference over the difference of
the lengths. On the H100 that wall-clock method moved launch-bound timings by 20-40% between runs of the
same kernel while the device's own intervals moved by under 2% (``benchmarks/device_timeline.py``).
"""

from __future__ import annotations

import glob
import math
import statistics
import tempfile
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


def device_activities(run: Callable[[], object]) -> list[tuple[float, float, str]] | None:
    """(start ns, duration ns, name) of each device activity while `run()` executes under a profile,
    sorted by start; None where no profile was written. The per-stream lines of the GPU planes hold the
    activities themselves (the others summarise them)."""
    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder)
        try:
            run()
        finally:
            jax.profiler.stop_trace()
        files = glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)
        if not files:
            return None
        return sorted(
            (event.start_ns, event.duration_ns, event.name)
            for plane in jax.profiler.ProfileData.from_file(files[0]).planes if plane.name.startswith("/device:GPU")
            for line in plane.lines if "Stream" in line.name
            for event in line.events)


def device_call_period_ns(fn: Callable, args: Sequence, calls: int) -> float | None:
    """Device nanoseconds per call of one profiled run of `fn`, a chain of `calls` calls: the median
    interval between the starts of activities one call apart, from the profiler's device timestamps
    (a call's activities are as many as the run holds per call; a few one-off ones, such as a copy of the
    result, move only the intervals they fall in). None where the profile holds fewer device activities
    than calls (no GPU, no profiler). One run per profile: a second run of the op's chain under the same
    profile made a kernel fail on the H100 (``benchmarks/profile_crash_probe.py``)."""
    activities = device_activities(lambda: jax.block_until_ready(fn(*args)))
    return None if activities is None else call_period([start for start, _, _ in activities], calls)


def call_period(starts: Sequence[float], calls: int) -> float | None:
    """The median interval between sorted activity starts one call apart (module docstring)."""
    if calls < 2 or len(starts) < calls:
        return None
    # Rounded down: the one-off activities are fewer than the calls (rounding to nearest took a chain of
    # 6 calls with 3 one-offs for 2 activities per call and doubled the time: results/run19_device_timeline).
    per_call = len(starts) // calls
    return statistics.median([b - a for a, b in zip(starts, starts[per_call:], strict=False)])


# Times on a GPU that fell back to the wall clock (the profile did not resolve the runs).
wall_clock_fallbacks = 0


def per_call_us(step: Step, state: Sequence, repeats: int = 21, target_ms: float = 6.0,
                device_runs: int = 1) -> float:
    """Device microseconds of one `step` (module docstring).

    The long chain adds enough calls to run about `target_ms` (384 for launch-bound tiny calls). On a GPU,
    the median over `device_runs` profiled runs of it; otherwise (or with `device_runs=0`) `repeats`
    alternating wall-clock runs of both lengths (alternating so that slow drifts, clocks or temperature,
    affect both alike).
    """
    short = 2
    short_fn = chain(step, short)
    for _ in range(3):  # compile, warm up, probe
        probe = _seconds(short_fn, state)
    estimate_us = probe / short * 1e6  # an over-estimate: includes the dispatch overhead
    # At least 10 more calls: the profiled interval is a median over the calls, a few of them next to the
    # run's one-off activities.
    extra = 384 if estimate_us < 20 else int(min(384, max(10, math.ceil(target_ms * 1e3 / estimate_us))))
    long_fn = chain(step, short + extra)
    jax.block_until_ready(long_fn(*state))
    jax.block_until_ready(long_fn(*state))
    if device_runs > 0 and jax.default_backend() == "gpu":
        periods = [device_call_period_ns(long_fn, state, short + extra) for _ in range(device_runs)]
        if None not in periods:
            return statistics.median(periods) / 1e3
        global wall_clock_fallbacks
        wall_clock_fallbacks += 1
    longs, shorts = [], []
    for _ in range(repeats):
        longs.append(_seconds(long_fn, state))
        shorts.append(_seconds(short_fn, state))
    return max(min(longs) - min(shorts), 0.0) / extra * 1e6


def method() -> str:
    """How `per_call_us` times on this backend, for the records it goes into."""
    if jax.default_backend() == "gpu":
        fallbacks = f"; {wall_clock_fallbacks} timings fell back to wall clock" if wall_clock_fallbacks else ""
        return ("chain of calls separated by lax.optimization_barrier, one profiled run of it: median interval "
                "between the device starts (CUPTI timestamps) of activities one call apart" + fallbacks)
    return ("chain of calls separated by lax.optimization_barrier, difference of two chain lengths, fastest "
            "of 21 alternating wall-clock runs of each")


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
