"""Demo: ``python -m jax_qkrope.demo``.

On the default JAX device: checks the fused op (forward and gradient) against the pure-JAX reference
on a Qwen3-8B-like shape (32 query heads, 8 KV heads, head_dim 128, bf16), then prints a short table of
device time per call against the XLA-fused reference.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import jax_qkrope as qkr
from jax_qkrope import reference as ref
from jax_qkrope.bench import Case, device_description, make_inputs, time_forward
from jax_qkrope.timing import copy_bandwidth_gbps

HEADS = (32, 8, 128)


def max_relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def check(tokens: int, dtype: str, tolerance: float) -> None:
    hq, hk, d = HEADS
    keys = jax.random.split(jax.random.PRNGKey(1), 5)
    q = jax.random.normal(keys[0], (2, tokens, hq, d), dtype)
    k = jax.random.normal(keys[1], (2, tokens, hk, d), dtype)
    positions = jnp.broadcast_to(jnp.arange(tokens, dtype=jnp.int32), (2, tokens))
    q_weight = (1 + 0.1 * jax.random.normal(keys[2], (d,))).astype(dtype)
    k_weight = (1 + 0.1 * jax.random.normal(keys[3], (d,))).astype(dtype)
    options = dict(rope_theta=1e6)

    ours = jax.jit(lambda *a: qkr.fused(*a, **options))(q, k, positions, q_weight, k_weight)
    # The oracle runs in float32 on the same (rounded) inputs.
    f32 = [x.astype(jnp.float32) for x in (q, k, q_weight, k_weight)]
    want = jax.jit(lambda q, k, wq, wk: ref.fused(q, k, positions, wq, wk, **options))(*f32)
    forward_error = max(max_relative_error(a, b) for a, b in zip(ours, want, strict=True))

    def loss(fn, q, k, wq, wk):
        out_q, out_k = fn(q, k, positions, wq, wk, **options)
        return jnp.sum(out_q.astype(jnp.float32) * jnp.cos(out_q.astype(jnp.float32))) + jnp.sum(
            out_k.astype(jnp.float32) ** 2)

    grads = jax.jit(jax.grad(lambda *a: loss(qkr.fused, *a), argnums=(0, 1, 2, 3)))(q, k, q_weight, k_weight)
    want_grads = jax.jit(jax.grad(lambda *a: loss(ref.fused, *a), argnums=(0, 1, 2, 3)))(*f32)
    grad_error = max(max_relative_error(a, b) for a, b in zip(grads, want_grads, strict=True))
    ok = forward_error <= tolerance and grad_error <= 2 * tolerance
    print(f"check {dtype:8s} q{tuple(q.shape)} k{tuple(k.shape)}: forward max rel. error {forward_error:.1e}, "
          f"gradient {grad_error:.1e} -> {'OK' if ok else 'MISMATCH'}")
    if not ok:
        raise SystemExit("jax_qkrope does not match the reference on this device")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=None, help="token counts of the timing table")
    args = parser.parse_args(argv)
    on_gpu = jax.default_backend() == "gpu"
    print(f"jax_qkrope {qkr.__version__} on {device_description()} (CUDA kernels compiled: {qkr.HAS_CUDA_KERNELS})")
    check(64, "float32", 1e-5)
    check(64, "bfloat16", 1e-2)

    tokens = args.tokens or ([1, 16, 1024, 16384] if on_gpu else [1, 128, 1024])
    copy_gbps = copy_bandwidth_gbps(1024 if on_gpu else 256)
    print(f"\ndevice time per call, (Hq, Hk, D) = {HEADS}, bf16, neox; copy bandwidth {copy_gbps:.0f} GB/s")
    if not on_gpu:
        print("(not a GPU: the CPU target is plain C++ loops kept for CI, and host timings are noisy)")
    print(f"{'T':>7} {'jax_qkrope µs':>14} {'XLA ref µs':>11} {'bound µs':>9} {'speed-up':>9}")
    for t in tokens:
        case = Case(HEADS, t, "neox")
        inputs = make_inputs(case)
        ours, xla = time_forward(case, inputs, qkr.fused), time_forward(case, inputs, ref.fused)
        bound = case.forward_bytes() / (copy_gbps * 1e3)
        # A time of 0 means the difference of chain lengths was lost in host noise: no ratio to print.
        speedup = f"{xla / ours:>8.2f}x" if ours > 0 and xla > 0 else f"{'n/a':>9}"
        print(f"{t:>7} {ours:>14.2f} {xla:>11.2f} {bound:>9.2f} {speedup}")


if __name__ == "__main__":
    main()
