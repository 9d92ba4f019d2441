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

from edgeiad.data.elpv import _load_arrays
from edgeiad.metrics.image import roc_auc

LEVELS = {1 / 3: "1/3", 2 / 3: "2/3", 1.0: "1"}


def levels(run: Path) -> dict[str, float]:
    _images, probs, _types, paths = _load_arrays()
    level_of = {path: LEVELS[min(LEVELS, key=lambda p: abs(p - prob))] for path, prob in zip(paths, probs) if prob > 0}
    rows = [row for row in csv.DictReader(open(run / "scores.csv", encoding="utf-8")) if row["split"] == "test"]
    if not all(row["path"].startswith("elpv:") for row in rows):
        raise SystemExit(f"{run} was not trained on a built-in ELPV set: its scores.csv has no elpv: paths")
    good = [float(row["score"]) for row in rows if row["label"] == "0"]
    defective: dict[str, list[float]] = {name: [] for name in LEVELS.values()}
    for row in rows:
        if row["label"] == "1":
            defective[level_of[row["path"].removeprefix("elpv:")]].append(float(row["score"]))

    def against(scores: list[float]) -> float:
        return roc_auc(np.r_[np.zeros(len(good)), np.ones(len(scores))], np.r_[good, scores])

    result = {"all": against([s for v in defective.values() for s in v])}
    result.update({name: against(scores) for name, scores in defective.items() if scores})
    result["without 1/3"] = against(defective["2/3"] + defective["1"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    print("| run | all | 1/3 | 2/3 | 1 | without 1/3 |\n|---|---|---|---|---|---|")
    for run in args.runs:
        result = levels(run)
        cells = " | ".join(f"{result.get(key, float('nan')):.4f}" for key in ("all", "1/3", "2/3", "1", "without 1/3"))
        print(f"| {run} | {cells} |")


if __name__ == "__main__":
    main()
