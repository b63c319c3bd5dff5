"""A small, representative matrix of every kernel variant, forward and backward, for compute-sanitizer:
styles x forced pairs-per-warp x head_dims (tuned, vectorised generic, narrow generic) x full and partial
rotary (at 64/128/256, neox's tuned partial layout, forward and backward) x odd token counts, cache-free
and with a float32 cache (the common-input builds), the forward's cos/sin prefetch, both L2 policies of the
tuned forward, plus the packed layout with and without aliasing. Checks results too.

    XLA_PYTHON_CLIENT_ALLOCATOR=platform compute-sanitizer --tool memcheck python benchmarks/sanitize_matrix.py

SANITIZE_HEAD_DIMS (comma-separated) narrows the head_dims, for a run on the kernels of a few of them.
"""

from __future__ import annotations

import contextlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jax_qkrope as qkr
from jax_qkrope import dispatch
from jax_qkrope import reference as ref

HEAD_DIMS = tuple(int(d) for d in os.environ.get("SANITIZE_HEAD_DIMS", "64,128,256,80,66").split(","))
TOKENS = (1, 3, 17)


def rel(a, e) -> float:
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    return float(np.max(np.abs(a - e)) / max(np.max(np.abs(e)), 1e-30)) if a.size else 0.0


def rel_outputs(out, expected) -> float:
    """The worse relative error of the (q, k) outputs against the reference's."""
    return max(rel(a.astype(jnp.float32), e.astype(jnp.float32)) for a, e in zip(out, expected, strict=True))


class Mismatch(Exception):
    """A variant whose result is past the tolerance."""


def checked(err: float, label: str) -> float:
    """err, or Mismatch naming the variant where it is past the tolerance (NaN included)."""
    if not err <= 1e-2:
        raise Mismatch(f"MISMATCH {label}: {err}")
    return err


