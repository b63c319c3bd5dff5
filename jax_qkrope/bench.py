"""Benchmark: ``python -m jax_qkrope.bench``.

Device time per call (see :mod:`jax_qkrope.timing`) of the fused op inside jit against the XLA-fused
pure-JAX reference in the same run and against the bound: the bytes the op must move (q and k read and
written, positions and cos/sin rows read; for the backward x and dy read, dx written) over the
device-to-device copy bandwidth measured in the same run. Writes JSON records, a PNG plot and a
markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import platform
from collections.abc import Iterable
from pathlib import Path

import jax
import jax.numpy as jnp

import jax_qkrope as qkr
from jax_qkrope import dispatch, primitive, timing
from jax_qkrope import reference as ref
from jax_qkrope.config import OpConfig
from jax_qkrope.timing import copy_bandwidth_gbps, per_call_us

SHAPES = ((32, 8, 128), (64, 8, 128), (16, 2, 256), (16, 16, 64))
TOKENS = (1, 16, 128, 1024, 4096, 16384, 65536)
STYLES = ("neox", "gptj")
CACHE_ROWS = 65536


@dataclasses.dataclass(frozen=True)
class Case:
    heads: tuple[int, int, int]
    tokens: int
    style: str
    dtype: str = "bfloat16"
    rotary_dim: int | None = None  # None: the whole head

    @property
    def rotary(self) -> int:
        return self.heads[2] if self.rotary_dim is None else self.rotary_dim

    @property
    def elem(self) -> int:
        return jnp.dtype(self.dtype).itemsize

    def head_bytes(self) -> int:
        hq, hk, d = self.heads
        return self.tokens * (hq + hk) * d * self.elem

    def table_bytes(self) -> int:
        return self.tokens * (self.rotary * 4 + 4)  # one float32 cos/sin row and one position per token

    def forward_bytes(self) -> int:
        return 2 * self.head_bytes() + self.table_bytes()

    def backward_bytes(self) -> int:
        return 3 * self.head_bytes() + self.table_bytes()


def make_inputs(case: Case, seed: int = 0) -> dict:
    hq, hk, d = case.heads
    keys = jax.random.split(jax.random.PRNGKey(seed), 5)
    dtype = jnp.dtype(case.dtype)
    return dict(
        q=jax.random.normal(keys[0], (case.tokens, hq, d), dtype),
        k=jax.random.normal(keys[1], (case.tokens, hk, d), dtype),
        positions=jax.random.randint(keys[2], (case.tokens,), 0, CACHE_ROWS, jnp.int32),
        weight=(1 + 0.1 * jax.random.normal(keys[3], (d,))).astype(dtype),
        cache=qkr.rope_cos_sin_cache(CACHE_ROWS, case.rotary),
        cot_q=jax.random.normal(keys[4], (case.tokens, hq, d), dtype),
        cot_k=jax.random.normal(keys[4], (case.tokens, hk, d), dtype),
    )


def forward_step(fn, style: str, **options):
    def step(q, k, positions, weight, cache):
        q, k = fn(q, k, positions, weight, weight, cos_sin_cache=cache, style=style, **options)
        return q, k, positions, weight, cache

    return step


def time_forward(case: Case, inputs: dict, fn, **options) -> float:
    state = (inputs["q"], inputs["k"], inputs["positions"], inputs["weight"], inputs["cache"])
    return per_call_us(forward_step(fn, case.style, rotary_dim=case.rotary, **options), state)


def time_backward_alone(case: Case, inputs: dict) -> float:
    """The backward primitive only: dx of one call is the next call's cotangent."""
    config = OpConfig(case.style, case.rotary, 1e-6, 0.0)

    def step(q, k, dq, dk, positions, weight, cache):
        (dq, dk), _, _ = primitive.backward((q, k), (dq, dk), positions, weight, weight, cache, config=config,
                                            num_examples=1)
        return q, k, dq, dk, positions, weight, cache

    state = (inputs["q"], inputs["k"], inputs["cot_q"], inputs["cot_k"], inputs["positions"], inputs["weight"],
             inputs["cache"])
    return per_call_us(step, state)


