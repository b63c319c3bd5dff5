"""Calibrates the forward kernel's pairs-per-warp heuristic on the current GPU.

For each rotary style, head_dim class (64, 128, 256 and the generic kernels, measured at 80; for neox also
64r, 128r, 256r: the tuned forward's partial-rotary layout; the generic table serves the other partial-rotary
neox, dispatch.forward_class) and a ladder
of token counts, times every forced N in {1, 2, 4, 8, 16} and, for the tuned classes, N = 4, 8, 16 on the
persistent grid ("4p", ...: dispatch.parse_choice; a no-op where that N's build does not stream), keeps the
fastest, turns the winners into thresholds on the pair count, and writes
``jax_qkrope/calibration/sm<major><minor>.json`` ("forward" for neox, "forward_gptj"), which the dispatch reads.
It then re-times the automatic choice with the new file and the best forced N, in turn, at every point and
reports one against the other (the issue asks for auto within 3% everywhere). Also decides up to which pair count
programmatic dependent launch pays off, and, before the sweep, up to which output size the forward's
keep_outputs L2 policy pays off (dispatch.L2_POLICIES; the sweep then runs with it, as users will).

    python benchmarks/calibrate.py [--quick] [--classes 64 128 256 generic 64r 128r 256r] [--tokens T ...] [--out DIR]
    python benchmarks/calibrate.py --rederive SWEEP.json   # re-pick stored times, no GPU

With --classes or --tokens, only those head_dim classes / token counts are re-measured and merged into the
existing file (the PDL and L2 decisions are kept unless --measure-l2); the auto check then covers the
re-measured points, and --previous-sweep carries the rows not re-measured from an earlier sweep file into the
one written, and into the thresholds of the classes re-measured.

With --per-device the file is the GPU model's own, ``sm<major><minor>_<model>.json`` (``sm90_nvidia_h200.json``),
which the dispatch reads for that model in place of the architecture's: the H100 and the H200 share compute
capability and SM count but not memory bandwidth, and so not every launch choice.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
from pathlib import Path

import jax

import jax_qkrope as qkr
from jax_qkrope import dispatch, timing
from jax_qkrope.bench import Case, make_inputs, time_forward

HEAD_DIM_CLASSES = {"64": (16, 16, 64), "128": (32, 8, 128), "256": (16, 2, 256), "generic": (32, 8, 80)}
# The tuned forward's partial-rotary neox classes (dispatch.forward_class): (Hq, Hk, D, rotary_dim), neox only.
# Qwen3-Next's heads for 256; a file without them reads the full-rotary class's table.
PARTIAL_CLASSES = {"64r": (16, 16, 64, 32), "128r": (32, 8, 128, 64), "256r": (16, 2, 256, 64)}
ALL_CLASSES = {**HEAD_DIM_CLASSES, **PARTIAL_CLASSES}
# The bench's token counts and, from session 22, 256, 512 and 2048: with only 128 and 1024 measured, the
# boundary between them fell at their geometric mean, and auto ran 9-22% slower than the best N at 9216-10240
# pairs ((64, 8, 128) at T = 128, (32, 8, 128) at T = 256: results/run20_canonical/3_n_sweep_mid_t).
TOKENS = (1, 16, 128, 256, 512, 1024, 2048, 4096, 16384, 65536)
STYLES = tuple(dispatch.FORWARD_TABLE_KEYS)
# Choices as the files write them: "N" (plain grid) and "Np" (persistent grid), plain first (ties go to it).
PLAIN_CHOICES = tuple(str(n) for n in dispatch.AUTO_CHOICES)
PERSISTENT_CHOICES = ("4p", "8p", "16p")


def choices_of(cls: str) -> tuple[str, ...]:
    """The choices timed for a head_dim class: the generic kernels and the partial layout have no persistent
    build."""
    return PLAIN_CHOICES if cls == "generic" or cls in PARTIAL_CLASSES else PLAIN_CHOICES + PERSISTENT_CHOICES


def styles_of(cls: str) -> tuple[str, ...]:
    """The rotary styles a class is calibrated for: the partial layout is neox's (gptj needs none)."""
    return ("neox",) if cls in PARTIAL_CLASSES else STYLES


def case_of(cls: str, tokens: int, style: str) -> Case:
    """The problem a class is timed on."""
    shape = ALL_CLASSES[cls]
    return Case(shape[:3], tokens, style, rotary_dim=shape[3] if len(shape) == 4 else None)


