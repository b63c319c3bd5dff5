"""SPMD partitioning: under jit with NamedSharding inputs the op runs per shard with no collectives (the
weight-gradient all-reduce aside) and gives the single-device results; inside shard_map it runs as is.

Meshes: 8 virtual CPU devices (conftest) everywhere, and every GPU when JAX sees two or more.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jax_qkrope as qkr
from jax_qkrope import dispatch

FORBIDDEN = ("all-gather", "all-to-all", "collective-permute", "reduce-scatter")
B, S, HQ, HK, D = 8, 16, 8, 4, 64


def _gpus() -> list:
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


def _meshes() -> list:
    params = [pytest.param(("cpu", (2, 4)), id="cpu-2x4")]
    if len(_gpus()) >= 2:
        n = len(_gpus())
        params += [pytest.param(("gpu", (n, 1)), id=f"gpu-{n}x1"), pytest.param(("gpu", (1, n)), id=f"gpu-1x{n}")]
    return params


@pytest.fixture(params=_meshes())
def mesh(request) -> Mesh:
    platform, shape = request.param
    devices = jax.devices(platform)
    if len(devices) < int(np.prod(shape)):
        pytest.skip(f"needs {np.prod(shape)} {platform} devices (conftest sets 8 virtual CPU devices)")
    return Mesh(np.array(devices[: int(np.prod(shape))]).reshape(shape), ("dp", "tp"))


# (name, spec of q and k [B, S, H, D], spec of positions [B, S])
SHARDINGS = [
    ("data", P("dp"), P("dp")),
    ("sequence", P(None, "tp"), P(None, "tp")),
    ("heads", P(None, None, "tp"), P()),
    ("data+heads", P("dp", None, "tp"), P("dp")),
    ("data+sequence", P("dp", "tp"), P("dp", "tp")),
    ("batch over both axes", P(("dp", "tp")), P(("dp", "tp"))),
]


def inputs(device, dtype=jnp.float32, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(keys[0], (B, S, HQ, D), dtype)
    k = jax.random.normal(keys[1], (B, S, HK, D), dtype)
    positions = jax.random.randint(keys[2], (B, S), 0, 4096, jnp.int32)
    w = (1 + 0.2 * jax.random.normal(keys[3], (2, D))).astype(dtype)
    return jax.device_put((q, k, positions, w[0], w[1]), device)


def collectives(compiled_text: str) -> list[str]:
    return re.findall(r"\b(all-gather|all-to-all|collective-permute|reduce-scatter|all-reduce)(?:-start)?\(",
                      compiled_text)


def all_reduce_shapes(compiled_text: str) -> list[tuple[str, str]]:
    """(dtype, dims) of every array an all-reduce carries (tuple results flattened)."""
    results = re.findall(r"= (.+?) all-reduce(?:-start)?\(", compiled_text)
    return [shape for r in results for shape in re.findall(r"(\w+)\[([\d,]*)\]", r)]


def forward(q, k, positions, wq, wk):
    return qkr.fused(q, k, positions, wq, wk, rope_theta=1e6)


def loss(q, k, positions, wq, wk):
    out_q, out_k = forward(q, k, positions, wq, wk)
    return jnp.sum(out_q * jnp.sin(out_q)) + jnp.sum(out_k * out_k)


gradient = jax.grad(loss, argnums=(0, 1, 3, 4))


def place(mesh, spec, positions_spec, q, k, positions, wq, wk):
    tensor, pos = NamedSharding(mesh, spec), NamedSharding(mesh, positions_spec)
    replicated = NamedSharding(mesh, P())
    return (jax.device_put(q, tensor), jax.device_put(k, tensor), jax.device_put(positions, pos),
            jax.device_put(wq, replicated), jax.device_put(wk, replicated))


def run_sharded(fn, mesh, spec, positions_spec):
    """(single-device result, sharded result, compiled HLO text of the sharded call) of fn on inputs()."""
    args = inputs(mesh.devices.flat[0])
    expected = jax.jit(fn)(*args)
    sharded = place(mesh, spec, positions_spec, *args)
    jitted = jax.jit(fn)
    return expected, jitted(*sharded), jitted.lower(*sharded).compile().as_text()


@pytest.mark.parametrize(("name", "spec", "positions_spec"), SHARDINGS, ids=[s[0] for s in SHARDINGS])
def test_sharded_forward_has_no_collectives_and_matches(mesh, name, spec, positions_spec):
    expected, out, text = run_sharded(forward, mesh, spec, positions_spec)
    assert collectives(text) == [], f"{name}: collectives in the partitioned forward"
    for o, e in zip(out, expected, strict=True):
        assert o.sharding.spec[: len(spec)] == tuple(spec), f"{name}: output not sharded like its input"
        # Per-shard token counts may pick another pairs-per-warp kernel: rounding may differ by an ulp.
        assert_close(o, e, jnp.float32, f"{name} forward")


@pytest.mark.parametrize(("name", "spec", "positions_spec"), SHARDINGS, ids=[s[0] for s in SHARDINGS])
def test_sharded_gradient_only_all_reduces_weight_gradients(mesh, name, spec, positions_spec):
    expected, out, text = run_sharded(gradient, mesh, spec, positions_spec)
    found = collectives(text)
    assert not set(found) & set(FORBIDDEN), f"{name}: {found}"
    # The only all-reduces sum the per-shard float32 weight-gradient partials: [1, D] each, which XLA
    # may combine (a tuple, or one flattened [2 D] array on GPU).
    split = int(np.prod([mesh.shape[a] for entry in spec if entry for a in ((entry,) if isinstance(entry, str)
                                                                               else entry)]))
    shapes = all_reduce_shapes(text)
    assert shapes or split == 1, f"{name}: the weight gradients were not reduced across shards"
    for dtype, dims in shapes:
        elements = int(np.prod([int(v) for v in dims.split(",") if v]))
        assert dtype == "f32" and elements in (D, 2 * D), f"{name}: unexpected all-reduce of {dtype}[{dims}]"
    for o, e, label in zip(out, expected, ("dq", "dk", "dq_weight", "dk_weight"), strict=True):
        assert_close(o, e, jnp.float32, f"{name} {label}")


def test_dispatch_sees_per_shard_token_counts(mesh):
    """The launch choice is made on the shard's shape: data-parallel over all devices shrinks it."""
    n = mesh.devices.size
    tokens = 2048 * n  # 24576 pairs per shard: N = 2 by the default table; the whole call takes more
    q = jnp.zeros((tokens, HQ, D), jnp.bfloat16)
    k = jnp.zeros((tokens, HK, D), jnp.bfloat16)
    positions = jnp.arange(tokens, dtype=jnp.int32)
    flat = Mesh(mesh.devices.reshape(-1), ("all",))
    facts = dispatch.UNKNOWN_GPU
    whole = dispatch.forward_launch(tokens * (HQ + HK), D, None, facts, 2).pairs_per_warp
    shard = dispatch.forward_launch(tokens // n * (HQ + HK), D, None, facts, 2).pairs_per_warp
    assert whole != shard, "pick a shape whose choice changes with the shard size"
    spec = NamedSharding(flat, P("all"))
    with dispatch.assume_device(facts):
        text = jax.jit(lambda q, k, p: qkr.fused(q, k, p)).lower(
            jax.device_put(q, spec), jax.device_put(k, spec), jax.device_put(positions, spec)).compile().as_text()
    chosen = re.findall(r"pairs_per_warp\D+(\d+)", text)
    assert chosen and set(chosen) == {str(shard)}, (chosen, whole, shard)


def test_packed_qkv_sharded_over_tokens(mesh):
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    with jax.default_device(mesh.devices.flat[0]):
        qkv = jax.random.normal(keys[0], (B, S, (HQ + 2 * HK) * D), jnp.bfloat16)
        positions = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
        w = jnp.full((D,), 1.5, jnp.bfloat16)
    fn = jax.jit(lambda x, p, w: qkr.fused_qkv(x, p, HQ, HK, w, w))
    expected = fn(qkv, positions, w)
    spec = NamedSharding(mesh, P("dp", "tp"))
    sharded = (jax.device_put(qkv, spec), jax.device_put(positions, spec), w)
    assert collectives(fn.lower(*sharded).compile().as_text()) == []
    assert_close(fn(*sharded), expected, jnp.bfloat16, "packed, sharded")


def test_inside_shard_map_forward_and_gradient(mesh):
    args = inputs(mesh.devices.flat[0])
    expected = jax.jit(gradient)(*args)
    spec, pos = P("dp", "tp"), P("dp", "tp")

    @jax.jit
    @functools.partial(jax.shard_map, mesh=mesh, in_specs=(spec, spec, pos, P(), P()),
                       out_specs=(spec, spec, P(), P()))
    def per_shard(q, k, positions, wq, wk):
        # The replicated weights get the summed gradient, as with JAX's autodiff of jnp code.
        return gradient(q, k, positions, wq, wk)

    out = per_shard(*place(mesh, spec, pos, *args))
    for o, e, label in zip(out, expected, ("dq", "dk", "dq_weight", "dk_weight"), strict=True):
        assert_close(o, e, jnp.float32, f"shard_map {label}")


def test_vmap_of_grad_under_sharding_is_correct(mesh):
    """Per-example weight gradients (the examples are runs of tokens): correct, tokens gathered if needed."""
    args = inputs(mesh.devices.flat[0])
    per_example = jax.vmap(gradient, in_axes=(0, 0, 0, None, None))
    expected = jax.jit(per_example)(*args)
    out = jax.jit(per_example)(*place(mesh, P("dp"), P("dp"), *args))
    for o, e in zip(out, expected, strict=True):
        assert_close(o, e, jnp.float32, "vmap of grad")


def test_mqa_heads_sharded_with_replicated_single_kv_head(mesh):
    """Tensor parallel with one KV head: q split over heads, k replicated; still no collectives."""
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    with jax.default_device(mesh.devices.flat[0]):
        q = jax.random.normal(keys[0], (B, S, HQ, D))
        k = jax.random.normal(keys[1], (B, S, 1, D))
        positions = jax.random.randint(keys[2], (B, S), 0, 4096, jnp.int32)
    expected = jax.jit(lambda q, k, p: qkr.fused(q, k, p))(q, k, positions)
    replicated = NamedSharding(mesh, P())
    args = (jax.device_put(q, NamedSharding(mesh, P(None, None, "tp"))), jax.device_put(k, replicated),
            jax.device_put(positions, replicated))
    fn = jax.jit(lambda q, k, p: qkr.fused(q, k, p))
    assert collectives(fn.lower(*args).compile().as_text()) == []
    for o, e in zip(fn(*args), expected, strict=True):
        assert_close(o, e, jnp.float32, "MQA heads sharded")
