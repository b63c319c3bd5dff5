"""Launch-shape sweep at large token counts, against the copy-bandwidth bound, in one run: forward time
per forced pairs-per-warp N, and backward time per (N, warps per block, blocks per SM) of its
persistent grid.

    python benchmarks/kernel_variants.py [--out DIR]
    python benchmarks/kernel_variants.py --backward-only --backward-heads 32,8,80 32,8,128,64 \
        --backward-launches 8,4,2 4,4,3
    python benchmarks/kernel_variants.py --forward-only --persistent --tokens 4096 16384 --styles neox gptj
    python benchmarks/kernel_variants.py --forward-only --l2-policies 0 1 2 --tokens 1024 4096

--backward-heads takes Hq,Hk,D or Hq,Hk,D,R (rotary_dim R); --backward-launches N,warps,blocks_per_SM, each
timed at every --backward-tokens x --backward-styles.
--persistent times each forced N with the tuned forward's persistent grid off and on (same build), the
forward timings alternating between the two so that drift between them cancels. --l2-policies does the
same over the forward's L2 policies (dispatch.L2_POLICIES), with or without --persistent; --shared-rows over
the tuned forward's cos/sin rows held in registers and copied into shared memory; --warps-per-block over the
forward's block sizes (tag suffix /wW).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import statistics
from pathlib import Path

import jax
from calibrate import time_choice  # benchmarks/calibrate.py: the forward time with N forced

from jax_qkrope import dispatch, timing
from jax_qkrope.bench import Case, make_inputs, time_backward_alone
from jax_qkrope.timing import copy_bandwidth_gbps

SHAPES = ((32, 8, 128), (16, 2, 256), (16, 16, 64))
TOKENS = (16384,)
FORWARD_CHOICES = (4, 8, 16)
# (pairs per warp, warps per block, blocks per SM) of the backward's persistent grid
BACKWARD_SHAPES = ((2, 8, 4), (4, 8, 4), (8, 8, 4), (4, 8, 2), (4, 4, 4), (4, 4, 8), (8, 4, 4), (2, 4, 8), (8, 8, 2))


def forced(grid: bool | None, policy: int | None, shared: bool | None = None,
           warps: int | None = None, single_warps: int | None = None) -> contextlib.ExitStack:
    """The overrides of one forward mode: persistent grid, L2 policy, shared rows, warps per block and the
    single-pair kernel's warps per block (None: auto)."""
    stack = contextlib.ExitStack()
    if grid is not None:
        stack.enter_context(dispatch.override_persistent(grid))
    if policy is not None:
        stack.enter_context(dispatch.override_l2_policy(policy))
    if shared is not None:
        stack.enter_context(dispatch.override_shared_rows(shared))
    if warps is not None:
        stack.enter_context(dispatch.override_forward_warps_per_block(warps))
    if single_warps is not None:
        stack.enter_context(dispatch.override_single_warps_per_block(single_warps))
    return stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--backward-only", action="store_true", help="skip the forward sweep")
    parser.add_argument("--forward-only", action="store_true", help="skip the backward sweep")
    parser.add_argument("--shapes", nargs="+", default=[",".join(map(str, s)) for s in SHAPES],
                        help="Hq,Hk,D or Hq,Hk,D,R (rotary_dim R)")
    parser.add_argument("--tokens", type=int, nargs="+", default=list(TOKENS), help="forward token counts")
    parser.add_argument("--styles", nargs="+", default=["neox"], choices=("neox", "gptj"), help="forward styles")
    parser.add_argument("--choices", type=int, nargs="+", default=list(FORWARD_CHOICES), help="forward N")
    parser.add_argument("--persistent", action="store_true", help="forward: persistent grid off and on")
    parser.add_argument("--shared-rows", action="store_true", help="forward: cos/sin rows in shared memory off and on")
    parser.add_argument("--l2-policies", type=int, nargs="+", default=None,
                        help="forward: time each of these L2 policies (dispatch.L2_POLICIES), alternating")
    parser.add_argument("--warps-per-block", type=int, nargs="+", default=None,
                        help="forward: time each of these block sizes (warps), alternating")
    parser.add_argument("--single-warps-per-block", type=int, nargs="+", default=None,
                        help="forward: time each of these block sizes of the single-pair kernel, alternating")
    parser.add_argument("--repeats", type=int, default=1, help="forward: rounds per point (median kept)")
    parser.add_argument("--backward-heads", nargs="+", default=["32,8,128"])
    parser.add_argument("--backward-tokens", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--backward-styles", nargs="+", default=["neox", "gptj"], choices=("neox", "gptj"))
    parser.add_argument("--backward-launches", nargs="+", default=[",".join(map(str, s)) for s in BACKWARD_SHAPES])
    args = parser.parse_args()
    copy = copy_bandwidth_gbps()
    print(f"copy {copy:.0f} GB/s on {jax.devices()[0].device_kind}", flush=True)
    records = []
    grids = (False, True) if args.persistent else (None,)
    policies = tuple(args.l2_policies) if args.l2_policies else (None,)
    shared_modes = (False, True) if args.shared_rows else (None,)
    block_sizes = tuple(args.warps_per_block) if args.warps_per_block else (None,)
    single_sizes = tuple(args.single_warps_per_block) if args.single_warps_per_block else (None,)
    modes = [(grid, policy, shared, warps, single) for grid in grids for policy in policies
             for shared in shared_modes for warps in block_sizes for single in single_sizes]
    shapes = [tuple(int(v) for v in text.split(",")) for text in args.shapes]
    for values in () if args.backward_only else shapes:
        heads, rotary = values[:3], (values[3] if len(values) == 4 else None)
        for t in args.tokens:
            for style in args.styles:
                case = Case(heads, t, style, rotary_dim=rotary)
                inputs = make_inputs(case)
                bound = case.forward_bytes() / (copy * 1e3)
                line = []
                for n in args.choices:
                    rounds: dict = {mode: [] for mode in modes}
                    for _ in range(args.repeats):
                        for mode in modes:
                            with forced(*mode):
                                rounds[mode].append(time_choice(case, inputs, n))
                    for mode in modes:
                        grid, policy, shared, warps, single = mode
                        us = statistics.median(rounds[mode])
                        records.append(dict(kind="forward", heads=list(heads), rotary_dim=case.rotary, T=t, style=style,
                                            N=n, persistent=grid, l2_policy=policy, shared_rows=shared,
                                            warps_per_block=warps, single_warps_per_block=single, us=us,
                                            rounds=rounds[mode], bound_us=bound, fraction=bound / us))
                        tag = f"{n}{'' if grid is None else 'p' if grid else 'b'}"
                        tag += "" if policy is None else f"/L{policy}"
                        tag += "" if shared is None else "/S" if shared else "/R"
                        tag += "" if warps is None else f"/w{warps}"
                        tag += "" if single is None else f"/s{single}"
                        line.append(f"{tag}={us:8.2f}({100 * bound / us:3.0f}%)")
                print(f"fwd {values} {style} T={t:6d} bound {bound:8.2f}  " + " ".join(line), flush=True)
    launches = [tuple(int(v) for v in text.split(",")) for text in args.backward_launches]
    for spec in [] if args.forward_only else args.backward_heads:
        values = tuple(int(v) for v in spec.split(","))
        heads, rotary = values[:3], (values[3] if len(values) == 4 else None)
        for t, style in itertools.product(args.backward_tokens, args.backward_styles):
            case = Case(heads, t, style, rotary_dim=rotary)
            inputs = make_inputs(case)
            bound = case.backward_bytes() / (copy * 1e3)
            line = []
            for shape in launches:
                with dispatch.override_backward(*shape):
                    us = time_backward_alone(case, inputs)
                records.append(dict(kind="backward", heads=list(heads), rotary_dim=case.rotary, T=t, style=style,
                                    launch=list(shape), us=us, bound_us=bound, fraction=bound / us))
                line.append(f"{shape}={us:8.2f}({100 * bound / us:3.0f}%)")
            print(f"bwd {heads} rotary {case.rotary} {style} T={t} bound {bound:8.2f}  " + " ".join(line), flush=True)
    meta = dict(device=jax.devices()[0].device_kind, date=str(datetime.date.today()), copy_gbps=copy,
                method=timing.method())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel_variants.json").write_text(json.dumps([{**meta, **r} for r in records], indent=1))


if __name__ == "__main__":
    main()
