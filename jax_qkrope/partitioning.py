"""SPMD partitioning of the op: every (token, head) pair is independent, so a sharded call runs per shard
with no collectives.

The primitives lower through ``jax.experimental.custom_partitioning``: a Shardy sharding rule tells the
partitioner which dims correspond (the token dims of q, k, positions and the cotangents; each tensor's
head dim) and which must stay whole (head_dim, the packed channel dim, the weights, the rope table, the
weight gradients). The partition callback then keeps the token and head shardings it is given and
lowers the kernel primitive on per-shard shapes, so the dispatch heuristic sees the shard's token count.
The backward's weight gradients are per-shard partial sums, reduced with a psum over the mesh axes
that split that tensor: the one all-reduce the op needs.

A call with no token dims, or a backward under vmap (whose examples are runs of tokens), keeps its
token dims replicated: correct, at the cost of the gathers XLA inserts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from jax_qkrope.config import OpConfig

AxisNames = tuple[str, ...]


def operand_factors(config: OpConfig, ndims: Sequence[int], backward: bool) -> tuple[list[str], list[str], tuple]:
    """Einsum-like factors of each operand and result, and the factors that must stay replicated."""
    tokens = " ".join(f"t{i}" for i in range(config.token_rank(ndims[0])))
    tensors = [f"{tokens} c"] if config.packed_heads else [f"{tokens} hq d", f"{tokens} hk d"]
    table = "tp tr" if ndims[-1] == 2 else "tf"
    operands = [*tensors, *(tensors if backward else []), tokens, "wq", "wk", table]
    results = [*tensors, *(["eq fq", "ek fk"] if backward else [])]
    whole_dim = "c" if config.packed_heads else "d"
    replicated = (whole_dim, "wq", "wk", *table.split(), *(("eq", "fq", "ek", "fk") if backward else ()))
    return operands, results, replicated


def _axes(entry) -> AxisNames:
    if entry is None or entry is PartitionSpec.UNCONSTRAINED:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _dim_axes(shape) -> list[AxisNames]:
    """The mesh axes splitting each dim of an argument (nothing when its sharding names no axes)."""
    sharding = getattr(shape, "sharding", None)
    spec = tuple(sharding.spec) if isinstance(sharding, NamedSharding) else ()
    return [_axes(e) for e in spec] + [()] * (len(shape.shape) - len(spec))


def _divides(mesh, axes: AxisNames, size: int) -> bool:
    count = 1
    for a in axes:
        count *= mesh.shape[a]
    return size % count == 0


def _spec(dims: Sequence[AxisNames]) -> PartitionSpec:
    return PartitionSpec(*[(d if len(d) > 1 else d[0]) if d else None for d in dims])


class _Plan:
    """The shardings a call runs with, decided from those the partitioner proposes."""

    def __init__(self, config: OpConfig, mesh, arg_shapes, keep_tokens: bool):
        n = config.num_tensors
        rank = config.token_rank(len(arg_shapes[0].shape))
        proposed = _dim_axes(arg_shapes[0])
        token_dims = [d if keep_tokens and _divides(mesh, d, s) else () for d, s in
                      zip(proposed[:rank], arg_shapes[0].shape[:rank], strict=True)]
        used = {a for d in token_dims for a in d}
        self.tensor_dims: list[list[AxisNames]] = []
        for i in range(n):
            shape = arg_shapes[i].shape
            head_axes: AxisNames = ()
            if not config.packed_heads:
                candidate = _dim_axes(arg_shapes[i])[rank]
                if candidate and not used & set(candidate) and _divides(mesh, candidate, shape[rank]):
                    head_axes = candidate
            trailing = [head_axes, ()] if not config.packed_heads else [()]
            self.tensor_dims.append([*token_dims, *trailing])
        self.token_dims = token_dims
        self.mesh = mesh

    def tensor_sharding(self, i: int) -> NamedSharding:
        return NamedSharding(self.mesh, _spec(self.tensor_dims[i]))

    def split_axes(self, i: int) -> AxisNames:
        """The mesh axes over which tensor i is split: its weight gradient sums over them."""
        return tuple(a for d in self.tensor_dims[i] for a in d)

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def positions(self) -> NamedSharding:
        return NamedSharding(self.mesh, _spec(self.token_dims))


def partitioned_call(bind: Callable, config: OpConfig, ndims: Sequence[int], *, backward: bool,
                     num_examples: int = 1) -> Callable:
    """`bind(*args)` (the kernel primitive) wrapped so the SPMD partitioner runs it per shard."""
    n = config.num_tensors

    @custom_partitioning
    def call(*args):
        return tuple(bind(*args))

    def shardings(mesh, arg_shapes):
        plan = _Plan(config, mesh, arg_shapes, keep_tokens=not (backward and num_examples > 1))
        tensors = [plan.tensor_sharding(i) for i in range(n)]
        rest = [plan.positions(), *[plan.replicated()] * 3]
        arg_shardings = (*tensors, *(tensors if backward else []), *rest)
        return plan, arg_shardings, (*tensors, *([plan.replicated()] * 2 if backward else []))

    def infer_sharding_from_operands(mesh, arg_shapes, result_shape):  # the GSPMD partitioner's callback
        return shardings(mesh, arg_shapes)[2]

    def partition(mesh, arg_shapes, result_shape):
        plan, arg_shardings, result_shardings = shardings(mesh, arg_shapes)

        def lower(*args):
            outs = list(bind(*args))
            if backward:
                # Per-shard partial weight gradients: sum over the shards of the tensor they come from.
                for i, axes in enumerate((plan.split_axes(0), plan.split_axes(n - 1))):
                    if axes:
                        outs[n + i] = jax.lax.psum(outs[n + i], axes)
            return tuple(outs)

        return mesh, lower, result_shardings, arg_shardings

    operands, results, replicated = operand_factors(config, ndims, backward)
    call.def_partition(partition=partition, infer_sharding_from_operands=infer_sharding_from_operands,
                       sharding_rule=", ".join(operands) + " -> " + ", ".join(results),
                       need_replication_factors=replicated)
    return call
