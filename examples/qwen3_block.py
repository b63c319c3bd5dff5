"""A Qwen3-style decoder block with the fused QK-norm + RoPE op vs the same block in plain Flax/jnp:
outputs and gradients match, and the time per block (forward, and forward + backward) is printed for
the default device.

    python examples/qwen3_block.py            # Qwen3-8B-like shapes on GPU, small ones on CPU
    python examples/qwen3_block.py --quick    # small shapes anywhere (CI)
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from jax_qkrope.demo import max_relative_error as relative_error
from jax_qkrope.qwen3 import Qwen3Block, Qwen3Config
from jax_qkrope.timing import per_call_us

QWEN3_8B = Qwen3Config(hidden=4096, num_q_heads=32, num_kv_heads=8, head_dim=128, mlp_hidden=12288,
                       rope_theta=1e6, max_positions=40960, dtype="bfloat16")
SMALL = Qwen3Config(hidden=256, num_q_heads=8, num_kv_heads=2, head_dim=64, mlp_hidden=512, rope_theta=1e6,
                    max_positions=4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    args = parser.parse_args()
    on_gpu = jax.default_backend() == "gpu"
    cfg = QWEN3_8B if on_gpu and not args.quick else SMALL
    batch, seq = args.batch or (4 if cfg is QWEN3_8B else 2), args.seq or (2048 if cfg is QWEN3_8B else 64)
    dtype = jnp.dtype(cfg.dtype)
    if dtype == jnp.float32:
        # Full-precision matmuls around the op: GPUs may otherwise run float32 dots in TF32, whose rounding
        # (about 1e-3) would swamp the float32 comparison below (it failed once on an H100 at 5.1e-4).
        jax.config.update("jax_default_matmul_precision", "highest")
    print(f"{jax.devices()[0].device_kind}: block hidden={cfg.hidden}, heads ({cfg.num_q_heads}, {cfg.num_kv_heads}, "
          f"{cfg.head_dim}), batch {batch} x seq {seq}, {dtype.name}")

    fused_block = Qwen3Block(cfg, rngs=nnx.Rngs(0))
    plain_block = Qwen3Block(cfg, use_fused=False, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, seq, cfg.hidden), dtype)
    positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))

    results = {}
    for name, block in (("fused", fused_block), ("plain", plain_block)):
        # Differentiate the parameters only (the RoPE table is constant state).
        graphdef, params, constants = nnx.split(block, nnx.Param, ...)

        def forward(params, x, graphdef=graphdef, constants=constants):
            return nnx.merge(graphdef, params, constants)(x, positions)

        def loss(params, x, forward=forward):
            return jnp.sum(forward(params, x).astype(jnp.float32) ** 2)

        out = jax.jit(forward)(params, x)
        grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
        fwd_us = per_call_us(lambda p, x, f=forward: (p, f(p, x)), (params, x))
        grad_fn = jax.grad(loss, argnums=(0, 1))
        step_us = per_call_us(lambda p, x, g=grad_fn: g(p, x), (params, x))
        results[name] = (out, grads, fwd_us, step_us)

    out, grads, fwd_us, step_us = results["fused"]
    plain_out, plain_grads, plain_fwd_us, plain_step_us = results["plain"]
    out_err = relative_error(out, plain_out)
    grad_err = max(relative_error(a, b) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(plain_grads),
                                                       strict=True))
    tolerance = 2e-2 if dtype == jnp.bfloat16 else 1e-4
    print(f"outputs: max relative difference {out_err:.2e}; gradients: {grad_err:.2e} (tolerance {tolerance:g})")
    print(f"{'':10s} {'forward µs':>12s} {'fwd+bwd µs':>12s}")
    print(f"{'fused':10s} {fwd_us:12.1f} {step_us:12.1f}")
    print(f"{'plain':10s} {plain_fwd_us:12.1f} {plain_step_us:12.1f}")
    if out_err > tolerance or grad_err > 5 * tolerance:
        raise SystemExit("the fused block does not match the plain block")


if __name__ == "__main__":
    main()
