"""Summarises an `ncu --csv --metrics gpu__time_duration.sum` log: kernel, count, median duration."""

from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as f:
        rows = [line for line in f if line.startswith('"')]
    durations: dict[str, list[float]] = defaultdict(list)
    order: list[str] = []
    for row in csv.DictReader(rows):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        launch = f" grid={row.get('Grid Size', '')} block={row.get('Block Size', '')}"
        name = row["Kernel Name"].split("(")[0][:90] + launch
        scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}.get(row.get("Metric Unit", "nsecond"), 1e-3)
        if name not in durations:
            order.append(name)
        durations[name].append(float(row["Metric Value"].replace(",", "")) * scale)
    for name in order:
        values = durations[name]
        print(f"{statistics.median(values):10.2f} us  x{len(values):<3} {name}")


if __name__ == "__main__":
    main(sys.argv[1])