TIE = 0.01  # within 1% of the fastest counts as a tie, won by the earlier choice (more parallelism)
ROUNDS = 3  # re-timings of auto and of the best forced N in the final check
# Launch-bound points (T <= SMALL_T): one timing varies by +-20% between runs and sometimes lands far below
# the launch floor, which once made N = 16 the winner at T = 1. Each N is timed SMALL_ROUNDS times there,
# the Ns interleaved, and the median kept; Ns within SMALL_TIE of the fastest tie, won by the smallest (the
# most warps, each with the shortest chain: the faster side in graph replay, results/run10_chain).
SMALL_T, SMALL_ROUNDS, SMALL_TIE = 128, 5, 0.20
# Larger points: LARGE_ROUNDS interleaved timings per N, median kept. One timing moves by 3-5% between runs at
# T = 16384 (64-dim gptj, N = 8 against 16: 51.87 / 51.75 us in one run, 51.11 / 49.42 in the next:
# results/run17_partial_neox/calibration, results/run18_partial_backward/3_bench_backward_128r), which had the 1%
# tie give N = 8 a point where 16 is the faster. Sweeps before session 20 timed these once (rounds_us).
LARGE_ROUNDS = 3
# On the device's clock (timing.per_call_us on a GPU, from session 21) one timing repeats within 2% at every
# size (results/run19_device_timeline): each choice is timed once, and choices within DEVICE_TIE of the fastest
# tie, won by the earlier. The rules above stay for sweeps timed by wall clock (rederive reads each row's tie).
DEVICE_TIE = 0.02
# The L2 policy's points: the tuned head shapes at token counts whose output spans 8 MB to 300 MB (the H100's
# L2 holds 50 MB), each timed with the policy off and on in turn, L2_ROUNDS times.
L2_SHAPES = ((16, 16, 64), (32, 8, 128), (16, 2, 256), (64, 8, 128))
L2_TOKENS = (2048, 4096, 8192, 16384)
L2_ROUNDS = 3


def table_entry(bound: int | None, choice: str) -> list:
    """[max_pairs, N], or [max_pairs, N, True] for a persistent choice (dispatch.pick_variant)."""
    n, persistent = dispatch.parse_choice(choice)
    return [bound, n, True] if persistent else [bound, n]


def thresholds_from(points: list[tuple[int, str]]) -> list[list]:
    """(pairs, best choice) sorted by pairs -> [[max_pairs, N(, True)], ..., [None, N(, True)]] with a boundary
    at the geometric mean of neighbouring points whose winners differ."""
    out: list[list] = []
    for (pairs, choice), nxt in zip(points, [*points[1:], None], strict=True):
        if nxt is None:
            out.append(table_entry(None, choice))
        elif nxt[1] != choice:
            out.append(table_entry(int(math.sqrt(pairs * nxt[0])), choice))
    return out


def device_clock() -> bool:
    """Whether per_call_us times on the device's own clock here (a GPU: timing.per_call_us)."""
    return jax.default_backend() == "gpu"


def tie_of(tokens: int, on_device_clock: bool) -> float:
    """How close to the fastest a choice must be to tie (the earlier choice wins a tie)."""
    if on_device_clock:
        return DEVICE_TIE
    return SMALL_TIE if tokens <= SMALL_T else TIE


def pick(times: dict, tie: float) -> str:
    """The winning choice: the first (in PLAIN_CHOICES + PERSISTENT_CHOICES order) within the tie of the fastest."""
    best = min(times.values())
    return next(c for c in PLAIN_CHOICES + PERSISTENT_CHOICES if c in times and times[c] <= best * (1 + tie))


def row_tie(row: dict) -> float:
    """The tie a sweep row was picked under: stored from session 22 on, the wall-clock rules before."""
    return row.get("tie", tie_of(row["T"], False))


