"""Which profiled sequence of runs of the op's chain makes a kernel fail (CUDA_ERROR_LAUNCH_FAILED)?
Each experiment runs in a fresh process and prints OK or FAIL. "copy_long" profiles two runs of a
386-call chain of the extension's 4-byte copy custom call (a command-buffer node with no kernel of ours);
"long_no_graphs" the op's two runs with XLA's command buffers off.

    python benchmarks/profile_crash_probe.py [PLAN ...]
"""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = r"""
import sys, jax, jax.numpy as jnp
import jax_qkrope as qkr
from jax_qkrope import timing
from jax_qkrope.bench import Case, forward_step, make_inputs
case = Case((32, 8, 128), 1, "neox")
x = make_inputs(case)
state = (x["q"], x["k"], x["positions"], x["weight"], x["cache"])
step = forward_step(qkr.fused, "neox")
long, short = timing.chain(step, 386), timing.chain(step, 2)
for fn in (long, long, short, short):
    jax.block_until_ready(fn(*state))
which = sys.argv[1]
if which == "copy_long":  # CUDA only
    copy = jax.ffi.ffi_call("qkrope_copy_in_graph", jax.ShapeDtypeStruct((1,), jnp.float32))
    copy_long, tiny = timing.chain(lambda x: (copy(x),), 386), (jnp.zeros((1,), jnp.float32),)
    jax.block_until_ready(copy_long(*tiny))
if which == "copy_first":
    timing.copy_bandwidth_gbps(1024)
# The runs in one profile ("long": the 386-call chain twice, as the first version of the bench's
# profiled timing ran it, which repeated the first run and dropped it).
plans = {"single": [long], "long": [long, long], "long_long": [long, long, long], "long_short": [long, long, short],
         "short": [short, short], "copy_first": [long, long, short], "long_no_graphs": [long, long]}
if which == "copy_long":
    runs = lambda: [jax.block_until_ready(copy_long(*tiny)) for _ in range(2)]  # noqa: E731
else:
    runs = lambda: [jax.block_until_ready(fn(*state)) for fn in plans[which]]  # noqa: E731
activities = timing.device_activities(runs)
starts = [start for start, _, _ in activities or []]
spans = (len(starts), (starts[-1] - starts[0]) / 1e3 if starts else None)
for fn in (long, short):
    jax.block_until_ready(fn(*state))
print("SPANS", spans)
"""

for which in sys.argv[1:] or ("single", "long", "short", "long_long", "long_short", "copy_first", "copy_long",
                              "long_no_graphs"):
    env = dict(os.environ)
    if which == "long_no_graphs":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_gpu_enable_command_buffer=").strip()
    out = subprocess.run([sys.executable, "-c", CHILD, which], capture_output=True, text=True, check=False, env=env)
    spans = next((line for line in out.stdout.splitlines() if line.startswith("SPANS")), None)
    print(which, "OK" if out.returncode == 0 else f"FAIL rc={out.returncode}", spans or "",
          "" if out.returncode == 0 else out.stderr.strip().splitlines()[-1][:300], flush=True)
