"""The bench's timing: the per-call interval from activity timestamps and the wall-clock method (any
machine), and on a GPU the profiled interval of a chain against its wall-clock time."""

import jax
import jax.numpy as jnp
from conftest import requires_gpu

from jax_qkrope import timing


def test_call_period_is_the_median_interval_one_call_apart() -> None:
    # Three activities per call, every 5 µs, with one stalled call and a one-off activity at the end.
    starts = [5_000.0 * call + offset for call in range(20) for offset in (0.0, 1_000.0, 3_000.0)]
    starts = [s + (40_000.0 if s >= 50_000.0 else 0.0) for s in starts] + [200_000.0]
    assert timing.call_period(sorted(starts), calls=20) == 5_000.0
    assert timing.call_period([0.0, 7.0, 14.0], calls=3) == 7.0
    # One activity per call for 6 calls and 3 one-offs ahead of them: still one call per activity.
    assert timing.call_period([0.0, 1.0, 2.0] + [100.0 + 50.0 * c for c in range(6)], calls=6) == 50.0
    assert timing.call_period([0.0, 7.0], calls=3) is None  # fewer activities than calls: no device events


def test_per_call_us_is_positive_for_real_work() -> None:
    # Wall clock here (no GPU): a chain of elementwise steps over 4 MiB takes measurable time per call.
    x = jnp.arange(1 << 20, dtype=jnp.float32)
    assert timing.per_call_us(lambda x: (jnp.sin(x) * 1.0001,), (x,), repeats=5, target_ms=2.0) > 0.0


@requires_gpu
def test_device_period_of_a_chain_matches_its_wall_clock_time() -> None:
    # 40 chained steps over 64 MiB (tens of µs each): the profile's per-call interval and the wall-clock
    # difference of two chain lengths agree where host noise is small against the step.
    x = jnp.arange(1 << 24, dtype=jnp.float32)
    long = timing.chain(lambda x: (x * 1.0001,), 40)
    jax.block_until_ready(long(x))
    period_us = timing.device_call_period_ns(long, (x,), calls=40) / 1e3
    wall_us = timing.per_call_us(lambda x: (x * 1.0001,), (x,), device_runs=0)
    assert 5.0 < period_us < 2_000.0
    assert 0.7 < period_us / wall_us < 1.3