def time_forward_backward(case: Case, inputs: dict, fn) -> float:
    """Forward and jax.vjp backward for q, k and both weights. Every result feeds the next step, so XLA
    can drop none of it as dead code: the outputs are the next inputs, dq and dk the next cotangents,
    and the weight gradients nudge the weights (by 1e-30 of themselves: the values do not change)."""

    def step(q, k, ct_q, ct_k, positions, wq, wk, cache):
        out, vjp = jax.vjp(lambda q, k, wq, wk: fn(q, k, positions, wq, wk, cos_sin_cache=cache, style=case.style,
                                                   rotary_dim=case.rotary), q, k, wq, wk)
        dq, dk, dw_q, dw_k = vjp((ct_q, ct_k))
        wq, wk = ((w.astype(jnp.float32) + 1e-30 * dw.astype(jnp.float32)).astype(w.dtype)
                  for w, dw in ((wq, dw_q), (wk, dw_k)))
        return out[0], out[1], dq, dk, positions, wq, wk, cache

    w = inputs["weight"]
    state = (inputs["q"], inputs["k"], inputs["cot_q"], inputs["cot_k"], inputs["positions"], w, w, inputs["cache"])
    return per_call_us(step, state)


def chosen_pairs_per_warp(case: Case) -> int:
    """The auto dispatch's pairs per warp for this case."""
    hq, hk, d = case.heads
    facts = dispatch.device_facts("cuda" if jax.default_backend() == "gpu" else "cpu")
    return dispatch.forward_launch(case.tokens * (hq + hk), d, None, facts, case.elem, case.style,
                                   case.rotary).pairs_per_warp


def forward_record(case: Case, copy_gbps: float) -> dict:
    inputs = make_inputs(case)
    ours = time_forward(case, inputs, qkr.fused)
    xla = time_forward(case, inputs, ref.fused)
    bound = case.forward_bytes() / (copy_gbps * 1e3)
    return dict(heads=list(case.heads), rotary_dim=case.rotary, T=case.tokens, style=case.style, dtype=case.dtype,
                ours_us=ours, xla_us=xla, bound_us=bound, copy_gbps=copy_gbps, bytes=case.forward_bytes(),
                pairs_per_warp=chosen_pairs_per_warp(case), speedup_vs_xla=xla / max(ours, 1e-9),
                ours_over_bound=ours / bound, bandwidth_fraction=bound / max(ours, 1e-9))


def backward_record(case: Case, copy_gbps: float) -> dict:
    inputs = make_inputs(case)
    bwd = time_backward_alone(case, inputs)
    fwdbwd = time_forward_backward(case, inputs, qkr.fused)
    xla_fwdbwd = time_forward_backward(case, inputs, ref.fused)
    bound = case.backward_bytes() / (copy_gbps * 1e3)
    return dict(heads=list(case.heads), rotary_dim=case.rotary, T=case.tokens, style=case.style, dtype=case.dtype,
                bwd_us=bwd,
                bwd_bound_us=bound, fwdbwd_us=fwdbwd, xla_fwdbwd_us=xla_fwdbwd, copy_gbps=copy_gbps,
                bwd_bandwidth_fraction=bound / max(bwd, 1e-9), fwdbwd_speedup_vs_xla=xla_fwdbwd / max(fwdbwd, 1e-9))


def progress(items: list, label: str) -> Iterable:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the bench extra
        for i, item in enumerate(items):
            print(f"[{label} {i + 1}/{len(items)}] {item}", flush=True)
            yield item
        return
    yield from tqdm(items, desc=label, dynamic_ncols=True)


