"""Does the SM clock explain the spread of launch-bound timings? The bench's calls at T <= 128 move by 20-40%
between runs of the same kernel. This times the op and the XLA reference at small T (the bench's method) after
an idle pause and after a busy period, alternately, while nvidia-smi samples the SM clock every 20 ms.

    python benchmarks/clock_probe.py [--out DIR] [--trials 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import jax_qkrope as qkr
from jax_qkrope import reference as ref
from jax_qkrope.bench import Case, make_inputs, time_forward


class ClockSampler:
    """The SM clock (MHz) every 20 ms, with host timestamps, from nvidia-smi's loop mode."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self._proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=clocks.sm", "--format=csv,noheader,nounits", "-lms", "20"],
            stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip().isdigit():
                self.samples.append((time.perf_counter(), int(line)))

    def between(self, start: float, end: float) -> list[int]:
        return [mhz for t, mhz in self.samples if start <= t <= end]

    def stop(self) -> None:
        self._proc.terminate()


def keep_busy(ms: float) -> None:
    """Matmuls back to back for about `ms` milliseconds: the SMs at full load."""
    x = jnp.ones((4096, 4096), jnp.bfloat16)
    step = jax.jit(lambda x: (x @ x) * jnp.bfloat16(1e-3))
    step(x).block_until_ready()
    start = time.perf_counter()
    while (time.perf_counter() - start) * 1e3 < ms:
        x = step(x)
        x.block_until_ready()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    clocks = ClockSampler()
    time.sleep(0.5)
    records = []
    cases = [Case((32, 8, 128), t, "neox") for t in (1, 128)]
    inputs = {c: make_inputs(c) for c in cases}
    ops = {"ours": qkr.fused, "xla": ref.fused}
    for trial in range(args.trials):
        for before in ("idle 2 s", "busy 300 ms"):
            for case in cases:
                for name, fn in ops.items():
                    if before.startswith("idle"):
                        time.sleep(2.0)
                    else:
                        keep_busy(300)
                    start = time.perf_counter()
                    us = time_forward(case, inputs[case], fn)
                    window = clocks.between(start, time.perf_counter())
                    rec = dict(trial=trial, before=before, T=case.tokens, op=name, us=us,
                               clock_min=min(window, default=0), clock_median=statistics.median(window or [0]),
                               clock_max=max(window, default=0), samples=len(window))
                    records.append(rec)
                    print(f"trial {trial} {before:12s} T={case.tokens:4d} {name:4s} {us:6.2f} us  SM clock "
                          f"min/median/max {rec['clock_min']}/{rec['clock_median']}/{rec['clock_max']} MHz", flush=True)
    clocks.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "clock_probe.json").write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
