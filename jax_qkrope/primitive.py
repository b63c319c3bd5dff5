"""The JAX primitives of the op: abstract evaluation, batching, and lowering to the FFI targets.

``qkrope_fwd``: (*tensors, positions, q_weight, k_weight, table) -> tensors, where tensors is (q, k) or
(qkv,) and an absent weight is a float32 array of shape (0,).
``qkrope_bwd``: (*tensors, *cotangents, positions, q_weight, k_weight, table) -> (*dtensors, dq_weight,
dk_weight), the weight gradients float32 [num_examples, D] (or [num_examples, 0] when absent): the
tokens split into num_examples equal runs, one per vmapped batch element.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import ShapedArray
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir
from jax.sharding import PartitionSpec

from jax_qkrope import dispatch, partitioning
from jax_qkrope._extension import HAS_CUDA_KERNELS, register_targets
from jax_qkrope.config import OpConfig

# The public primitives (abstract eval, batching, autodiff sits above them in api.py) lower through
# custom partitioning (partitioning.py) to the kernel primitives, whose lowering is the FFI call.
fwd_p = Primitive("qkrope_fwd")
fwd_p.multiple_results = True
bwd_p = Primitive("qkrope_bwd")
bwd_p.multiple_results = True
fwd_kernel_p = Primitive("qkrope_fwd_kernel")
fwd_kernel_p.multiple_results = True
bwd_kernel_p = Primitive("qkrope_bwd_kernel")
bwd_kernel_p.multiple_results = True

NOT_MAPPED = None  # batching's marker of an operand without a vmapped axis


def forward(tensors, positions, q_weight, k_weight, table, *, config: OpConfig, allow_alias: bool) -> tuple:
    return tuple(fwd_p.bind(*tensors, positions, q_weight, k_weight, table, config=config, allow_alias=allow_alias))


def backward(tensors, cotangents, positions, q_weight, k_weight, table, *, config: OpConfig, num_examples: int):
    """(dtensors, dq_weight [E, D], dk_weight [E, D]) with E = num_examples."""
    outs = bwd_p.bind(
        *tensors, *cotangents, positions, q_weight, k_weight, table, config=config, num_examples=num_examples
    )
    n = config.num_tensors
    return tuple(outs[:n]), outs[n], outs[n + 1]


# ----------------------------------------------------------------------------------------------------
# Evaluation outside jit: compile the primitive alone (cached per parameters).


@functools.cache
def _jitted(prim: Primitive, params: tuple):
    return jax.jit(functools.partial(prim.bind, **dict(params)))


def _impl(prim: Primitive):
    def impl(*args, **params):
        return _jitted(prim, tuple(sorted(params.items())))(*args)

    return impl


for _prim in (fwd_p, bwd_p, fwd_kernel_p, bwd_kernel_p):
    _prim.def_impl(_impl(_prim))


# ----------------------------------------------------------------------------------------------------
# Abstract evaluation


def _output_like(aval):
    """The aval of an output with an input's shape and dtype (keeps its sharding and manual axes)."""
    return aval.update(weak_type=False)


def _new_aval_like(aval, shape, dtype):
    """A new shape and dtype that keeps `aval`'s mesh and varying manual axes, so that under shard_map a
    per-shard weight gradient is known to vary (and JAX sums it over the shards)."""
    sharding = aval.sharding.update(spec=PartitionSpec(*([None] * len(shape))))
    return ShapedArray(shape, dtype, sharding=sharding, manual_axis_type=aval.manual_axis_type)


def _fwd_abstract(*avals, config: OpConfig, allow_alias: bool):
    del allow_alias
    return [_output_like(a) for a in avals[: config.num_tensors]]


def _dweight_avals(avals, config: OpConfig, num_examples: int):
    n = config.num_tensors
    _, _, head_dim = config.head_layout([a.shape for a in avals[:n]])
    q_weight, k_weight = avals[2 * n + 1], avals[2 * n + 2]
    return [_new_aval_like(avals[0], (num_examples, head_dim if w.shape[0] else 0), jnp.float32)
            for w in (q_weight, k_weight)]


def _bwd_abstract(*avals, config: OpConfig, num_examples: int):
    n = config.num_tensors
    return [_output_like(a) for a in avals[:n]] + _dweight_avals(avals, config, num_examples)


for _prim in (fwd_p, fwd_kernel_p):
    _prim.def_abstract_eval(_fwd_abstract)
for _prim in (bwd_p, bwd_kernel_p):
    _prim.def_abstract_eval(_bwd_abstract)


# ----------------------------------------------------------------------------------------------------
# Batching: a vmapped axis of the data operands or positions becomes a leading token dim (one launch);
# a vmapped weight or table changes the math per batch element, so those map sequentially.


