"""ELPV image AUROC per rater level (#14): good cells against the cells rated defective with probability 1/3, 2/3
and 1, all of them, and all but the 1/3 cells, from the test rows of each run's scores.csv (eager scores).

The ELPV labels are the share of raters who saw a defect; the built-in sets count every probability above 0 as
defective. The overall AUROC is the count-weighted mean of the per-level ones, so this shows which cells hold it.

    python benchmarks/studies/elpv_levels.py RUN [RUN ...]      # runs trained on elpv-mono / elpv-poly (-drift)
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from patchcore_levers import elpv_probabilities, level_aurocs

from edgeiad.metrics.image import roc_auc


def levels(run: Path) -> dict[str, float]:
    with open(run / "scores.csv", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
    if not all(row["path"].startswith("elpv:") for row in rows):
        raise SystemExit(f"{run} was not trained on a built-in ELPV set: its scores.csv has no elpv: paths")
    labels = np.array([int(row["label"]) for row in rows])
    values = np.array([float(row["score"]) for row in rows])
    prob = elpv_probabilities([row["path"] for row in rows])
    by_level = level_aurocs(labels, values, prob)
    without = ~np.isclose(prob, 1 / 3)
    return {
        "all": roc_auc(labels, values),
        **{name: by_level[level] for level, name in zip(by_level, ("1/3", "2/3", "1"))},
        "without 1/3": roc_auc(labels[without], values[without]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    print("| run | all | 1/3 | 2/3 | 1 | without 1/3 |\n|---|---|---|---|---|---|")
    for run in args.runs:
        cells = " | ".join(f"{value:.4f}" for value in levels(run).values())
        print(f"| {run} | {cells} |")


if __name__ == "__main__":
    main()
