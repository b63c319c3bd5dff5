"""Small-T experiment: per-call time at T = 1 and 16 for (32, 8, 128) bf16, ours (each kernel choice,
PDL on/off) and the XLA reference, under XLA's default command buffers and with them disabled or
forced for custom calls, next to the floor of the method: a chain of one-element XLA adds (one tiny
kernel per call) and a custom call doing a 4-byte device copy. Each configuration runs in a fresh process
(XLA_FLAGS are read at start).

    python benchmarks/small_t_experiment.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

CONFIGS = {
    "default": "",
    "no command buffers": "--xla_gpu_enable_command_buffer=",
    "command buffers incl. custom calls": "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL",
}

CHILD = r"""
import json, jax, jax.numpy as jnp
import jax_qkrope as qkr
from jax_qkrope import dispatch, reference as ref
from jax_qkrope.bench import Case, make_inputs, time_forward
from jax_qkrope.timing import per_call_us
rows = {"floor: 1-element XLA add": per_call_us(lambda x: (x + 1,), (jnp.zeros((1,), jnp.float32),))}
# The floor for a custom call: the extension's 4-byte device copy (one cudaMemcpyAsync), XLA's custom-call
# command-buffer path with the least device work behind it.
copy = jax.ffi.ffi_call("qkrope_copy_in_graph", jax.ShapeDtypeStruct((1,), jnp.float32))
rows["floor: custom call, 4-byte copy"] = per_call_us(lambda x: (copy(x),), (jnp.zeros((1,), jnp.float32),))
for t in (1, 16):
    case = Case((32, 8, 128), t, "neox")
    inputs = make_inputs(case)
    rows[f"T={t} xla"] = time_forward(case, inputs, ref.fused)
    for choice in (1, 2):
        for pdl in (False, True):
            with dispatch.override_choice(choice), dispatch.override_pdl(pdl):
                rows[f"T={t} N={choice} pdl={pdl}"] = time_forward(case, inputs, qkr.fused)
print("RESULT " + json.dumps(rows))
"""


def main() -> None:
    results = {}
    for name, flags in CONFIGS.items():
        env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip())
        out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=False)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(name, "failed:", out.stderr[-2000:])
            continue
        results[name] = json.loads(line[len("RESULT "):])
    keys = sorted({k for r in results.values() for k in r})
    print(f"{'case (us per call)':<28}" + "".join(f"{n[:24]:>26}" for n in results))
    for k in keys:
        print(f"{k:<28}" + "".join(f"{results[n].get(k, float('nan')):>26.2f}" for n in results))


if __name__ == "__main__":
    main()
