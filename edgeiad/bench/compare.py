"""`edgeiad bench compare A B`: per-case ratios between two results.json files, regressions flagged."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ArtifactError, DataNotFoundError

# (metric, how to read it from a flat row, True when higher is better)
METRICS = (
    ("per_image_ms", False),
    ("p95_ms", False),
    ("throughput_ips", True),
    ("peak_rss_mb", False),
    ("load_s", False),
    ("size_mb", False),
    ("image_auroc", True),
)
REGRESSION = 0.10


def load_results(path: Path) -> dict:
    """Read a results.json, refusing files that are not bench results."""
    from .runner import SCHEMA_VERSION

    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"results file not found: {path} (run edgeiad bench --out DIR first)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION or "cases" not in data:
        raise ArtifactError(f"{path} is not an edgeiad bench results.json (schema {SCHEMA_VERSION})")
    return data


def compare(base: dict, new: dict, threshold: float = REGRESSION) -> list[dict]:
    """One row per case present in both: new/base ratios, and the metrics that got worse by > threshold."""
    from .report import flatten

    old_rows = {row["key"]: row for row in map(flatten, base["cases"]) if row["status"] == "ok"}
    rows = []
    for row in map(flatten, new["cases"]):
        old = old_rows.get(row["key"])
        if old is None or row["status"] != "ok":
            continue
        ratios, regressions = {}, []
        for metric, higher_better in METRICS:
            before, after = old.get(metric), row.get(metric)
            if before in (None, 0) or after is None:
                continue
            ratio = after / before
            ratios[metric] = ratio
            worse = (1 - ratio) if higher_better else (ratio - 1)
            if metric == "image_auroc":
                worse = before - after  # AUROC: an absolute drop, not a ratio
            if worse > threshold or (metric == "image_auroc" and worse > 0.01):
                regressions.append(metric)
        rows.append({"key": row["key"], "ratios": ratios, "regressions": regressions})
    return rows