def rederive(path: Path) -> None:
    """Re-picks every point of a sweep file from its stored times under the current rules (pick) and
    rewrites it and the calibration file from it, without timing anything: auto then issues each point's
    winner by construction."""
    data = json.loads(path.read_text())
    calibration, sweep = data["calibration"], data["sweep"]
    for style in STYLES:
        for cls in ALL_CLASSES:
            rows = [r for r in sweep if r["style"] == style and r["head_dim_class"] == cls]
            if not rows:
                continue
            rows.sort(key=lambda r: r["T"])
            for row in rows:
                row["best"] = pick(row["times_us"], row_tie(row))
                row.update(auto_n=row["best"], same_launch=True, auto_over_best=1.0)
            table = calibration[dispatch.FORWARD_TABLE_KEYS[style]]
            table[cls] = thresholds_from([(r["pairs"], r["best"]) for r in rows])
    data["worst_auto_over_best"] = 1.0
    path.write_text(json.dumps(data, indent=1))
    digits = calibration["arch"].removeprefix("sm_")  # "90": compute capability 9.0
    written = write_calibration(calibration, (int(digits[:-1]), int(digits[-1])),
                                calibration.get("device") if calibration.get("per_device") else None)
    tables = {key: calibration[key] for key in dispatch.FORWARD_TABLE_KEYS.values()}
    print(f"re-derived {path} and {written}: {json.dumps(tables)}")


def write_calibration(calibration: dict, compute_capability: tuple[int, int], device_name: str | None = None) -> Path:
    """Writes the file the dispatch reads for this architecture (with device_name: for that model only), and
    drops the dispatch's cached copy."""
    path = dispatch.calibration_path(compute_capability, device_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration, indent=1) + "\n")
    dispatch.load_calibration.cache_clear()
    return path


def time_choice(case: Case, inputs: dict, choice: int | str) -> float:
    with dispatch.override_choice(choice):
        return time_forward(case, inputs, qkr.fused)


def rounds_of(tokens: int) -> int:
    """Timings per choice at a point (DEVICE_TIE, SMALL_ROUNDS, LARGE_ROUNDS)."""
    if device_clock():
        return 1
    return SMALL_ROUNDS if tokens <= SMALL_T else LARGE_ROUNDS


def time_choices(case: Case, inputs: dict, choices: tuple[str, ...]) -> tuple[dict, dict]:
    """Every choice's time (the median of its rounds) and the rounds themselves."""
    rounds: dict[str, list[float]] = {c: [] for c in choices}
    for _ in range(rounds_of(case.tokens)):
        for c in choices:
            rounds[c].append(time_choice(case, inputs, c))
    return {c: statistics.median(values) for c, values in rounds.items()}, rounds


def l2_limit_from(rows: list[dict]) -> int:
    """The output size up to which keep_outputs is on: of the cut-offs at the measured sizes (or none), the one
    with the least summed log time over all points, moved to the geometric mean of that size and the next
    measured one (0: never on)."""
    sizes = sorted({row["output_bytes"] for row in rows})

    def cost(limit: int) -> float:
        return sum(math.log(row["on_us"] if row["output_bytes"] <= limit else row["off_us"]) for row in rows)

    best = min([0, *sizes], key=cost)  # ties: the smaller cut-off
    larger = [size for size in sizes if size > best]
    return 0 if best == 0 else int(math.sqrt(best * larger[0])) if larger else best


def measure_l2_keep_max_bytes() -> tuple[int, list[dict]]:
    """(l2_keep_max_bytes, the timed points): each point with the automatic N, keep_outputs off and on."""
    rows = []
    for heads in L2_SHAPES:
        for t in L2_TOKENS:
            for style in STYLES:
                case = Case(heads, t, style)
                inputs = make_inputs(case)
                rounds: dict[int, list[float]] = {0: [], 1: []}
                for _ in range(L2_ROUNDS):
                    for policy in rounds:
                        with dispatch.override_l2_policy(policy):
                            rounds[policy].append(time_forward(case, inputs, qkr.fused))
                off, on = (statistics.median(rounds[policy]) for policy in (0, 1))
                rows.append(dict(heads=list(heads), T=t, style=style, output_bytes=case.head_bytes(), off_us=off,
                                 on_us=on, rounds_us={str(k): v for k, v in rounds.items()}))
                print(f"l2 {heads} {style} T={t:>6} out {case.head_bytes() / 2**20:6.1f} MiB: off {off:8.2f} us, "
                      f"on {on:8.2f} us ({100 * (on / off - 1):+.1f}%)", flush=True)
    limit = l2_limit_from(rows)
    print(f"l2_keep_max_bytes = {limit} ({limit / 2**20:.1f} MiB)", flush=True)
    return limit, rows