def device_description() -> str:
    device = jax.devices()[0]
    return f"{device.device_kind} ({device.platform}), jax {jax.__version__}"


def heads_label(record: dict) -> str:
    """(Hq, Hk, D), with the rotary_dim where it is below D."""
    heads = tuple(record["heads"])
    rotary = record.get("rotary_dim", heads[2])
    return f"{heads}" if rotary == heads[2] else f"{heads} rotary {rotary}"


def forward_table(records: list[dict]) -> str:
    lines = ["| heads (Hq, Hk, D) | T | style | ours µs | XLA µs | bound µs | ours/bound | % of copy BW | vs XLA | N |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {heads_label(r)} | {r['T']} | {r['style']} | {r['ours_us']:.2f} | {r['xla_us']:.2f} | "
                     f"{r['bound_us']:.2f} | {r['ours_over_bound']:.2f} | {100 * r['bandwidth_fraction']:.0f}% | "
                     f"{r['speedup_vs_xla']:.2f}x | {r['pairs_per_warp']} |")
    return "\n".join(lines)


def backward_table(records: list[dict]) -> str:
    lines = ["| heads (Hq, Hk, D) | T | style | bwd µs | bwd bound µs | % of copy BW | fwd+bwd µs | XLA fwd+bwd µs "
             "| vs XLA |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {heads_label(r)} | {r['T']} | {r['style']} | {r['bwd_us']:.2f} | {r['bwd_bound_us']:.2f} "
                     f"| {100 * r['bwd_bandwidth_fraction']:.0f}% | {r['fwdbwd_us']:.2f} | {r['xla_fwdbwd_us']:.2f} | "
                     f"{r['fwdbwd_speedup_vs_xla']:.2f}x |")
    return "\n".join(lines)


