"""Train the tiny Qwen3-style LM with optax on synthetic data, with the fused op and with its plain-JAX
twin from the same seed: the loss falls and the two curves agree. Prints progress, saves a PNG.

    python examples/train_tiny.py            # 300 steps (about a minute on CPU)
    python examples/train_tiny.py --quick    # 40 steps (CI)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_qkrope.qwen3 import Qwen3Config, TinyLM, next_token_loss

CONFIG = Qwen3Config(vocab_size=64, hidden=64, num_layers=2, num_q_heads=4, num_kv_heads=2, head_dim=16,
                     mlp_hidden=128, rope_theta=10000.0)


def batches(seed: int, batch: int, length: int, vocab: int):
    """Arithmetic sequences mod vocab with a random start and stride: learnable from the context."""
    rng = np.random.default_rng(seed)
    while True:
        start = rng.integers(0, vocab, (batch, 1))
        stride = rng.integers(1, 8, (batch, 1))
        yield jnp.asarray((start + stride * np.arange(length)[None, :]) % vocab, jnp.int32)


def train(use_fused: bool, steps: int, seed: int = 0, log_every: int = 25) -> list[float]:
    model = TinyLM(CONFIG, use_fused=use_fused, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adamw(3e-3, weight_decay=0.01), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, tokens):
        loss, grads = nnx.value_and_grad(next_token_loss)(model, tokens)
        optimizer.update(model, grads)
        return loss

    name = "fused" if use_fused else "plain"
    losses, data, start = [], batches(seed, 16, 33, CONFIG.vocab_size), time.perf_counter()
    for i in range(steps):
        losses.append(float(step(model, optimizer, next(data))))
        if i % log_every == 0 or i == steps - 1:
            print(f"[{name}] step {i:4d}  loss {losses[-1]:.4f}  ({time.perf_counter() - start:.1f} s)", flush=True)
    return losses


def save_plot(fused: list[float], plain: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(plain, label="plain Flax/jnp (reference op)", linewidth=3, alpha=0.5)
    ax.plot(fused, label="jax_qkrope.fused", linewidth=1)
    title = f"tiny Qwen3-style LM on {jax.default_backend()}"
    ax.set(xlabel="step", ylabel="next-token loss", yscale="log", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="40 steps, no plot")
    parser.add_argument("--plot", type=Path, default=Path("train_tiny.png"))
    args = parser.parse_args()
    steps = 40 if args.quick else args.steps
    fused, plain = train(True, steps), train(False, steps)
    gap = max(abs(a - b) / b for a, b in zip(fused, plain, strict=True))
    print(f"loss {fused[0]:.3f} -> {fused[-1]:.3f} (fused), {plain[0]:.3f} -> {plain[-1]:.3f} (plain); "
          f"largest relative gap between the curves {gap:.2e}")
    if not args.quick:
        save_plot(fused, plain, args.plot)
    if not fused[-1] < 0.7 * fused[0]:
        raise SystemExit("the loss did not fall")
    if gap > 2e-2:
        raise SystemExit("the fused and plain curves differ")


if __name__ == "__main__":
    main()