def measure_pdl_max_pairs(thresholds_128: list) -> int:
    """Programmatic dependent launch stays on up to the largest small problem it speeds up."""
    pdl_max_pairs = 0
    for t in (1, 16, 128, 1024):
        case = Case(HEAD_DIM_CLASSES["128"], t, "neox")
        inputs = make_inputs(case)
        n = dispatch.pick_from_thresholds(thresholds_128, t * 40)
        with dispatch.override_pdl(False):
            off = time_choice(case, inputs, n)
        with dispatch.override_pdl(True):
            on = time_choice(case, inputs, n)
        print(f"pdl T={t}: off {off:.2f} us, on {on:.2f} us", flush=True)
        if on >= off * (1 - TIE):
            break
        pdl_max_pairs = t * 40
    return pdl_max_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--classes", nargs="+", choices=list(ALL_CLASSES), default=list(ALL_CLASSES))
    parser.add_argument("--tokens", type=int, nargs="+", default=None, help="re-measure these token counts only")
    parser.add_argument("--previous-sweep", type=Path, default=None,
                        help="with --classes or --tokens: carry this sweep's other rows into the one written and "
                             "into the re-measured classes' thresholds")
    parser.add_argument("--measure-l2", action="store_true",
                        help="with --classes: re-measure the L2 policy's output limit as well (before the sweep)")
    parser.add_argument("--rederive", type=Path, default=None,
                        help="re-pick a sweep file's points from its stored times (no GPU) and rewrite both files")
    parser.add_argument("--per-device", action="store_true",
                        help="write this GPU model's own file (sm90_nvidia_h200.json), which the dispatch prefers to "
                             "the architecture's; classes not re-measured come from the file the dispatch reads now")
    args = parser.parse_args()
    if args.rederive is not None:
        rederive(args.rederive)
        return
    tokens = tuple(args.tokens) if args.tokens else (1, 16, 1024, 16384, 65536) if args.quick else TOKENS
    partial = set(args.classes) != set(ALL_CLASSES) or set(tokens) != set(TOKENS)
    facts = dispatch.device_facts("cuda")
    assert facts.compute_capability is not None, "calibrate on a CUDA GPU"
    # Rows of an earlier sweep that this run does not re-measure: kept in the sweep written and, for the classes
    # re-measured, in their thresholds.
    previous_sweep = {} if args.previous_sweep is None else json.loads(args.previous_sweep.read_text())
    carried = [row for row in previous_sweep.get("sweep", [])
               if row["head_dim_class"] not in args.classes or row["T"] not in tokens]
    for row in carried:  # sweeps before the partial classes: every row at full rotary
        row.setdefault("rotary_dim", row["heads"][2])
    major, minor = facts.compute_capability
    device_name = facts.name if args.per_device else None
    if device_name is None and dispatch.calibration_path((major, minor), facts.name).exists():
        parser.error(f"{facts.name} has its own calibration file, which the dispatch reads: pass --per-device")
    previous = dispatch.load_calibration((major, minor), device_name)
    l2_rows: list[dict] = []
    if not partial or args.measure_l2:
        l2_keep_max_bytes, l2_rows = measure_l2_keep_max_bytes()
        if previous is not None:  # the sweep below runs with the new limit
            write_calibration({**previous, "l2_keep_max_bytes": l2_keep_max_bytes}, (major, minor), device_name)
    else:  # the limit kept, and the timings it came from with it
        l2_keep_max_bytes = int((previous or {}).get("l2_keep_max_bytes", 0))
        l2_rows = previous_sweep.get("l2_policy", [])
    sweep: list[dict] = []
    tables: dict[str, dict[str, list]] = {style: {} for style in STYLES}
    for style in STYLES:
        for cls in ALL_CLASSES:
            if cls not in args.classes or style not in styles_of(cls):
                continue
            winners = [(row["pairs"], str(row["best"])) for row in carried
                       if row["style"] == style and row["head_dim_class"] == cls]
            for t in tokens:
                case = case_of(cls, t, style)
                inputs = make_inputs(case)
                times, rounds = time_choices(case, inputs, choices_of(cls))
                tie = tie_of(t, device_clock())
                best = pick(times, tie)
                pairs = t * (case.heads[0] + case.heads[1])
                winners.append((pairs, best))
                sweep.append(dict(style=style, head_dim_class=cls, heads=list(case.heads), rotary_dim=case.rotary,
                                  T=t, pairs=pairs, times_us=times, rounds_us=rounds, best=best, tie=tie))
                print(f"{style} {cls:>8} T={t:>6} pairs={pairs:>8} "
                      + " ".join(f"{c}={v:8.2f}" for c, v in times.items()) + f"  -> {best}", flush=True)
            tables[style][cls] = thresholds_from(sorted(winners))

    if partial and previous is not None:  # merge the re-measured classes; keep the PDL decision
        for style in STYLES:
            tables[style] = {**dispatch.forward_tables(previous, style), **tables[style]}
        pdl_max_pairs = int(previous.get("pdl_max_pairs", 0))
    else:
        pdl_max_pairs = measure_pdl_max_pairs(tables["neox"]["128"])
    calibration = dict(arch=f"sm_{major}{minor}", device=facts.name, sms=facts.num_sms,
                       date=datetime.date.today().isoformat(), source="benchmarks/calibrate.py",
                       **{dispatch.FORWARD_TABLE_KEYS[style]: tables[style] for style in STYLES},
                       pdl_max_pairs=pdl_max_pairs, l2_keep_max_bytes=l2_keep_max_bytes,
                       shared_rows_min_bytes=int((previous or {}).get("shared_rows_min_bytes", 0)),
                       remeasured=args.classes if partial else list(ALL_CLASSES), remeasured_tokens=list(tokens),
                       per_device=args.per_device)
    path = write_calibration(calibration, (major, minor), device_name)
    print(f"wrote {path}: {json.dumps(tables)} pdl_max_pairs={pdl_max_pairs} l2_keep_max_bytes={l2_keep_max_bytes}")

    # Auto with the new calibration vs the best forced N at every measured point. Where auto issues the very
    # launch the best forced N does (same kernel, same attributes), it is that N by construction: nothing to
    # re-time. Elsewhere the two are re-timed in turn, ROUNDS times each, fastest of each kept, so drift
    # between the sweep and this check does not count against auto.
    worst = 1.0
    for row in sweep:
        case = Case(tuple(row["heads"]), row["T"], row["style"], rotary_dim=row["rotary_dim"])
        hq, hk, d = row["heads"]
        pairs = row["T"] * (hq + hk)
        auto_launch = dispatch.forward_launch(pairs, d, None, facts, case.elem, case.style, case.rotary)
        with dispatch.override_choice(row["best"]):
            best_launch = dispatch.forward_launch(pairs, d, None, facts, case.elem, case.style, case.rotary)
        same = auto_launch == best_launch
        auto_choice = f"{auto_launch.pairs_per_warp}{'p' if auto_launch.persistent else ''}"
        row.update(auto_n=auto_launch.pairs_per_warp, auto_choice=auto_choice, same_launch=same, auto_over_best=1.0)
        if same:
            print(f"auto {row['style']} {row['head_dim_class']:>8} T={row['T']:>6}: {auto_choice:<3} "
                  "= the best forced choice's launch", flush=True)
            continue
        inputs = make_inputs(case)
        autos, bests = [], []
        for _ in range(ROUNDS):
            autos.append(time_forward(case, inputs, qkr.fused))
            bests.append(time_choice(case, inputs, row["best"]))
        auto, best = min(autos), min(bests)
        row.update(auto_us=auto, best_retimed_us=best, auto_over_best=auto / best)
        worst = max(worst, row["auto_over_best"])
        print(f"auto {row['style']} {row['head_dim_class']:>8} T={row['T']:>6}: "
              f"{auto_choice:<3} {auto:8.2f} us vs "
              f"best forced {row['best']:<3} {best:8.2f} us ({100 * (auto / best - 1):+.1f}%)", flush=True)
    print(f"worst auto/best over {len(sweep)} points: {worst:.3f}")
    if carried:  # a complete sweep: the rows not re-measured as they were
        sweep = sorted(carried + sweep, key=lambda row: (STYLES.index(row["style"]),
                                                         list(ALL_CLASSES).index(row["head_dim_class"]), row["T"]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"calibration_sm{major}{minor}_sweep.json").write_text(
        json.dumps(dict(calibration=calibration, device=jax.devices()[0].device_kind, method=timing.method(),
                        sweep=sweep, worst_auto_over_best=worst, l2_policy=l2_rows), indent=1))


if __name__ == "__main__":
    main()
