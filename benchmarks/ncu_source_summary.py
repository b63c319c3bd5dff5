"""Summarises an Nsight Compute source page (``ncu -i REPORT --page source --csv --print-source sass``):
warp-state samples per stall reason, and the instructions where warps waited most, with their share.

    python benchmarks/ncu_source_summary.py REPORT.csv [--top 12]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("csv", type=Path)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    rows = list(csv.reader(args.csv.open()))
    kernel, header, body = rows[0], rows[1], rows[2:]
    samples = header.index("Warp Stall Sampling (All Samples)")
    reasons = [c for c in header if c.startswith("stall_") and "Not Issued" not in c]

    def count(row: list[str], column: int) -> float:
        return float(row[column] or 0)

    total = sum(count(row, samples) for row in body)
    print(f"{kernel[1] if len(kernel) > 1 else args.csv.name}: {total:.0f} samples over {len(body)} instructions")
    by_reason = {c: sum(count(row, header.index(c)) for row in body) for c in reasons}
    for reason, value in sorted(by_reason.items(), key=lambda item: -item[1]):
        if value:
            print(f"  {reason:24s} {100 * value / total:5.1f}%")
    print("  where (index, share, SASS):")
    ranked = sorted(enumerate(body), key=lambda item: -count(item[1], samples))[: args.top]
    for index, row in sorted(ranked):
        print(f"  {index:5d} {100 * count(row, samples) / total:5.1f}%  {row[1].strip()[:80]}")


if __name__ == "__main__":
    main()
