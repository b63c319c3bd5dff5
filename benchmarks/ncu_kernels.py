"""Runs a few forward and backward calls for Nsight Compute to time kernel by kernel:

    ncu --kernel-name regex:_kernel --clock-control none --cache-control none --metrics gpu__time_duration.sum \
        python benchmarks/ncu_kernels.py [--tokens T ...] [--choices N ...] [--forward-only]
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
args = parser.parse_args()

for tokens in args.tokens:
    case = Case((32, 8, 128), tokens, "neox")
    x = make_inputs(case)
    for choice in args.choices or ((1, 2, 4) if tokens < 1024 else (4, 8, 16)):
        with dispatch.override_choice(choice):
            f = jax.jit(lambda q, k, p, w, c: qkr.fused(q, k, p, w, w, cos_sin_cache=c))
            for _ in range(3):  # warm: the later calls find their inputs in L2, as in a model
                jax.block_until_ready(f(x["q"], x["k"], x["positions"], x["weight"], x["cache"]))
        print(f"T={tokens} choice={choice} launched", flush=True)
    if args.forward_only:
        continue
    g = jax.jit(jax.grad(lambda q, k, w, p, c: sum(o.astype(jax.numpy.float32).sum() for o in qkr.fused(
        q, k, p, w, w, cos_sin_cache=c)), argnums=(0, 1, 2)))
    jax.block_until_ready(g(x["q"], x["k"], x["weight"], x["positions"], x["cache"]))
    print(f"T={tokens} backward launched", flush=True)
