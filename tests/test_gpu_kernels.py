"""Every CUDA kernel variant vs the reference, on the GPU: forced pairs-per-warp x head_dims (tuned,
vectorised generic, narrow generic) x styles x partial rotary; token counts; unaligned packed heads;
chains under CUDA-graph capture and programmatic dependent launch; L2 cache policies; 64-bit indexing."""

from __future__ import annotations

import contextlib
import functools
import itertools

import jax
import jax.numpy as jnp
import pytest
from conftest import DTYPES, assert_close, random_heads, random_positions, random_weight, requires_gpu

import jax_qkrope as qkr
from jax_qkrope import dispatch
from jax_qkrope import reference as ref

pytestmark = requires_gpu

# 64/128/256 tuned; 80, 96, 192, 512 (and 72 for bf16) vectorised generic; 2, 6, 66 narrow generic.
HEAD_DIMS = (2, 6, 64, 66, 72, 80, 96, 128, 192, 256, 512)


def partial_rotaries(head_dim: int) -> tuple[int, ...]:
    return tuple(sorted({head_dim, max(2, head_dim // 2 // 2 * 2), 2}))


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_forced_pairs_per_warp_forward_and_backward(dtype, head_dim):
    keys = jax.random.split(jax.random.PRNGKey(head_dim), 7)
    tokens = (37,)  # odd: partial warps and blocks
    q = random_heads(keys[0], tokens, 6, head_dim, dtype)
    k = random_heads(keys[1], tokens, 3, head_dim, dtype)
    wq, wk = random_weight(keys[2], head_dim, dtype), random_weight(keys[3], head_dim)
    positions = random_positions(keys[4], tokens, 3000)
    cot = (random_heads(keys[5], tokens, 6, head_dim, dtype), random_heads(keys[6], tokens, 3, head_dim, dtype))
    variants = [(n, s, r) for n in (1, 2, 4, 8) for s in ("neox", "gptj") for r in partial_rotaries(head_dim)]
    up = lambda x: x.astype(jnp.float32)  # noqa: E731

    @jax.jit
    def run(q, k, wq, wk, positions, cot):
        results = []
        for n, style, rotary in variants:
            kw = dict(style=style, rotary_dim=rotary)
            ours = functools.partial(qkr.fused, token_heads_per_warp=n, **kw)
            out, vjp = jax.vjp(lambda *a, f=ours: f(*a[:2], positions, *a[2:]), q, k, wq, wk)
            ref_out, ref_vjp = jax.vjp(lambda *a, kw=kw: ref.fused(*a[:2], positions, *a[2:], **kw),
                                       up(q), up(k), up(wq), up(wk))
            results.append((out, vjp(cot), ref_out, ref_vjp(tuple(map(up, cot)))))
        return results

    for variant, (out, grads, ref_out, ref_grads) in zip(variants, run(q, k, wq, wk, positions, cot), strict=True):
        for a, e in zip(out, ref_out, strict=True):
            assert_close(a, e.astype(dtype), dtype, f"forward {variant}")
        for name, a, e in zip(("dq", "dk", "dwq", "dwk"), grads, ref_grads, strict=True):
            scale = 2e-2 / 1e-5 if dtype != jnp.float32 else 1.0
            assert_close(a, e, jnp.float32, f"{name} {variant}", scale=scale)


@pytest.mark.parametrize("head_dim", (64, 72, 80, 128, 256))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("ahead", (1, 37, 1000))
def test_row_prefetch_leaves_results_unchanged(ahead, dtype, head_dim):
    """The forward's L2 warm-up of cos/sin rows `ahead` pairs on is only a hint: at distances shorter than a
    warp, a few tokens and most of the call, every N, style, cache dtype and a cache-free table (nothing to
    warm) still give the reference's results, in the tuned kernels and the generic ones (72: neox partners
    through shared memory for 2-byte types; 80: PairedLayout)."""
    keys = jax.random.split(jax.random.PRNGKey(head_dim + ahead), 5)
    tokens = (301,)
    q = random_heads(keys[0], tokens, 7, head_dim, dtype)
    k = random_heads(keys[1], tokens, 3, head_dim, dtype)
    w = random_weight(keys[2], head_dim, dtype)
    positions = random_positions(keys[3], tokens, 4999)
    caches = {c: qkr.rope_cos_sin_cache(4999, head_dim, dtype=c) for c in (jnp.float32, jnp.bfloat16)}
    variants = [(n, s, c) for n in (1, 2, 8, 16) for s in ("neox", "gptj") for c in (jnp.float32, jnp.bfloat16, None)]

    def call(q, k, n, style, cache):
        return qkr.fused(q, k, positions, w, w, style=style, cos_sin_cache=cache, token_heads_per_warp=n)

    with dispatch.override_prefetch(ahead):
        for n, style, cache_dtype in variants:
            cache = None if cache_dtype is None else caches[cache_dtype]
            # A fresh jit per variant, lowered under the override (16 pairs is an auto-only choice).
            with dispatch.override_choice(n) if n == 16 else contextlib.nullcontext():
                out = jax.jit(functools.partial(call, n=None if n == 16 else n, style=style, cache=cache))(q, k)
            expected = ref.fused(q, k, positions, w, w, style=style, cos_sin_cache=cache)
            for a, e in zip(out, expected, strict=True):
                assert_close(a, e.astype(dtype), dtype, f"ahead {ahead} N={n} {style} cache {cache_dtype}")


@pytest.mark.parametrize(("head_dim", "rotary"), [(64, 64), (128, 128), (256, 256), (80, 80), (128, 64), (96, 40)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_common_and_general_input_kernels(dtype, head_dim, rotary):
    """The tuned kernels are built twice: for the common inputs (f32 cache, full rotary, weights absent or of
    q's dtype) without run-time type switches, and for any inputs; so are the generic forward's neox
    PairedLayout (80, and 128 with rotary_dim 64) and its gptj with whole chunks of rotary dims (80, and 96
    with rotary_dim 40, whose neox exchanges partners through shared memory). Inputs on both sides of that
    line, at every N and style, with a weight offset and one weight missing, match the reference, forward
    and backward; the backward on a grid of one 1-warp block per SM, so each warp runs many tasks back to
    back."""
    keys = jax.random.split(jax.random.PRNGKey(head_dim + 3), 8)
    tokens = (53,)
    q = random_heads(keys[0], tokens, 5, head_dim, dtype)
    k = random_heads(keys[1], tokens, 2, head_dim, dtype)
    positions = random_positions(keys[2], tokens, 3000)
    same, f32 = random_weight(keys[3], head_dim, dtype), random_weight(keys[4], head_dim)
    cot = (random_heads(keys[5], tokens, 5, head_dim, dtype), random_heads(keys[6], tokens, 2, head_dim, dtype))
    other = jnp.bfloat16 if dtype != jnp.bfloat16 else jnp.float16
    tables = {c: qkr.rope_cos_sin_cache(3000, rotary, dtype=c) for c in (jnp.float32, other)}
    cases = {  # name: (q_weight, k_weight, cache dtype, weight_offset); the first two take the common kernel
        "common": (same, same, jnp.float32, 0.0),
        "common, k weight missing, offset": (same, None, jnp.float32, 1.0),
        "weights of another dtype": (f32 if dtype != jnp.float32 else same.astype(other), same, jnp.float32, 0.0),
        "cache of another dtype": (same, same, other, 0.5),
    }
    up = lambda x: x.astype(jnp.float32)  # noqa: E731
    # A gradient comes back in its input's dtype: a bf16 weight's is rounded to bf16 even when q is f32.
    grad_scale = lambda x: 2e-2 / 1e-5 if x.dtype != jnp.float32 else 10.0  # noqa: E731
    for n in (1, 2, 4, 8, 16):
        for style in ("neox", "gptj"):
            for name, (wq, wk, cache_dtype, offset) in cases.items():
                kw = dict(style=style, rotary_dim=rotary, cos_sin_cache=tables[cache_dtype], weight_offset=offset)
                args = (q, k, wq) if wk is None else (q, k, wq, wk)  # a missing weight has no gradient

                def run(args, cot, kw=kw):  # a fresh jit per variant: lowered under the overrides
                    out, vjp = jax.vjp(lambda *xs: qkr.fused(*xs[:2], positions, *xs[2:], **kw), *args)
                    return out, vjp(cot)

                with dispatch.override_choice(n), dispatch.override_backward(min(n, 8), 1, 1):
                    ours, grads = jax.jit(run)(args, cot)
                reference = lambda *xs, kw=kw: ref.fused(*xs[:2], positions, *xs[2:], **kw)  # noqa: E731
                expected, ref_vjp = jax.vjp(reference, *map(up, args))
                for a, e in zip(ours, expected, strict=True):
                    assert_close(a, e.astype(dtype), dtype, f"{name} N={n} {style}")
                names = ("dq", "dk", "dwq", "dwk")[: len(args)]
                for gname, x, a, e in zip(names, args, grads, ref_vjp(tuple(map(up, cot))), strict=True):
                    assert_close(a, e, jnp.float32, f"{gname} {name} N={n} {style}", scale=grad_scale(x))


@pytest.mark.parametrize("head_dim", (64, 128, 256))
@pytest.mark.parametrize("pos_dtype", ("int32", "int64"))
def test_positions_read_as_words(pos_dtype, head_dim):
    """The staged common-input kernels (N >= 4) read each position as two 32-bit words with no branch (int64:
    low and high word; int32: one word twice) and widen it only where it is used. Negative positions, ones
    past the cache and, for int64, ones whose high word is set clamp to the cache's rows as in the reference;
    an odd token count and 7 heads put pairs past the end of the grid and warps across tokens."""
    with jax.enable_x64(pos_dtype == "int64"):
        keys = jax.random.split(jax.random.PRNGKey(head_dim + 11), 4)
        tokens = (41,)
        q = random_heads(keys[0], tokens, 5, head_dim, jnp.bfloat16)
        k = random_heads(keys[1], tokens, 2, head_dim, jnp.bfloat16)
        w = random_weight(keys[2], head_dim, jnp.bfloat16)
        rows = 700
        special = [-1, -(2**31), 2**31 - 1, rows, rows - 1, 0]
        if pos_dtype == "int64":
            special += [2**32 + 5, -(2**32) + 3, 2**40]
        positions = random_positions(keys[3], tokens, rows, jnp.dtype(pos_dtype))
        positions = positions.at[: len(special)].set(jnp.asarray(special, jnp.dtype(pos_dtype)))
        assert positions.dtype == jnp.dtype(pos_dtype)
        cache = qkr.rope_cos_sin_cache(rows, head_dim)
        for n in (4, 8, 16):
            for style in ("neox", "gptj"):
                with dispatch.override_choice(n):  # 16 is an auto-only choice: lowered under the override
                    out = jax.jit(lambda q, k, p, s=style: qkr.fused(q, k, p, w, w, style=s, cos_sin_cache=cache))(
                        q, k, positions)
                expected = ref.fused(q, k, positions, w, w, style=style, cos_sin_cache=cache)
                for a, e in zip(out, expected, strict=True):
                    assert_close(a, e.astype(jnp.bfloat16), jnp.bfloat16, f"{pos_dtype} N={n} {style}")


@pytest.mark.parametrize("head_dim", (64, 128, 256))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("shared", [False, True], ids=["held_rows", "shared_rows"])
def test_warps_spanning_tokens_read_each_tokens_row(shared, dtype, head_dim):
    """A lane group of several pairs reuses its token's cos/sin: held in registers, or (shared rows, where a
    build has them) copied for the warp's first and last token into shared memory, a pair of a token between
    them reading its own. 2, 5 and 16 heads per token at N = 4, 8, 16 give warps of one, two and up to eight
    tokens, and every token its own position."""
    keys = jax.random.split(jax.random.PRNGKey(head_dim + 29), 4)
    tokens = (301,)
    rows = 4096
    cache = qkr.rope_cos_sin_cache(rows, head_dim)
    positions = jax.random.permutation(keys[0], rows)[: tokens[0]].astype(jnp.int32)  # distinct rows
    w = random_weight(keys[3], head_dim, dtype)
    for hq, hk in ((1, 1), (3, 2), (9, 7)):
        q = random_heads(keys[1], tokens, hq, head_dim, dtype)
        k = random_heads(keys[2], tokens, hk, head_dim, dtype)
        for n in (4, 8, 16):
            for style in ("neox", "gptj"):
                with dispatch.override_choice(n), dispatch.override_shared_rows(shared):  # lowered under them
                    out = jax.jit(lambda q, k, p, s=style: qkr.fused(q, k, p, w, w, style=s, cos_sin_cache=cache))(
                        q, k, positions)
                expected = ref.fused(q, k, positions, w, w, style=style, cos_sin_cache=cache)
                for a, e in zip(out, expected, strict=True):
                    assert_close(a, e.astype(dtype), dtype, f"({hq}, {hk}) N={n} {style} shared={shared}")


# (dtype, head_dim, N) where a lane group of the tuned forward holds two pairs: the builds of its persistent
# (streaming) kernel.
STREAMING_BUILDS = [(jnp.bfloat16, 64, 16), (jnp.bfloat16, 128, 8), (jnp.bfloat16, 256, 4), (jnp.float16, 128, 8),
                    (jnp.float32, 64, 8), (jnp.float32, 128, 4), (jnp.float32, 256, 2)]


@pytest.mark.parametrize(("dtype", "head_dim", "n"), STREAMING_BUILDS, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("tokens", (1, 999, 4001))
def test_persistent_forward_matches_reference(tokens, dtype, head_dim, n):
    """The tuned forward on a persistent grid: at 4001 tokens of 10 heads each warp runs several tasks, the
    next one's loads in flight while it computes the current one; tasks straddle tokens and the q/k boundary,
    the last ones run past the end. Both styles, a k weight missing with an offset, and the packed layout
    with an unaliased output (V copied), against the reference."""
    keys = jax.random.split(jax.random.PRNGKey(tokens + head_dim), 5)
    q = random_heads(keys[0], (tokens,), 7, head_dim, dtype)
    k = random_heads(keys[1], (tokens,), 3, head_dim, dtype)
    w = random_weight(keys[2], head_dim, dtype)
    positions = random_positions(keys[3], (tokens,), 3000)
    cache = qkr.rope_cos_sin_cache(3000, head_dim)
    qkv = random_heads(keys[4], (tokens,), 13, head_dim, dtype).reshape(tokens, 13 * head_dim)
    with dispatch.override_persistent(True), dispatch.override_choice(n):
        for style in ("neox", "gptj"):
            for wk, offset in ((w, 0.0), (None, 1.0)):
                kw = dict(style=style, cos_sin_cache=cache, weight_offset=offset)
                out = jax.jit(lambda q, k, p, wk=wk, kw=kw: qkr.fused(q, k, p, w, wk, **kw))(q, k, positions)
                expected = ref.fused(q, k, positions, w, wk, **kw)
                for a, e in zip(out, expected, strict=True):
                    assert_close(a, e.astype(dtype), dtype, f"N={n} {style} offset {offset}")
            kw = dict(style=style, cos_sin_cache=cache)
            packed = jax.jit(lambda x, p, kw=kw: qkr.fused_qkv(x, p, 7, 3, w, w, **kw))(qkv, positions)
            assert jnp.array_equal(packed[:, 10 * head_dim :], qkv[:, 10 * head_dim :])
            expected = ref.fused_qkv(qkv, positions, 7, 3, w, w, **kw)
            assert_close(packed, expected.astype(dtype), dtype, f"packed N={n} {style}")


def l2_policy_inputs(seed: int, head_dim: int, dtype) -> tuple:
    """q (7 heads), k (3), a weight, positions and a packed qkv of 13 heads, for 1001 tokens."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 5)
    tokens = 1001
    return (random_heads(keys[0], (tokens,), 7, head_dim, dtype), random_heads(keys[1], (tokens,), 3, head_dim, dtype),
            random_weight(keys[2], head_dim, dtype), random_positions(keys[3], (tokens,), 3000),
            random_heads(keys[4], (tokens,), 13, head_dim, dtype).reshape(tokens, 13 * head_dim))


def fused_and_packed(inputs: tuple, wk, kw: dict) -> tuple:
    """fused on q and k, and fused_qkv on the packed qkv (7 q heads, 3 k, 3 V), lowered under the overrides
    in force: (q out, k out, packed out)."""
    q, k, w, positions, qkv = inputs
    out = jax.jit(lambda q, k, p: qkr.fused(q, k, p, w, wk, **kw))(q, k, positions)
    packed = jax.jit(lambda x, p: qkr.fused_qkv(x, p, 7, 3, w, wk, **kw))(qkv, positions)
    return (*out, packed)


def assert_l2_policies_agree(inputs: tuple, choice: int | str, kw: dict, dtype, label: str) -> None:
    """Each L2 policy forced in turn on fused and fused_qkv at N = choice: results match the reference and
    are bit for bit those of plain accesses (policy 0), and the packed V passes through untouched."""
    q, k, w, positions, qkv = inputs
    head_dim = q.shape[-1]
    expected = ref.fused(q, k, positions, w, w, **kw)
    results = {}
    for policy in dispatch.L2_POLICIES.values():
        with dispatch.override_choice(choice), dispatch.override_l2_policy(policy):
            results[policy] = fused_and_packed(inputs, w, kw)
        assert jnp.array_equal(results[policy][2][:, 10 * head_dim :], qkv[:, 10 * head_dim :])
        for a, e in zip(results[policy][:2], expected, strict=True):
            assert_close(a, e.astype(dtype), dtype, f"{label} policy {policy}")
    for policy, arrays in results.items():
        for a, b in zip(arrays, results[0], strict=True):
            assert jnp.array_equal(a, b), f"{label}: policy {policy} differs from plain accesses"


@pytest.mark.parametrize("head_dim", (64, 128, 256))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_l2_policies_leave_results_unchanged(dtype, head_dim):
    """The tuned forward's L2 cache hints change where lines live, never a value: every policy gives the
    plain accesses' results bit for bit, and those match the reference. N = 1 moves 2- and 4-byte words
    (64-dim heads), larger N 8- and 16-byte ones; the plain and persistent grids, the common-input and
    any-input builds (a bf16 cache), and the packed layout's V copies (stored under the policy too)."""
    inputs = l2_policy_inputs(head_dim + 7, head_dim, dtype)
    for choice, style, table in [(1, "neox", jnp.float32), (4, "gptj", jnp.float32), ("8p", "neox", jnp.float32),
                                 (16, "gptj", jnp.bfloat16), ("16p", "neox", jnp.float32)]:
        kw = dict(style=style, cos_sin_cache=qkr.rope_cos_sin_cache(3000, head_dim).astype(table))
        assert_l2_policies_agree(inputs, choice, kw, dtype, f"N={choice} {style}")


@pytest.mark.parametrize("head_dim", (64, 128, 256))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_shared_rows_match_held_rows_bit_for_bit(dtype, head_dim):
    """Copying the cos/sin rows into shared memory changes where a lane reads them, never a value: at every N,
    both styles, a k weight missing with an offset, and the packed layout (V copied), shared rows give the
    held rows' results bit for bit, and those match the reference."""
    inputs = l2_policy_inputs(head_dim + 19, head_dim, dtype)
    q, k, w, positions, qkv = inputs
    cache = qkr.rope_cos_sin_cache(3000, head_dim)
    for n in (2, 4, 8, 16):
        for style in ("neox", "gptj"):
            for wk, offset in ((w, 0.0), (None, 1.0)):
                kw = dict(style=style, cos_sin_cache=cache, weight_offset=offset)
                results = []
                for shared in (False, True):
                    with dispatch.override_choice(n), dispatch.override_shared_rows(shared):
                        results.append(fused_and_packed(inputs, wk, kw))
                label = f"N={n} {style} offset {offset}"
                for a, b in zip(*results, strict=True):
                    assert jnp.array_equal(a, b), f"{label}: shared rows differ from held rows"
                expected = ref.fused(q, k, positions, w, wk, **kw)
                for a, e in zip(results[1][:2], expected, strict=True):
                    assert_close(a, e.astype(dtype), dtype, label)
                assert jnp.array_equal(results[1][2][:, 10 * head_dim :], qkv[:, 10 * head_dim :])


@pytest.mark.parametrize("head_dim", (64, 80, 128, 256))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_forward_block_sizes_agree_bit_for_bit(dtype, head_dim):
    """The forward's warps per block changes which warps share a block (staged weights, the persistent
    grid's size), never a value: 1, 2 and 8 warps give the default 4's results bit for bit at every N, on
    the plain and persistent grids, with shared rows, both styles and a missing k weight with an offset,
    and those match the reference. So do the single-pair kernel's blocks of 9 and 16 warps (N = 1 and 2,
    past the other kernels' 8), the last block part empty."""
    inputs = l2_policy_inputs(head_dim + 23, head_dim, dtype)
    q, k, w, positions, qkv = inputs
    cache = qkr.rope_cos_sin_cache(3000, head_dim)
    modes = [(n, False) for n in (1, 2, 4, 8, 16)] + [("8p", False), ("16p", False), (8, True)]
    for (choice, shared), style, (wk, offset) in itertools.product(modes, ("neox", "gptj"), ((w, 0.0), (None, 1.0))):
        kw = dict(style=style, cos_sin_cache=cache, weight_offset=offset)
        results = {}
        for warps, single in ((4, None), (1, None), (2, None), (8, None), (4, 9), (4, 16)):
            with (dispatch.override_choice(choice), dispatch.override_shared_rows(shared),
                  dispatch.override_forward_warps_per_block(warps),
                  dispatch.override_single_warps_per_block(single or warps)):
                results[warps, single] = fused_and_packed(inputs, wk, kw)
        label = f"N={choice} shared={shared} {style} offset {offset}"
        for sizes, result in results.items():
            for a, b in zip(result, results[4, None], strict=True):
                assert jnp.array_equal(a, b), f"{label}: (warps, single-pair warps) {sizes} differ from 4"
        for a, e in zip(results[4, None][:2], ref.fused(q, k, positions, w, wk, **kw), strict=True):
            assert_close(a, e.astype(dtype), dtype, label)
        assert jnp.array_equal(results[4, None][2][:, 10 * head_dim :], qkv[:, 10 * head_dim :])


@pytest.mark.parametrize("head_dim", (66, 80, 128, 192, 512))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_l2_policies_leave_generic_results_unchanged(dtype, head_dim):
    """The generic forward (built with and without the hints, one picked per launch), likewise. Its chunks
    run from 4-byte words (66 at bf16/f16) to 16-byte ones; 128-dim heads reach it through neox with partial
    rotary (the paired and shared-memory layouts), the others at full rotary too."""
    inputs = l2_policy_inputs(head_dim + 11, head_dim, dtype)
    rotaries = [r for r in (head_dim, head_dim // 4 * 2, head_dim // 4 * 2 - 2) if head_dim != 128 or r < head_dim]
    for choice, style, rotary in [(n, s, r) for n in (1, 16) for s in ("neox", "gptj") for r in rotaries
                                  if s == "neox" or head_dim != 128]:
        kw = dict(style=style, rotary_dim=rotary, cos_sin_cache=qkr.rope_cos_sin_cache(3000, rotary))
        assert_l2_policies_agree(inputs, choice, kw, dtype, f"N={choice} {style} rotary={rotary}")


@pytest.mark.parametrize("head_dim", (64, 80, 128, 192, 256, 512))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_sixteen_pairs_per_warp(dtype, head_dim):
    """16 pairs per warp (an auto-dispatch choice), every style, odd sizes, GQA, partial rotary (half the
    head: the tuned kernels' partial layout for neox at 64/128/256), caches of every dtype, and packed V
    copies. The generic kernels (80, 192, 512) map 16 to at most kGenericRounds pairs per lane group: 4
    groups of 4 rounds for 80, 2 of 4 for 192 (bf16), one group for 512."""
    keys = jax.random.split(jax.random.PRNGKey(head_dim + 1), 5)
    variants = [(t, s, r, c) for t in (1, 3, 1001) for s in ("neox", "gptj") for r in (head_dim, head_dim // 2)
                for c in (None, jnp.float32, jnp.bfloat16)]
    w = random_weight(keys[2], head_dim, dtype)

    def make(t):
        return (random_heads(keys[0], (t,), 7, head_dim, dtype), random_heads(keys[1], (t,), 3, head_dim, dtype),
                random_positions(keys[3], (t,), 5000))

    with dispatch.override_choice(16):
        for tokens, style, rotary, cache_dtype in variants:
            q, k, positions = make(tokens)
            cache = None if cache_dtype is None else qkr.rope_cos_sin_cache(5000, rotary, dtype=cache_dtype)
            kw = dict(style=style, rotary_dim=rotary, cos_sin_cache=cache)
            ours = jax.jit(lambda q, k, p, c, kw=kw: qkr.fused(q, k, p, w, w, **{**kw, "cos_sin_cache": c}))(
                q, k, positions, cache)
            expected = ref.fused(q, k, positions, w, w, **kw)
            for a, e in zip(ours, expected, strict=True):
                assert_close(a, e, dtype, f"16 pairs {tokens} {style} {rotary} {cache_dtype}")
        qkv = random_heads(keys[4], (999,), 6 + 2 * 2, head_dim, dtype).reshape(999, -1)
        positions = random_positions(keys[3], (999,), 5000)
        ours = jax.jit(lambda x, p: qkr.fused_qkv(x, p, 6, 2, w, w))(qkv, positions)
        assert jnp.array_equal(ours[:, 8 * head_dim :], qkv[:, 8 * head_dim :])
        assert_close(ours, ref.fused_qkv(qkv, positions, 6, 2, w, w), dtype, "16 pairs packed")


def partial_rotary_cases(w_key, w32_key, head_dim: int, dtype) -> tuple[tuple[int, ...], dict]:
    """The tuned partial layout's rotary_dims (the smallest rotary half of whole 16-byte chunks, half the head,
    all but one chunk pair) and its input cases, name: (q_weight, k_weight, cache dtype or None for cache-free,
    weight_offset): the common inputs (f32 cache, weights of q's dtype or one missing) and others."""
    vec = 16 // jnp.dtype(dtype).itemsize
    w, w32 = random_weight(w_key, head_dim, dtype), random_weight(w32_key, head_dim)
    return (2 * vec, head_dim // 2, head_dim - 2 * vec), {
        "common": (w, w, jnp.float32, 0.0),
        "common, k weight missing, offset": (w, None, jnp.float32, 1.0),
        "bf16 cache, f32 weight": (w, w32, jnp.bfloat16, 0.0),
        "cache-free": (w, w, None, 0.0),
    }


@pytest.mark.parametrize("head_dim", (64, 128, 256))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_tuned_partial_rotary_neox(dtype, head_dim):
    """neox with rotary_dim < head_dim and a rotary half of whole 16-byte chunks runs the tuned forward in its
    partial layout (lane gl < H holds chunks gl and gl + H, the others two pass-through chunks): the smallest
    such half, half the head and all but one chunk pair, at every N (16 on 1001 tokens: several blocks, a
    partial last warp), for the common inputs (f32 cache, weights of q's dtype or missing) and any others
    (a bf16 cache with an f32 weight, cache-free), GQA, and packed qkv with V copied bit for bit."""
    keys = jax.random.split(jax.random.PRNGKey(head_dim + 7), 8)
    rotaries, cases = partial_rotary_cases(keys[0], keys[1], head_dim, dtype)
    w = cases["common"][0]

    def heads(tokens):
        return (random_heads(keys[2], tokens, 6, head_dim, dtype), random_heads(keys[3], tokens, 3, head_dim, dtype),
                random_positions(keys[4], tokens, 3000))

    def variants(ns):
        return [(n, r, c) for n in ns for r in rotaries for c in cases]

    def call(q, k, positions, n, rotary, case):
        wq, wk, cache_dtype, offset = cases[case]
        cache = None if cache_dtype is None else qkr.rope_cos_sin_cache(3000, rotary, dtype=cache_dtype)
        kw = dict(style="neox", rotary_dim=rotary, cos_sin_cache=cache, weight_offset=offset)
        ours = qkr.fused(q, k, positions, wq, wk, token_heads_per_warp=n, **kw)
        return ours, ref.fused(q, k, positions, wq, wk, **kw)

    for tokens, ns in (((37,), (1, 2, 4, 8)), ((1001,), (None,))):
        q, k, positions = heads(tokens)
        run = jax.jit(lambda q, k, positions, ns=ns: [call(q, k, positions, *v) for v in variants(ns)])
        with dispatch.override_choice(16) if ns == (None,) else contextlib.nullcontext():
            results = run(q, k, positions)
        for variant, (ours, expected) in zip(variants(ns), results, strict=True):
            for a, e in zip(ours, expected, strict=True):
                n, rotary, case = variant
                assert_close(a, e.astype(dtype), dtype, f"{tokens} N={n or 16} rotary={rotary} {case}")
    qkv = random_heads(keys[5], (999,), 6 + 2 * 2, head_dim, dtype).reshape(999, -1)
    positions = random_positions(keys[6], (999,), 3000)
    packed = dict(rotary_dim=head_dim // 2, token_heads_per_warp=8)
    ours = jax.jit(lambda x, p: qkr.fused_qkv(x, p, 6, 2, w, w, **packed))(qkv, positions)
    assert jnp.array_equal(ours[:, 8 * head_dim :], qkv[:, 8 * head_dim :])
    expected = ref.fused_qkv(qkv, positions, 6, 2, w, w, rotary_dim=head_dim // 2)
    assert_close(ours, expected.astype(dtype), dtype, "packed qkv")


@pytest.mark.parametrize("head_dim", (64, 128, 256))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_tuned_partial_rotary_neox_backward(dtype, head_dim):
    """The tuned backward in the partial layout (the forward's: lane gl < H holds chunks gl and gl + H, the
    others two pass-through chunks): the three rotary_dims of the forward's test, at every N on a grid of one
    1-warp block per SM (each warp runs many tasks, crossing tokens and the q/k boundary), for the common
    inputs (with a missing weight and an offset) and others (a bf16 cache with an f32 weight, cache-free):
    dq, dk and both weight gradients against the reference's."""
    keys = jax.random.split(jax.random.PRNGKey(head_dim + 11), 8)
    rotaries, cases = partial_rotary_cases(keys[5], keys[6], head_dim, dtype)
    tokens = (1001,)
    q, k = random_heads(keys[0], tokens, 6, head_dim, dtype), random_heads(keys[1], tokens, 3, head_dim, dtype)
    positions = random_positions(keys[2], tokens, 3000)
    cot = (random_heads(keys[3], tokens, 6, head_dim, dtype), random_heads(keys[4], tokens, 3, head_dim, dtype))
    up = lambda x: x.astype(jnp.float32)  # noqa: E731
    grad_scale = lambda x: 2e-2 / 1e-5 if x.dtype != jnp.float32 else 10.0  # noqa: E731

    def options(rotary, case):
        cache_dtype, offset = cases[case][2:]
        cache = None if cache_dtype is None else qkr.rope_cos_sin_cache(3000, rotary, dtype=cache_dtype)
        return dict(style="neox", rotary_dim=rotary, cos_sin_cache=cache, weight_offset=offset)

    def arguments(case):
        wq, wk = cases[case][:2]
        return (q, k, wq) if wk is None else (q, k, wq, wk)  # a missing weight has no gradient

    def vjp_of(fused, variant, args, cot):
        kw = options(*variant)
        return jax.vjp(lambda *xs: fused(*xs[:2], positions, *xs[2:], **kw), *args)[1](cot)

    variants = [(r, c) for r in rotaries for c in cases]
    expected = [vjp_of(ref.fused, v, tuple(map(up, arguments(v[1]))), tuple(map(up, cot))) for v in variants]
    for n in (1, 2, 4, 8):
        with dispatch.override_backward(n, 1, 1):  # lowered under the override: a fresh jit per N
            ours = jax.jit(lambda cot: [vjp_of(qkr.fused, v, arguments(v[1]), cot) for v in variants])(cot)
        for (rotary, case), grads, ref_grads in zip(variants, ours, expected, strict=True):
            names = ("dq", "dk", "dwq", "dwk")[: len(grads)]
            for gname, x, a, e in zip(names, arguments(case), grads, ref_grads, strict=True):
                assert_close(a, e, jnp.float32, f"{gname} N={n} rotary={rotary} {case}", scale=grad_scale(x))


# (head_dim, rotary_dim): the tuned kernels, then the generic ones: neox partners in one lane (80, and 128
# with rotary 64, whose gptj runs the tuned kernel), through shared memory (72 in bf16 and f16: 36 is not
# whole 8-element chunks) and 2-element chunks (90).
STRIDING_HEADS = ((64, None), (128, None), (256, None), (80, None), (72, None), (90, None), (128, 64))


@pytest.mark.parametrize(("head_dim", "rotary"), STRIDING_HEADS, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_backward_warps_striding_over_many_batches(dtype, head_dim, rotary):
    """The backward's persistent grid shrunk to 1-warp blocks, one per SM, so every warp loops over many
    batches (the generic kernel fetches each next batch while it computes the current one): every N (16
    reaches the generic kernel's most rounds per batch), both styles, GQA, many repeated positions,
    batches crossing token boundaries; forward, packed V copies, grads and weight grads."""
    keys = jax.random.split(jax.random.PRNGKey(head_dim + 7), 8)
    tokens = 1001
    q = random_heads(keys[0], (tokens,), 7, head_dim, dtype)
    k = random_heads(keys[1], (tokens,), 3, head_dim, dtype)
    wq, wk = random_weight(keys[2], head_dim, dtype), random_weight(keys[3], head_dim, dtype)
    positions = random_positions(keys[4], (tokens,), 64) // 4  # 16 distinct values: many repeats
    cot = (random_heads(keys[5], (tokens,), 7, head_dim, dtype), random_heads(keys[6], (tokens,), 3, head_dim, dtype))
    qkv = random_heads(keys[7], (tokens,), 7 + 2 * 3, head_dim, dtype).reshape(tokens, -1)
    up = lambda x: x.astype(jnp.float32)  # noqa: E731
    for n in dispatch.AUTO_CHOICES:
        for style in ("neox", "gptj"):
            kw = dict(style=style, rotary_dim=rotary)

            def run(q, k, wq, wk, cot, qkv, kw=kw):  # a fresh jit per variant: lowered under the overrides
                out, vjp = jax.vjp(lambda q, k, wq, wk: qkr.fused(q, k, positions, wq, wk, **kw), q, k, wq, wk)
                return out, vjp(cot), qkr.fused_qkv(qkv, positions, 7, 3, wq, wk, **kw)

            with dispatch.override_choice(n), dispatch.override_backward(n, 1, 1):
                out, grads, packed = jax.jit(run)(q, k, wq, wk, cot, qkv)
            ref_out, ref_vjp = jax.vjp(lambda q, k, wq, wk, kw=kw: ref.fused(q, k, positions, wq, wk, **kw),
                                       up(q), up(k), up(wq), up(wk))
            for a, e in zip(out, ref_out, strict=True):
                assert_close(a, e.astype(dtype), dtype, f"strided forward N={n} {style}")
            for name, a, e in zip(("dq", "dk", "dwq", "dwk"), grads, ref_vjp(tuple(map(up, cot))), strict=True):
                scale = 2e-2 / 1e-5 if dtype != jnp.float32 else 10.0
                assert_close(a, e, jnp.float32, f"strided {name} N={n} {style}", scale=scale)
            assert jnp.array_equal(packed[:, 10 * head_dim :], qkv[:, 10 * head_dim :])
            expected = ref.fused_qkv(up(qkv), positions, 7, 3, up(wq), up(wk), **kw)
            assert_close(packed, expected.astype(dtype), dtype, f"strided packed N={n} {style}")


@pytest.mark.parametrize("pairs_per_warp", (1, 2, 4, 8))
@pytest.mark.parametrize("positions_dtype", (jnp.int32, jnp.int64), ids=("int32", "int64"))
@pytest.mark.parametrize("head_dim", (64, 128, 256))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_single_pair_kernel(dtype, head_dim, positions_dtype, pairs_per_warp):
    """N = 1, 2, 4 or 8 with the common inputs at full rotary and no cos/sin prefetch runs the single-pair kernel
    (forward_single_kernel, one pair per lane group) where it has a build for N (single_kernel_for: N = 8 only for
    16-bit 64-dim heads, N = 4 not for 256-dim or float32 128-dim ones, N = 2 not for float32 256-dim ones; the
    others run the tuned kernel); with the prefetch on, the tuned kernel at the same N. Both against the reference and
    each other: both styles, weights of q's dtype with an offset or none, positions that clamp (int64 ones
    outside int32 too, whose high word is not the low word's sign extension), an odd token count and an odd
    head count (at N >= 2 a warp's pairs then straddle tokens, and the last warp has one pair), and a packed qkv
    whose V is copied (not donated: the tuned kernel, which copies V) or left in place (donated: the
    single-pair kernel)."""
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.PRNGKey(head_dim + 5), 6)
        tokens, hq, hk, rows = 23, 5, 2, 600
        q = random_heads(keys[0], (tokens,), hq, head_dim, dtype)
        k = random_heads(keys[1], (tokens,), hk, head_dim, dtype)
        wq, wk = random_weight(keys[2], head_dim, dtype), random_weight(keys[3], head_dim, dtype)
        positions = random_positions(keys[4], (tokens,), rows, positions_dtype)
        edges = [-3, rows, 2**31 - 1, -(2**31), rows - 1]
        if positions_dtype == jnp.int64:  # high words that are not the low word's sign extension
            edges += [2**33 + 1, -(2**33) + 5, 2**32 - 1, 2**31]
        positions = positions.at[: len(edges)].set(jnp.asarray(edges, positions_dtype))
        qkv = random_heads(keys[5], (tokens,), hq + 2 * hk, head_dim, dtype).reshape(tokens, -1)
        cache = qkr.rope_cos_sin_cache(rows, head_dim)
        for style, weights, offset in itertools.product(("neox", "gptj"), (True, False), (0.0, 1.0)):
            common = dict(style=style, cos_sin_cache=cache, weight_offset=offset)
            kw = dict(common, token_heads_per_warp=pairs_per_warp)
            ws = (wq, wk) if weights else (None, None)
            expected = ref.fused(q, k, positions, *ws, **common)
            expected_qkv = ref.fused_qkv(qkv, positions, hq, hk, *ws, **common)
            results = {}
            for prefetch in (0, 10**6):  # 0: the single-pair kernel; far ahead: the tuned one, warming nothing
                with dispatch.override_prefetch(prefetch):
                    out = jax.jit(lambda q, k, p, kw=kw, ws=ws: qkr.fused(q, k, p, *ws, **kw))(q, k, positions)
                    packed = jax.jit(lambda x, p, kw=kw, ws=ws: qkr.fused_qkv(x, p, hq, hk, *ws, **kw))(qkv, positions)
                    donated = jax.jit(lambda x, p, kw=kw, ws=ws: qkr.fused_qkv(x, p, hq, hk, *ws, **kw),
                                      donate_argnums=(0,))(jnp.copy(qkv), positions)
                what = f"{style} weights={weights} offset={offset} prefetch={prefetch}"
                for a, e in zip(out, expected, strict=True):
                    assert_close(a, e.astype(dtype), dtype, what)
                for x in (packed, donated):
                    assert jnp.array_equal(x[:, (hq + hk) * head_dim :], qkv[:, (hq + hk) * head_dim :]), what
                    assert_close(x, expected_qkv.astype(dtype), dtype, f"packed {what}")
                results[prefetch] = (*out, packed)
            for a, b in zip(results[0], results[10**6], strict=True):
                assert_close(a, b, dtype, f"single against tuned {style} weights={weights} offset={offset}")


@pytest.mark.parametrize("choice", [None, 16])
@pytest.mark.parametrize("tokens", [0, 1, 3, 17, 1000, 65537])
@pytest.mark.parametrize(("hq", "hk", "head_dim"), [(32, 8, 128), (16, 2, 256), (12, 4, 80)])
def test_token_counts(tokens, hq, hk, head_dim, choice):
    keys = jax.random.split(jax.random.PRNGKey(tokens), 4)
    q = random_heads(keys[0], (tokens,), hq, head_dim, jnp.bfloat16)
    k = random_heads(keys[1], (tokens,), hk, head_dim, jnp.bfloat16)
    w = random_weight(keys[2], head_dim, jnp.bfloat16)
    positions = random_positions(keys[3], (tokens,), 32768)
    cache = qkr.rope_cos_sin_cache(32768, head_dim)
    for kwargs in (dict(), dict(cos_sin_cache=cache, style="gptj")):
        with dispatch.override_choice(choice) if choice else contextlib.nullcontext():
            ours = jax.jit(lambda q, k, p, kw=kwargs: qkr.fused(q, k, p, w, w, **kw))(q, k, positions)
        expected = jax.jit(lambda q, k, p, kw=kwargs: ref.fused(q, k, p, w, w, **kw))(q, k, positions)
        for a, e in zip(ours, expected, strict=True):
            assert_close(a, e, jnp.bfloat16, f"{tokens} tokens {kwargs.keys()}")
    g = jax.jit(jax.grad(lambda q, w: jnp.sum(qkr.fused(q, k, positions, w, w)[0].astype(jnp.float32) ** 2),
                         argnums=(0, 1)))
    e = jax.jit(jax.grad(lambda q, w: jnp.sum(ref.fused(q.astype(jnp.float32), k.astype(jnp.float32), positions,
                                                       w.astype(jnp.float32), w)[0] ** 2), argnums=(0, 1)))
    for a, b in zip(g(q, w), e(q, w), strict=True):
        assert_close(a, b, jnp.float32, f"grad {tokens} tokens", scale=2e3)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("donate", [False, True])
def test_packed_heads_not_16_byte_aligned(dtype, donate):
    hq, hk, d = 5, 1, 66  # heads start every 132 (bf16) or 264 (f32) bytes: the narrow kernels
    qkv = random_heads(jax.random.PRNGKey(1), (123,), hq + 2 * hk, d, dtype).reshape(123, -1)
    positions = random_positions(jax.random.PRNGKey(2), (123,), 999)
    expected = ref.fused_qkv(qkv, positions, hq, hk, style="neox", rotary_dim=34)
    f = jax.jit(lambda x, p: qkr.fused_qkv(x, p, hq, hk, style="neox", rotary_dim=34),
                donate_argnums=(0,) if donate else ())
    ours = f(jnp.copy(qkv), positions)
    assert jnp.array_equal(ours[:, (hq + hk) * d :], qkv[:, (hq + hk) * d :])
    assert_close(ours, expected, dtype, "unaligned packed")


@pytest.mark.parametrize("pdl", [False, True])
def test_dependent_chain_under_graph_capture(pdl):
    """A chain of dependent calls (XLA captures it into a CUDA graph), with and without PDL."""
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    q = random_heads(keys[0], (7,), 32, 128, jnp.float32)
    k = random_heads(keys[1], (7,), 8, 128, jnp.float32)
    w = random_weight(keys[2], 128)
    positions = random_positions(keys[3], (7,), 100)

    def chain(fn, q, k):
        for _ in range(24):
            q, k = jax.lax.optimization_barrier(fn(q, k, positions, w, w))
        return q, k

    with dispatch.override_pdl(pdl):
        ours = jax.jit(lambda q, k: chain(qkr.fused, q, k))(q, k)
    expected = jax.jit(lambda q, k: chain(ref.fused, q, k))(q, k)
    for a, e in zip(ours, expected, strict=True):
        assert_close(a, e, jnp.float32, f"chain pdl={pdl}", scale=10)


@pytest.mark.slow
def test_64_bit_indexing():
    """q of more than 2**31 elements: the last tokens, whose offsets need 64 bits, are right."""
    hq, hk, d = 32, 8, 128
    tokens = 2**31 // (hq * d) + 4099
    assert tokens * hq * d > 2**31
    q = jax.jit(lambda: jax.random.normal(jax.random.PRNGKey(0), (tokens, hq, d), jnp.bfloat16))()
    k = jax.jit(lambda: jax.random.normal(jax.random.PRNGKey(1), (tokens, hk, d), jnp.bfloat16))()
    positions = jnp.arange(tokens, dtype=jnp.int32) % 40000
    w = random_weight(jax.random.PRNGKey(2), d, jnp.bfloat16)
    tail = slice(tokens - 4099, tokens)
    for style in ("neox", "gptj"):
        q_out, k_out = jax.jit(lambda q, k, p, s=style: qkr.fused(q, k, p, w, w, style=s))(q, k, positions)
        q_exp, k_exp = ref.fused(q[tail], k[tail], positions[tail], w, w, style=style)
        assert_close(q_out[tail], q_exp, jnp.bfloat16, f"q tail {style}")
        assert_close(k_out[tail], k_exp, jnp.bfloat16, f"k tail {style}")
        del q_out, k_out