def _batch_size(args, dims) -> int:
    return next(x.shape[d] for x, d in zip(args, dims, strict=True) if d is not NOT_MAPPED)


def _to_front(x, dim, size):
    if dim is NOT_MAPPED:
        return jnp.broadcast_to(x, (size, *x.shape))
    return jnp.moveaxis(x, dim, 0)


def _map_sequentially(prim, args, dims, params):
    size = _batch_size(args, dims)
    mapped = [_to_front(x, d, size) for x, d in zip(args, dims, strict=True)]
    outs = jax.lax.map(lambda xs: prim.bind(*xs, **params), mapped)
    return outs, [0] * len(outs)


def _fold_batch(args, dims, data_count: int):
    """Moves the batch axis of the data operands and positions to the front (broadcasting unbatched ones)."""
    size = _batch_size(args, dims)
    folded = list(args)
    for i in [*range(data_count), data_count]:  # data operands, then positions
        folded[i] = _to_front(args[i], dims[i], size)
    return folded, size


def _fwd_batch(args, dims, *, config: OpConfig, allow_alias: bool):
    params = dict(config=config, allow_alias=allow_alias)
    n = config.num_tensors
    if any(d is not NOT_MAPPED for d in dims[n + 1 :]):
        return _map_sequentially(fwd_p, args, dims, params)
    folded, _ = _fold_batch(args, dims, n)
    return fwd_p.bind(*folded, **params), [0] * n


def _bwd_batch(args, dims, *, config: OpConfig, num_examples: int):
    params = dict(config=config, num_examples=num_examples)
    n = config.num_tensors
    if any(d is not NOT_MAPPED for d in dims[2 * n + 1 :]):
        return _map_sequentially(bwd_p, args, dims, params)
    size = _batch_size(args, dims)
    folded = [_to_front(x, d, size) for x, d in zip(args[: 2 * n + 1], dims[: 2 * n + 1], strict=True)]
    outs = bwd_p.bind(*folded, *args[2 * n + 1 :], config=config, num_examples=num_examples * size)
    # Each batch element is num_examples consecutive examples of the folded call.
    dweights = [w.reshape(size, num_examples, w.shape[-1]) for w in outs[n:]]
    return [*outs[:n], *dweights], [0] * (n + 2)


batching.primitive_batchers[fwd_p] = _fwd_batch
batching.primitive_batchers[bwd_p] = _bwd_batch


# ----------------------------------------------------------------------------------------------------
# Lowering: one FFI custom call; launch parameters decided here, from the shapes this lowering sees
# (per shard under custom partitioning) and the device.


def _is_donated_argument(value) -> bool:
    """True for a function argument that jit marked as donated (so aliasing it costs no copy)."""
    ir = mlir.ir
    if not isinstance(value, ir.BlockArgument):
        return False
    func = value.owner.owner
    attributes = func.attributes if hasattr(func, "attributes") else func.operation.attributes
    if "arg_attrs" not in attributes:
        return False
    arg_attrs = ir.DictAttr(ir.ArrayAttr(attributes["arg_attrs"])[value.arg_number])
    return "tf.aliasing_output" in arg_attrs or "jax.buffer_donor" in arg_attrs


def _token_count(config: OpConfig, shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[: config.token_rank(len(shape))], dtype=np.int64))


def _pairs(config: OpConfig, avals) -> int:
    hq, hk, _ = config.head_layout([a.shape for a in avals[: config.num_tensors]])
    return _token_count(config, avals[0].shape) * (hq + hk)


def _fwd_lowering(ctx, *args, config: OpConfig, allow_alias: bool, platform: str):
    n = config.num_tensors
    _, _, head_dim = config.head_layout([a.shape for a in ctx.avals_in[:n]])
    facts = dispatch.device_facts(platform)
    launch = dispatch.forward_launch(_pairs(config, ctx.avals_in), head_dim, config.token_heads_per_warp, facts,
                                     ctx.avals_in[0].dtype.itemsize, config.style, config.rotary_dim)
    aliases = {}
    if allow_alias:
        for i in range(n):
            if _is_donated_argument(args[i]) and all(args[i] != args[j] for j in range(i)):
                aliases[i] = i
    target = "qkrope_fwd_packed" if config.packed_heads else "qkrope_fwd"
    rule = jax.ffi.ffi_lowering(target, operand_output_aliases=aliases or None)
    return rule(ctx, *args, **config.ffi_attributes(), **launch.ffi_attributes())


