"""Where does the spread of small-T timings come from: the host or the device?

The bench's method up to session 20 (`jax_qkrope.timing` with ``device_runs=0``) inferred per-call
device time from wall clock around chains of two lengths. At T <= 128 that number moved by 20-40%
between runs of the same kernel while the SM clock stayed put (`clock_probe.py`). This probe times each
case several times with fresh compiles by that method and, for each, profiles one run of the long chain
(what `jax_qkrope.timing` now does by default): the GPU timestamps of its kernels (CUPTI, through
`jax.profiler`) give the device's own per-call time, free of the host. Each XLA flag set runs in a fresh
process; `--xla_enable_command_buffers_during_profiling` keeps XLA's CUDA graphs on under the profiler.

    python benchmarks/device_timeline.py [--out DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

FLAG_SETS = {
    "graphs under the profiler": "--xla_enable_command_buffers_during_profiling=true",
    "XLA default under the profiler": "",
}

CHILD = r"""
import json, statistics, sys
import jax, jax.numpy as jnp
import jax_qkrope as qkr
from jax_qkrope import reference as ref, timing
from jax_qkrope.bench import Case, forward_step, make_inputs
from jax_qkrope.timing import chain, per_call_us

REPEATS, LONG = int(sys.argv[1]), 386

def timeline(step, state):
    run = chain(step, LONG)
    for _ in range(3):
        jax.block_until_ready(run(*state))
    events = timing.device_activities(lambda: jax.block_until_ready(run(*state))) or []
    if len(events) < LONG:
        return dict(events=len(events))
    starts = [s for s, _, _ in events]
    gaps = [(b - a) / 1e3 for a, b in zip(starts, starts[1:])]
    names = sorted({n[:60] for _, _, n in events})
    return dict(events=len(events), span_per_call_us=(events[-1][0] + events[-1][1] - starts[0]) / 1e3 / LONG,
                median_start_to_start_us=statistics.median(gaps),
                median_kernel_us=statistics.median(d / 1e3 for _, d, _ in events), kernels=names[:4])

copy = jax.ffi.ffi_call("qkrope_copy_in_graph", jax.ShapeDtypeStruct((1,), jnp.float32))
one = (jnp.zeros((1,), jnp.float32),)
cases = {"floor: 1-element XLA add": (lambda x: (x + 1,), one)}
if jax.default_backend() == "gpu":  # the extension's copy target is registered for CUDA only
    cases["floor: custom call, 4-byte copy"] = (lambda x: (copy(x),), one)
for heads, tokens in (((32, 8, 128), 1), ((32, 8, 128), 16), ((32, 8, 128), 128), ((16, 16, 64), 1024)):
    case = Case(heads, tokens, "neox")
    x = make_inputs(case)
    state = (x["q"], x["k"], x["positions"], x["weight"], x["cache"])
    cases[f"ours {heads} T={tokens}"] = (forward_step(qkr.fused, "neox"), state)
    if tokens == 1:
        cases[f"xla {heads} T={tokens}"] = (forward_step(ref.fused, "neox"), state)
rows = {}
for name, (step, state) in cases.items():
    rows[name] = [dict(wall_method_us=per_call_us(step, state, device_runs=0), **timeline(step, state))
                  for _ in range(REPEATS)]
    print(name, json.dumps(rows[name]), file=sys.stderr, flush=True)
print("RESULT " + json.dumps(rows))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, flags in FLAG_SETS.items():
        env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip())
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.repeats)], env=env, capture_output=True,
                             text=True, check=False)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(name, "failed:", out.stderr[-3000:])
            continue
        results[name] = json.loads(line[len("RESULT "):])
        print(f"\n## {name} ({flags or 'no flags'})")
        print(f"{'case':<36}{'wall method':>14}{'GPU span/call':>15}{'start-to-start':>16}{'kernel':>9}")
        for case, reps in results[name].items():
            for r in reps:
                print(f"{case:<36}{r['wall_method_us']:>14.2f}{r.get('span_per_call_us', float('nan')):>15.2f}"
                      f"{r.get('median_start_to_start_us', float('nan')):>16.2f}"
                      f"{r.get('median_kernel_us', float('nan')):>9.2f}")
    (args.out / "device_timeline.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
