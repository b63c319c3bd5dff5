"""How far small-T calls of the op are from what any custom call with its critical path can take in XLA.

Builds `floor_probe.cu` with nvcc against this jax's FFI headers, registers its skeleton kernels as FFI
targets (command-buffer compatible, like the op's) and times, on the device's clock in one process
(`jax_qkrope.timing.per_call_us`, as the bench): the skeletons at the op's grid (one warp per (token, head)
pair, blocks of 8 warps), the op itself under auto dispatch, XLA's fusion of the reference, and the two
floors the bench notes have quoted (a one-element XLA add, the extension's 4-byte copy custom call).
The skeletons add, one at a time, the steps of the single-pair forward's path: the launch and a store; the
data's load; the position -> cos/sin row round trips; the norm's warp reduction.

    python benchmarks/floor_probe.py [--out DIR] [--tokens 1 16 128]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

import jax_qkrope as qkr
from jax_qkrope import reference as ref
from jax_qkrope.bench import CACHE_ROWS, SHAPES, Case, make_inputs, time_forward
from jax_qkrope.timing import per_call_us

PROBES = {"store": "FloorProbeStore", "load": "FloorProbeLoad", "chain": "FloorProbeChain",
          "chain+norm": "FloorProbeChainNorm"}
ROW_FLOATS = 128  # floor_probe.cu's kRowFloats
COLUMNS = [*PROBES, "ours neox", "ours gptj", "xla neox", "xla gptj"]


def build_and_register(folder: Path) -> None:
    library = folder / "floor_probe.so"
    # The diagnostics silenced are the XLA headers' (a missing return after a switch, an ignored attribute).
    subprocess.run(["nvcc", "-O3", "-std=c++17", "-arch=sm_90", "-shared", "-Xcompiler", "-fPIC,-Wno-return-type",
                    "-diag-suppress=940,2473",
                    f"-I{jax.ffi.include_dir()}", str(Path(__file__).with_name("floor_probe.cu")), "-o",
                    str(library)], check=True)
    handlers = ctypes.cdll.LoadLibrary(str(library))
    for name, symbol in PROBES.items():
        jax.ffi.register_ffi_target(f"floor_probe_{name}", jax.ffi.pycapsule(getattr(handlers, symbol)),
                                    platform="CUDA")


def probe_us(name: str, tokens: int, pairs_per_token: int, head_dim: int, table: jax.Array) -> float:
    """One skeleton's time; `table` is the cos/sin cache it reads, built once for all of them (32 MiB)."""
    n = tokens * pairs_per_token * 32 * max(head_dim // 64, 1)  # a lane's bf16 share of the head, in floats
    call = jax.ffi.ffi_call(f"floor_probe_{name}", jax.ShapeDtypeStruct((n,), jnp.float32))

    def step(x, positions, table):
        return call(x, positions, table, heads=pairs_per_token), positions, table

    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    state = (jax.random.normal(keys[0], (n,), jnp.float32),
             jax.random.randint(keys[1], (tokens,), 0, CACHE_ROWS, jnp.int32),
             table)
    return per_call_us(step, state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 128])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        build_and_register(Path(folder))
        one = (jnp.zeros((1,), jnp.float32),)
        copy = jax.ffi.ffi_call("qkrope_copy_in_graph", jax.ShapeDtypeStruct((1,), jnp.float32))
        floors = {"XLA add, 1 element": per_call_us(lambda x: (x + 1,), one),
                  "custom call, 4-byte copy": per_call_us(lambda x: (copy(x),), one)}
        print("floors (us per call):", json.dumps(floors), flush=True)
        table = jnp.ones((CACHE_ROWS, ROW_FLOATS), jnp.float32)
        rows = []
        print(f"{'heads':<14}{'T':>5}" + "".join(f"{c:>11}" for c in COLUMNS), flush=True)
        for heads in SHAPES:
            for tokens in args.tokens:
                row = dict(heads=list(heads), T=tokens)
                row.update({p: probe_us(p, tokens, heads[0] + heads[1], heads[2], table)
                            for p in PROBES})
                for style in ("neox", "gptj"):
                    case = Case(heads, tokens, style)
                    inputs = make_inputs(case)
                    row[f"ours {style}"] = time_forward(case, inputs, qkr.fused)
                    row[f"xla {style}"] = time_forward(case, inputs, ref.fused)
                rows.append(row)
                print(f"{heads!s:<14}{tokens:>5}" + "".join(f"{row[c]:>11.2f}" for c in COLUMNS), flush=True)
    (args.out / "floor_probe.json").write_text(json.dumps(dict(device=jax.devices()[0].device_kind, floors=floors,
                                                                rows=rows), indent=1))


if __name__ == "__main__":
    main()