def _bwd_lowering(ctx, *args, config: OpConfig, num_examples: int, platform: str):
    n = config.num_tensors
    _, _, head_dim = config.head_layout([a.shape for a in ctx.avals_in[:n]])
    facts = dispatch.device_facts(platform)
    launch, blocks = dispatch.backward_launch(_pairs(config, ctx.avals_in), head_dim, num_examples, facts, platform,
                                              config.style, config.rotary_dim, ctx.avals_in[0].dtype.itemsize)
    # The kernel also returns its float32 partials: scratch the primitive drops.
    partials = ShapedArray((num_examples, blocks, 2, head_dim), jnp.float32)
    ctx = ctx.replace(avals_out=[*ctx.avals_out, partials])
    # The packed gradient is written in place of its cotangent, which already holds V's gradient.
    aliases = {1: 0} if config.packed_heads else None
    target = "qkrope_bwd_packed" if config.packed_heads else "qkrope_bwd"
    rule = jax.ffi.ffi_lowering(target, operand_output_aliases=aliases)
    return rule(ctx, *args, **config.ffi_attributes(), **launch.ffi_attributes())[:-1]


def _runs_whole(ctx, config: OpConfig) -> bool:
    """True where the SPMD partitioner will not split this call: one device, every mesh axis manual
    (inside shard_map), or no token dims to split. There the kernel lowering runs directly (and sees
    donated arguments)."""
    if config.token_rank(len(ctx.avals_in[0].shape)) == 0:
        return True
    axis_context = ctx.module_context.axis_context
    manual = getattr(axis_context, "manual_axes", None)
    mesh = getattr(axis_context, "mesh", None)
    if manual is not None and mesh is not None:
        return set(manual) == set(mesh.axis_names)
    devices = getattr(axis_context, "device_assignment", None)
    return devices is None or len(devices) <= 1


def _fwd_partitioned_lowering(ctx, *args, config: OpConfig, allow_alias: bool, platform: str):
    if _runs_whole(ctx, config):
        return _fwd_lowering(ctx, *args, config=config, allow_alias=allow_alias, platform=platform)
    bind = functools.partial(fwd_kernel_p.bind, config=config, allow_alias=allow_alias)
    return _partitioned_lowering(ctx, args, bind, config, backward=False, num_examples=1)


def _bwd_partitioned_lowering(ctx, *args, config: OpConfig, num_examples: int, platform: str):
    if _runs_whole(ctx, config):
        return _bwd_lowering(ctx, *args, config=config, num_examples=num_examples, platform=platform)
    bind = functools.partial(bwd_kernel_p.bind, config=config, num_examples=num_examples)
    return _partitioned_lowering(ctx, args, bind, config, backward=True, num_examples=num_examples)


def _partitioned_lowering(ctx, args, bind, config: OpConfig, *, backward: bool, num_examples: int):
    ndims = [len(a.shape) for a in ctx.avals_in]
    call = partitioning.partitioned_call(bind, config, ndims, backward=backward, num_examples=num_examples)
    return mlir.lower_fun(call, multiple_results=True)(ctx, *args)


def _missing_cuda_lowering(ctx, *args, **params):
    raise NotImplementedError(
        "jax_qkrope was built without its CUDA kernels (no CUDA compiler at build time); reinstall it "
        "with nvcc on the PATH to run on GPU, or run on CPU."
    )


def register_lowerings() -> None:
    """Registers the lowerings: CPU always, CUDA when the extension was built with its kernels (the
    rule alone needs no GPU, so CUDA lowering also works on a machine without one)."""
    register_targets()
    for platform in ("cpu", "cuda"):
        if platform == "cuda" and not HAS_CUDA_KERNELS:
            for prim in (fwd_p, bwd_p, fwd_kernel_p, bwd_kernel_p):
                mlir.register_lowering(prim, _missing_cuda_lowering, platform="cuda")
            continue
        # Not cacheable: an outlined, shared lowering could not see whether its operands are donated.
        for prim, rule in ((fwd_kernel_p, _fwd_lowering), (fwd_p, _fwd_partitioned_lowering)):
            mlir.register_lowering(prim, functools.partial(rule, platform=platform), platform=platform,
                                   cacheable=False)
        for prim, rule in ((bwd_kernel_p, _bwd_lowering), (bwd_p, _bwd_partitioned_lowering)):
            mlir.register_lowering(prim, functools.partial(rule, platform=platform), platform=platform)
    # custom_partitioning needs the device assignment when it lowers; jit only passes it down to
    # lowerings of primitives on this list (a private hook, as in other libraries that partition ops).
    try:
        from jax._src import dispatch as jax_dispatch

        jax_dispatch.prim_requires_devices_during_lowering.update((fwd_p, bwd_p))
    except (ImportError, AttributeError):  # pragma: no cover - a JAX without the hook
        pass


register_lowerings()
