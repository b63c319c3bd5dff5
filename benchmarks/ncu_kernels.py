"""Runs a few forward and backward calls for Nsight Compute to time kernel by kernel:

    ncu --kernel-name regex:_kernel --clock-control none --cache-control none --metrics gpu__time_duration.sum \
        python benchmarks/ncu_kernels.py [--tokens T ...] [--choices N ...] [--forward-only] [--heads 32,8,80]
        [--stream]

--stream also runs XLA's elementwise negation over the same q and k (one jit; XLA 0.11.2 on the H200 ran it as one
kernel per array, results/run22_h200_calibration/3_ncu_bandwidth_racecheck_synccheck) and over one flat array of
their bytes: plain streaming kernels to hold the forward's DRAM figures against.
"""

from __future__ import annotations

import argparse

import jax

import jax_qkrope as qkr
from jax_qkrope import dispatch
from jax_qkrope.bench import Case, make_inputs

parser = argparse.ArgumentParser()
parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 16384, 65536])
parser.add_argument("--choices", type=int, nargs="+", default=None,
                    help="forced pairs per warp (default: 1, 2, 4 below 1024 tokens, else 4, 8, 16)")
parser.add_argument("--forward-only", action="store_true")
parser.add_argument("--heads", default="32,8,128", help="Hq,Hk,D or Hq,Hk,D,R (rotary_dim R below D)")
parser.add_argument("--style", default="neox", choices=("neox", "gptj"))
parser.add_argument("--stream", action="store_true", help="also XLA's negation over the same bytes")
args = parser.parse_args()

shape = tuple(int(v) for v in args.heads.split(","))
for tokens in args.tokens:
    case = Case(shape[:3], tokens, args.style, rotary_dim=shape[3] if len(shape) == 4 else None)
    x = make_inputs(case)
    options = dict(style=case.style, rotary_dim=case.rotary)
    for choice in args.choices or ((1, 2, 4) if tokens < 1024 else (4, 8, 16)):
        with dispatch.override_choice(choice):
            f = jax.jit(lambda q, k, p, w, c, o=options: qkr.fused(q, k, p, w, w, cos_sin_cache=c, **o))
            for _ in range(3):  # warm: the later calls find their inputs in L2, as in a model
                jax.block_until_ready(f(x["q"], x["k"], x["positions"], x["weight"], x["cache"]))
        print(f"T={tokens} choice={choice} launched", flush=True)
    if args.stream:
        flat = jax.numpy.concatenate([x["q"].ravel(), x["k"].ravel()])
        for f, operands in ((jax.jit(lambda q, k: (-q, -k)), (x["q"], x["k"])), (jax.jit(lambda v: -v), (flat,))):
            for _ in range(3):
                jax.block_until_ready(f(*operands))
        print(f"T={tokens} streams launched", flush=True)
    if args.forward_only:
        continue
    g = jax.jit(jax.grad(lambda q, k, w, p, c, o=options: sum(y.astype(jax.numpy.float32).sum() for y in qkr.fused(
        q, k, p, w, w, cos_sin_cache=c, **o)), argnums=(0, 1, 2)))
    jax.block_until_ready(g(x["q"], x["k"], x["weight"], x["positions"], x["cache"]))
    print(f"T={tokens} backward launched", flush=True)
