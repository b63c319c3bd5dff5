"""Small-T launch options inside XLA, on the device's clock: for each shape (neox, bf16, fp32 cache) at
T = 1, 16 and 128, the op under auto dispatch next to the same call with one launch option changed (the
L2 policy, programmatic dependent launch, a forced N), the XLA reference and the custom-call floor.
Dispatch-only options: they need no rebuild, so an A/B here says whether a threshold should move.

    python benchmarks/small_t_options.py [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp

import jax_qkrope as qkr
from jax_qkrope import dispatch
from jax_qkrope import reference as ref
from jax_qkrope.bench import Case, chosen_pairs_per_warp, make_inputs, time_forward
from jax_qkrope.timing import method, per_call_us

SHAPES = ((32, 8, 128), (64, 8, 128), (16, 2, 256), (16, 16, 64))
TOKENS = (1, 16, 128)


def variants() -> dict[str, contextlib.AbstractContextManager]:
    """Each option changed alone from auto (context managers are made fresh per use)."""
    return {
        "auto": contextlib.nullcontext(),
        "l2 default": dispatch.override_l2_policy(dispatch.L2_POLICIES["default"]),
        "pdl on": dispatch.override_pdl(True),
        "N=1": dispatch.override_choice(1),
        "N=2": dispatch.override_choice(2),
        "N=4": dispatch.override_choice(4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    floor = None
    if jax.default_backend() == "gpu":  # the copy custom call has a CUDA handler only
        copy = jax.ffi.ffi_call("qkrope_copy_in_graph", jax.ShapeDtypeStruct((1,), jnp.float32))
        floor = per_call_us(lambda x: (copy(x),), (jnp.zeros((1,), jnp.float32),))
    print(f"method: {method()}; custom-call floor (4-byte copy): {floor} us", flush=True)
    names = ["xla", *variants()]
    print(f"{'shape':<16}{'T':>5}{'auto N':>7}" + "".join(f"{n:>12}" for n in names), flush=True)
    records = []
    for heads in SHAPES:
        for tokens in TOKENS:
            case = Case(heads, tokens, "neox")
            inputs = make_inputs(case)
            row = {"xla": time_forward(case, inputs, ref.fused)}
            for name in names[1:]:
                with variants()[name]:
                    row[name] = time_forward(case, inputs, qkr.fused)
            records.append(dict(heads=list(heads), T=tokens, auto_n=chosen_pairs_per_warp(case), us=row))
            print(f"{heads!s:<16}{tokens:>5}{records[-1]['auto_n']:>7}" + "".join(f"{row[n]:>12.2f}" for n in names),
                  flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "small_t_options.json").write_text(
            json.dumps(dict(method=method(), floor_us=floor, device=jax.devices()[0].device_kind, records=records),
                       indent=1))


if __name__ == "__main__":
    main()
