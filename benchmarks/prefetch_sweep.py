"""The tuned forward's cos/sin row prefetch distance on this GPU: auto (dispatch.PREFETCH_BYTES_PER_SM, set on the
H100) against off and against 1/2, 2 and 4 times the auto distance, at large T.

    python benchmarks/prefetch_sweep.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import jax

import jax_qkrope as qkr
from jax_qkrope import dispatch
from jax_qkrope.bench import Case, make_inputs, time_forward

SHAPES = ((32, 8, 128), (16, 16, 64), (16, 2, 256))
TOKENS = (16384, 65536)
SCALES = (0.0, 0.5, 1.0, 2.0, 4.0)  # times the auto distance; 0: off
ROUNDS = 1  # on the device clock one timing repeats within 2% (calibrate.py: DEVICE_TIE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    facts = dispatch.device_facts("cuda")
    rows = []
    for heads in SHAPES:
        for tokens in TOKENS:
            case = Case(heads, tokens, "neox")
            inputs = make_inputs(case)
            pairs = tokens * (heads[0] + heads[1])
            auto = dispatch.prefetch_distance(pairs, heads[2], 2, facts)
            rounds: dict[float, list[float]] = {s: [] for s in SCALES}
            for _ in range(ROUNDS):
                for scale in SCALES:
                    with dispatch.override_prefetch(int(auto * scale)):
                        rounds[scale].append(time_forward(case, inputs, qkr.fused))
            times = {s: statistics.median(v) for s, v in rounds.items()}
            rows.append(dict(heads=list(heads), T=tokens, auto_pairs=auto,
                             times_us={str(s): t for s, t in times.items()},
                             rounds_us={str(s): v for s, v in rounds.items()}))
            print(f"{heads} T={tokens:>6} auto={auto:>6} pairs: "
                  + " ".join(f"x{s:g}={t:8.2f}" for s, t in times.items()), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result = dict(device=jax.devices()[0].device_kind, rows=rows)
    (args.out / "prefetch_sweep.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
