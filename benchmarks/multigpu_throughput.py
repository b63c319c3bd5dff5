"""Data-parallel scaling: per-GPU throughput of the op with T tokens per GPU on 1 GPU and on every GPU
(q and k sharded over the token dim, NamedSharding under jit), forward and fwd+bwd.

Device time per call as in jax_qkrope.timing (chain of calls separated by optimization barriers).
Prints a table and writes benchmarks/results/multigpu_throughput.json (or --out).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jax_qkrope as qkr
from jax_qkrope.timing import per_call_us

HEADS = (32, 8, 128)


def sharded_inputs(devices, tokens_per_gpu: int):
    hq, hk, d = HEADS
    n = len(devices)
    mesh = Mesh(np.array(devices), ("dp",))
    rows, whole = NamedSharding(mesh, P("dp")), NamedSharding(mesh, P())
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    t = n * tokens_per_gpu
    q = jax.device_put(jax.random.normal(keys[0], (t, hq, d), jnp.bfloat16), rows)
    k = jax.device_put(jax.random.normal(keys[1], (t, hk, d), jnp.bfloat16), rows)
    positions = jax.device_put(jnp.arange(t, dtype=jnp.int32) % 32768, rows)
    w = jax.device_put(jnp.ones((d,), jnp.bfloat16), whole)
    cache = jax.device_put(qkr.rope_cos_sin_cache(32768, d), whole)
    return q, k, positions, w, cache


def forward_step(q, k, positions, w, cache):
    q, k = qkr.fused(q, k, positions, w, w, cos_sin_cache=cache)
    return q, k, positions, w, cache


def fwdbwd_step(q, k, positions, w, cache):
    def loss(q, k, w):
        out_q, out_k = qkr.fused(q, k, positions, w, w, cos_sin_cache=cache)
        return jnp.sum(out_q.astype(jnp.float32)) + jnp.sum(out_k.astype(jnp.float32))

    value, (dq, dk, dw) = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, w)
    # The loss nudges the weights by a negligible amount so that the forward is not dead code.
    return dq, dk, positions, (dw + 1e-30 * value).astype(w.dtype), cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens-per-gpu", type=int, default=16384)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    gpus = jax.devices()
    print(f"{len(gpus)} x {gpus[0].device_kind}, jax {jax.__version__}, T = {args.tokens_per_gpu} per GPU, "
          f"heads {HEADS}, bf16")
    records = []
    for name, step in (("forward", forward_step), ("fwd+bwd", fwdbwd_step)):
        times = {}
        for n in sorted({1, len(gpus)}):
            times[n] = per_call_us(step, sharded_inputs(gpus[:n], args.tokens_per_gpu))
        for n, us in times.items():
            efficiency = times[1] / us  # same tokens per GPU: equal time is perfect scaling
            records.append(dict(op=name, gpus=n, tokens_per_gpu=args.tokens_per_gpu, us=us,
                                tokens_per_s_per_gpu=args.tokens_per_gpu / us * 1e6, per_gpu_efficiency=efficiency))
            print(f"{name:8s} {n} GPU(s): {us:8.2f} µs per call, per-GPU throughput {100 * efficiency:.1f}% of 1 GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(device=gpus[0].device_kind, gpus=len(gpus), jax=jax.__version__)
    (args.out / "multigpu_throughput.json").write_text(json.dumps(dict(meta=meta, records=records), indent=1))


if __name__ == "__main__":
    main()
