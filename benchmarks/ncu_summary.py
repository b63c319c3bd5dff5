"""Summarises an `ncu --csv --metrics ...` log: per kernel and launch shape, the median of each metric."""

from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict

SCALE_TO_US = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}


def main(path: str) -> None:
    with open(path) as f:
        rows = [line for line in f if line.startswith('"')]
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    order: list[str] = []
    for row in csv.DictReader(rows):
        launch = f" grid={row.get('Grid Size', '')} block={row.get('Block Size', '')}"
        name = row["Kernel Name"].split("(")[0][:90] + launch
        metric, unit = row.get("Metric Name", ""), row.get("Metric Unit", "")
        try:
            value = float(row["Metric Value"].replace(",", ""))
        except ValueError:
            continue
        if metric == "gpu__time_duration.sum":
            metric, value = "us", value * SCALE_TO_US.get(unit, 1e-3)
        if name not in values:
            order.append(name)
        values[name][metric].append(value)
    for name in order:
        metrics = values[name]
        count = len(next(iter(metrics.values())))
        cells = " ".join(f"{m.split('.')[0].split('__')[-1]}={statistics.median(v):.2f}" for m, v in metrics.items())
        print(f"x{count:<3} {cells}  {name}")


if __name__ == "__main__":
    main(sys.argv[1])