def plot(records: list[dict], path: Path, title: str | None = None) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in the bench extra
        print("matplotlib not installed: no plot")
        return
    shapes = sorted({tuple(r["heads"]) for r in records})
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.5 * len(shapes), 4), squeeze=False)
    for ax, shape in zip(axes[0], shapes, strict=True):
        for style, marker in (("neox", "o"), ("gptj", "s")):
            rows = sorted((r for r in records if tuple(r["heads"]) == shape and r["style"] == style),
                          key=lambda r: r["T"])
            if not rows:
                continue
            ts = [r["T"] for r in rows]
            ax.plot(ts, [r["ours_us"] for r in rows], marker=marker, label=f"jax_qkrope {style}")
            ax.plot(ts, [r["xla_us"] for r in rows], marker=marker, linestyle="--", label=f"XLA reference {style}")
        rows = sorted((r for r in records if tuple(r["heads"]) == shape and r["style"] == "neox"), key=lambda r: r["T"])
        ax.plot([r["T"] for r in rows], [r["bound_us"] for r in rows], color="k", linestyle=":", label="copy bound")
        ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel="µs per call", title=f"(Hq, Hk, D) = {shape}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title or device_description(), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def with_meta(records: list[dict], meta: dict) -> list[dict]:
    """The JSON written: a flat list of records, each carrying the run's device, date and method (as timed so
    far: any fallbacks to wall clock counted, then the forced launch options)."""
    method = timing.method() + meta["forced"]
    return [{**r, "device": meta["device"], "date": meta["date"], "method": method} for r in records]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    parser.add_argument("--name", default=None, help="file prefix (default: the device kind)")
    parser.add_argument("--tokens", type=int, nargs="+", default=None)
    parser.add_argument("--shapes", type=str, nargs="+", default=None,
                        help="Hq,Hk,D triples, or Hq,Hk,D,R for a rotary_dim R below D")
    parser.add_argument("--styles", nargs="+", default=list(STYLES), choices=STYLES)
    parser.add_argument("--backward", action="store_true", help="also the backward and fwd+bwd rows")
    parser.add_argument("--backward-only", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a few points only")
    parser.add_argument("--prefetch", type=int, default=None, metavar="PAIRS",
                        help="force the forward's cos/sin prefetch distance in pairs (0: off; default: auto)")
    parser.add_argument("--persistent", type=int, default=None, choices=(0, 1),
                        help="force the tuned forward's persistent (streaming) grid off or on (default: auto)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                        help="time nothing: join these forward JSON files into one JSON, table and plot")
    args = parser.parse_args(argv)
    if args.merge:
        merge_forward(args.merge, args.out, args.name or "merged")
        return
    with contextlib.ExitStack() as overrides:
        if args.prefetch is not None:
            overrides.enter_context(dispatch.override_prefetch(args.prefetch))
        if args.persistent is not None:
            overrides.enter_context(dispatch.override_persistent(bool(args.persistent)))
        run(args)


def merge_forward(files: list[Path], out: Path, name: str) -> None:
    """One forward JSON, table and plot from the records of several runs (a bench split across calls)."""
    records = [r for f in files for r in json.loads(f.read_text())]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}_forward.json").write_text(json.dumps(records, indent=1))
    header = ", ".join(sorted({f"{r['device']}, {r['date']}" for r in records}))
    plot(records, out / f"{name}_forward.png", title=header)
    (out / f"{name}_forward.md").write_text(f"{header}\n\n{forward_table(records)}\n")
    print(forward_table(records))


def run(args: argparse.Namespace) -> None:
    """Times the cases the parsed command line asks for and writes the JSON, table and plot."""

    on_gpu = jax.default_backend() == "gpu"
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else list(SHAPES)
    rotary = {s[:3]: s[3] for s in shapes if len(s) == 4}
    shapes = [s[:3] for s in shapes]
    tokens = args.tokens or (list(TOKENS) if on_gpu else [1, 16, 128, 1024])
    if args.quick:
        shapes, tokens = shapes[:1], [t for t in tokens if t in (1, 1024, 16384)] or tokens[:2]
    name = args.name or jax.devices()[0].device_kind.replace(" ", "_").lower()
    args.out.mkdir(parents=True, exist_ok=True)

    copy_gbps = copy_bandwidth_gbps(1024 if on_gpu else 64)
    meta = dict(device=device_description(), date=datetime.date.today().isoformat(), host=platform.node(),
                copy_gbps=copy_gbps, forced="")
    if args.prefetch is not None:
        meta["forced"] += f"; the forward's cos/sin prefetch forced to {args.prefetch} pairs ahead (0: off)"
    if args.persistent is not None:
        meta["forced"] += f"; the tuned forward's persistent grid forced {'on' if args.persistent else 'off'}"
    print(f"{meta['device']}: device-to-device copy {copy_gbps:.0f} GB/s")
    cases = [Case(s, t, st, rotary_dim=rotary.get(s)) for s in shapes for t in tokens for st in args.styles]

    if not args.backward_only:
        records = [forward_record(c, copy_gbps) for c in progress(cases, "forward")]
        (args.out / f"{name}_forward.json").write_text(json.dumps(with_meta(records, meta), indent=1))
        plot(records, args.out / f"{name}_forward.png")
        table = forward_table(records)
        (args.out / f"{name}_forward.md").write_text(f"{meta['device']}, {meta['date']}\n\n{table}\n")
        print(table)
    if args.backward or args.backward_only:
        # The default shapes: (32, 8, 128) only; shapes asked for: every one.
        bwd_cases = cases if args.shapes else [c for c in cases if c.heads == (32, 8, 128)]
        records = [backward_record(c, copy_gbps) for c in progress(bwd_cases, "backward")]
        (args.out / f"{name}_backward.json").write_text(json.dumps(with_meta(records, meta), indent=1))
        table = backward_table(records)
        (args.out / f"{name}_backward.md").write_text(f"{meta['device']}, {meta['date']}\n\n{table}\n")
        print(table)


if __name__ == "__main__":
    main()