def run_matrix() -> float:
    """Runs every variant and returns the worst relative error; Mismatch at the first one past it."""
    worst = 0.0
    for d in HEAD_DIMS:
        for t in TOKENS:
            keys = jax.random.split(jax.random.PRNGKey(d * 100 + t), 4)
            q = jax.random.normal(keys[0], (t, 5, d), jnp.bfloat16)
            k = jax.random.normal(keys[1], (t, 2, d), jnp.bfloat16)
            w = (1 + 0.1 * jax.random.normal(keys[2], (d,))).astype(jnp.bfloat16)
            p = jax.random.randint(keys[3], (t,), 0, 100)
            variants = [(n, s, r) for n in (1, 2, 4, 8) for s in ("neox", "gptj") for r in (d, d // 2 // 2 * 2)]

            @jax.jit
            def run(q, k, w, p, variants=variants):
                outs = []
                for n, s, r in variants:
                    f = lambda q, k, w, n=n, s=s, r=r: qkr.fused(q, k, p, w, w, style=s, rotary_dim=r,  # noqa: E731
                                                                token_heads_per_warp=n)
                    out, vjp = jax.vjp(f, q, k, w)
                    outs.append((out, vjp(out)))
                return outs

            for (n, s, r), (out, grads) in zip(variants, run(q, k, w, p), strict=True):
                expected = ref.fused(q, k, p, w, w, style=s, rotary_dim=r)
                assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in grads)
                worst = max(worst, checked(rel_outputs(out, expected), f"d={d} t={t} N={n} {s} rotary={r}"))
        # With a float32 cos/sin cache and weights of q's dtype: the kernels built for the common inputs
        # (tuned with full rotary and, for 64/128/256, the tuned forward's partial-rotary neox layout; the
        # generic forward's PairedLayout and gptj runs), which the cache-free runs above miss.
        q = jax.random.normal(jax.random.PRNGKey(d + 5), (17, 5, d), jnp.bfloat16)
        k = jax.random.normal(jax.random.PRNGKey(d + 6), (17, 2, d), jnp.bfloat16)
        p = jax.random.randint(jax.random.PRNGKey(d + 7), (17,), 0, 100)
        w = (1 + 0.1 * jax.random.normal(jax.random.PRNGKey(d + 8), (d,))).astype(jnp.bfloat16)
        # N = 1, 2, 4 and 8 at full rotary: the single-pair kernel (forward_single_kernel) where it has a build for
        # N (N = 8: 64-dim heads; N = 4: 64 and 128), on the blocks the dispatch gives it (8 warps at N = 1, 4 at
        # N >= 4) except N = 2, forced onto 16-warp blocks. 119 pairs: the last block part empty, and at N >= 2 the
        # last warp.
        for n in (1, 2, 4, 8, 16):
            for style, rotary in (("neox", d), ("gptj", d), ("neox", d // 2 // 2 * 2)):
                cache = qkr.rope_cos_sin_cache(100, rotary)
                kw = dict(style=style, rotary_dim=rotary, cos_sin_cache=cache)

                def forward_backward(q, k, w, p, kw=kw):
                    out, vjp = jax.vjp(lambda q, k, w: qkr.fused(q, k, p, w, w, **kw), q, k, w)
                    return out, vjp(out)

                blocks = dispatch.override_single_warps_per_block(16) if n == 2 else contextlib.nullcontext()
                with dispatch.override_choice(n), blocks:
                    out, grads = jax.jit(forward_backward)(q, k, w, p)
                assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in grads)
                err = rel_outputs(out, ref.fused(q, k, p, w, w, **kw))
                worst = max(worst, checked(err, f"cached d={d} N={n} {style} rotary={rotary}"))
        # 16 pairs per warp (an auto-dispatch choice), every head_dim: the generic kernels map it to their
        # most pairs per lane; partial-rotary neox runs the tuned forward's partial layout at 64/128/256.
        q = jax.random.normal(jax.random.PRNGKey(d), (33, 5, d), jnp.bfloat16)
        k = jax.random.normal(jax.random.PRNGKey(d + 1), (33, 2, d), jnp.bfloat16)
        p = jnp.arange(33, dtype=jnp.int32)
        for style, rotary in (("neox", d), ("gptj", d), ("neox", d // 2 // 2 * 2)):
            with dispatch.override_choice(16):
                out = jax.jit(lambda q, k, p, s=style, r=rotary: qkr.fused(q, k, p, style=s, rotary_dim=r))(q, k, p)
            expected = ref.fused(q, k, p, style=style, rotary_dim=rotary)
            worst = max(worst, checked(rel_outputs(out, expected), f"d={d} N=16 {style} rotary={rotary}"))
        # The forward's cos/sin prefetch, a few pairs ahead (every warp warms rows), tuned and generic. It
        # warms a cache's rows only: cache-free calls skip it (as every matrix before session 14 did).
        q = jax.random.normal(jax.random.PRNGKey(d), (41, 5, d), jnp.bfloat16)
        k = jax.random.normal(jax.random.PRNGKey(d + 1), (41, 2, d), jnp.bfloat16)
        p = jax.random.randint(jax.random.PRNGKey(d + 2), (41,), 0, 100)
        for n, style, rotary in ((1, "neox", d), (8, "gptj", d), (8, "neox", d), (16, "neox", d // 2 // 2 * 2)):
            kw = dict(style=style, rotary_dim=rotary, cos_sin_cache=qkr.rope_cos_sin_cache(100, rotary))
            with dispatch.override_prefetch(3), dispatch.override_choice(n):
                out = jax.jit(lambda q, k, p, kw=kw: qkr.fused(q, k, p, **kw))(q, k, p)
            err = rel_outputs(out, ref.fused(q, k, p, **kw))
            worst = max(worst, checked(err, f"d={d} prefetch N={n} {style} rotary={rotary}"))
        # The tuned forward on its persistent grid, at the N whose bf16 build streams (two pairs per lane
        # group): 4001 tokens of 10 heads give each warp several tasks, the next one's loads in flight. Both
        # L2 policies on it and on the plain grid (the dispatch picks keep_outputs for every call above).
        if d in (64, 128, 256):
            q = jax.random.normal(jax.random.PRNGKey(d + 13), (4001, 7, d), jnp.bfloat16)
            k = jax.random.normal(jax.random.PRNGKey(d + 14), (4001, 3, d), jnp.bfloat16)
            p = jax.random.randint(jax.random.PRNGKey(d + 15), (4001,), 0, 100)
            w = (1 + 0.1 * jax.random.normal(jax.random.PRNGKey(d + 16), (d,))).astype(jnp.bfloat16)
            for style in ("neox", "gptj"):
                kw = dict(style=style, cos_sin_cache=qkr.rope_cos_sin_cache(100, d))
                for choice in (8, f"{1024 // d}p"):
                    for policy in dispatch.L2_POLICIES.values():
                        with dispatch.override_choice(choice), dispatch.override_l2_policy(policy):
                            out = jax.jit(lambda q, k, p, w, kw=kw: qkr.fused(q, k, p, w, w, **kw))(q, k, p, w)
                        err = rel_outputs(out, ref.fused(q, k, p, w, w, **kw))
                        worst = max(worst, checked(err, f"tuned d={d} N={choice} l2_policy={policy} {style}"))
        # The tuned forward with its cos/sin rows copied into shared memory (cp.async), forced on: the builds
        # that have that variant (two pairs per lane group) and the others, which ignore it; 7 heads per token
        # give warps of one, two and three tokens; the packed layout copies V.
        if d in (64, 128, 256):
            q = jax.random.normal(jax.random.PRNGKey(d + 17), (45, 5, d), jnp.bfloat16)
            k = jax.random.normal(jax.random.PRNGKey(d + 18), (45, 2, d), jnp.bfloat16)
            p = jax.random.randint(jax.random.PRNGKey(d + 19), (45,), 0, 100)
            w = (1 + 0.1 * jax.random.normal(jax.random.PRNGKey(d + 20), (d,))).astype(jnp.bfloat16)
            qkv = jax.random.normal(jax.random.PRNGKey(d + 21), (45, 9 * d), jnp.bfloat16)
            for n in (4, 8, 16):
                for style in ("neox", "gptj"):
                    kw = dict(style=style, cos_sin_cache=qkr.rope_cos_sin_cache(100, d))
                    with dispatch.override_choice(n), dispatch.override_shared_rows(True):
                        out = jax.jit(lambda q, k, p, w, kw=kw: qkr.fused(q, k, p, w, w, **kw))(q, k, p, w)
                        packed = jax.jit(lambda x, p, w, kw=kw: qkr.fused_qkv(x, p, 5, 2, w, w, **kw))(qkv, p, w)
                    err = rel_outputs(out, ref.fused(q, k, p, w, w, **kw))
                    err = max(err, rel(packed.astype(jnp.float32),
                                       ref.fused_qkv(qkv, p, 5, 2, w, w, **kw).astype(jnp.float32)))
                    worst = max(worst, checked(err, f"shared rows d={d} N={n} {style}"))
        # The backward on one 1-warp block per SM, so each warp runs several tasks: the generic kernel
        # copies a task's data into shared memory while it computes the one before; partial-rotary neox
        # runs the tuned backward's partial layout at 64/128/256.
        q = jax.random.normal(jax.random.PRNGKey(d + 9), (601, 5, d), jnp.bfloat16)
        k = jax.random.normal(jax.random.PRNGKey(d + 10), (601, 2, d), jnp.bfloat16)
        p = jax.random.randint(jax.random.PRNGKey(d + 11), (601,), 0, 100)
        w = (1 + 0.1 * jax.random.normal(jax.random.PRNGKey(d + 12), (d,))).astype(jnp.bfloat16)
        for n in (4, 16):
            for style, rotary in (("neox", d), ("gptj", d), ("neox", d // 2 // 2 * 2)):
                kw = dict(style=style, rotary_dim=rotary, cos_sin_cache=qkr.rope_cos_sin_cache(100, rotary))

                def grads_of(fn, q, k, w, p=p, kw=kw):  # cotangents: q and k themselves
                    return jax.vjp(lambda q, k, w: fn(q, k, p, w, w, **kw), q, k, w)[1]((q, k))

                with dispatch.override_backward(n, 1, 1):
                    grads = jax.jit(lambda q, k, w, f=grads_of: f(qkr.fused, q, k, w))(q, k, w)
                expected = grads_of(ref.fused, *(x.astype(jnp.float32) for x in (q, k, w)))
                err = max(rel(a.astype(jnp.float32), e) for a, e in zip(grads, expected, strict=True))
                worst = max(worst, checked(err, f"backward striding d={d} N={n} {style} rotary={rotary}"))
        qkv = jax.random.normal(jax.random.PRNGKey(d), (17, (4 + 2 * 2) * d), jnp.bfloat16)
        p = jnp.arange(17, dtype=jnp.int32)
        expected = ref.fused_qkv(qkv, p, 4, 2)
        for donate in ((), (0,)):
            out = jax.jit(lambda x, p: qkr.fused_qkv(x, p, 4, 2), donate_argnums=donate)(jnp.copy(qkv), p)
            err = rel(out.astype(jnp.float32), expected.astype(jnp.float32))
            worst = max(worst, checked(err, f"packed d={d} donate={donate}"))
    return worst


def main() -> int:
    try:
        worst = run_matrix()
    except Mismatch as mismatch:
        print(mismatch)
        return 1
    print(f"sanitize matrix done on {jax.devices()[0].device_kind}: worst relative error {worst:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
