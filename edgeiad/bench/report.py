"""Bench outputs: results.json (versioned), results.csv, a terminal table and one self-contained report.html."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .recommend import describe, precision_verdicts, recommendation_lines, recommendations, verdict_lines

COLUMNS = (
    "key", "model", "target", "precision", "int8_scope", "stats", "batch", "threads", "clients", "dynamic_batching",
    "status", "reason", "size_mb", "load_s",
    "first_inference_ms", "p50_ms", "p95_ms", "p99_ms", "per_image_ms", "throughput_ips", "preprocess_ms",
    "inference_ms", "postprocess_ms", "peak_rss_mb", "image_auroc", "image_ap", "image_f1_max", "pixel_auroc",
    "aupro", "pixel_eval", "parity_max_rel_map_error", "parity_auroc_drop", "backbone_p50_ms", "e2e_over_backbone",
    "e2e_over_fp32_backbone", "pareto",
)  # fmt: skip


def flatten(record: dict) -> dict:
    """One flat row per case (the CSV and table view of a results.json record)."""
    keys = ("key", "model", "target", "precision", "stats", "batch", "threads", "clients", "dynamic_batching")
    row = {k: record.get(k) for k in keys}
    row["int8_scope"] = record.get("int8_scope") or ("all" if record.get("precision") == "int8" else None)
    row.update(status=record.get("status"), reason=record.get("reason"), size_mb=record.get("size_mb"))
    row.update(load_s=record.get("load_s"), first_inference_ms=record.get("first_inference_ms"))
    row.update({k: (record.get("latency") or {}).get(k) for k in ("p50_ms", "p95_ms", "p99_ms")})
    row.update(per_image_ms=record.get("per_image_ms"), throughput_ips=record.get("throughput_ips"))
    row.update(record.get("split_ms") or {})
    row["peak_rss_mb"] = record.get("peak_rss_mb")
    accuracy = record.get("accuracy") or {}
    keys = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro", "pixel_eval")
    row.update({k: accuracy.get(k) for k in keys})
    parity = record.get("parity") or {}
    row.update(parity_max_rel_map_error=parity.get("max_rel_map_error"), parity_auroc_drop=parity.get("auroc_drop"))
    row.update(
        backbone_p50_ms=(record.get("backbone") or {}).get("p50_ms"), e2e_over_backbone=record.get("e2e_over_backbone")
    )
    row["e2e_over_fp32_backbone"] = record.get("e2e_over_fp32_backbone")
    row["pareto"] = record.get("pareto", False)
    return {column: row.get(column) for column in COLUMNS}


STREAM_COLUMNS = (
    "key", "streams", "max_batch", "fps", "frames", "frame_errors", "mean_batch", "latency_ms_p50", "latency_ms_p95",
    "dropped",
)  # fmt: skip


def stream_rows(records: list[dict]) -> list[dict]:
    """One flat row per case and camera run (`bench --streams`), in the order they ran."""
    rows = []
    for record in records:
        for run in record.get("streams") or ():
            rows.append({column: run.get(column) for column in STREAM_COLUMNS} | {"key": record["key"]})
    return rows


def stream_mode(row: dict) -> str:
    """How the camera run scored its frames, as `edgeiad watch` names it."""
    if row["streams"] == 1:
        return "one camera"
    return "--max-batch 1" if row["max_batch"] == 1 else "batched"


def mark_pareto(records: list[dict]) -> None:
    """Flag the cases no other case beats on both per-image latency (lower) and image AUROC (higher)."""
    points = [(r, r["per_image_ms"], r["accuracy"]["image_auroc"]) for r in records if _plottable(r)]
    for record, latency, auroc in points:
        record["pareto"] = not any(
            (lat <= latency and auc >= auroc) and (lat < latency or auc > auroc) for _, lat, auc in points
        )


def _plottable(record: dict) -> bool:
    return record.get("status") == "ok" and bool((record.get("accuracy") or {}).get("image_auroc") is not None)


def ordered(records: list[dict]) -> list[dict]:
    """Pareto front first (fastest first), then other measured cases by latency, then skipped and failed ones."""

    def rank(record):
        measured = record.get("status") == "ok"
        return (
            not record.get("pareto", False),
            not measured,
            record.get("per_image_ms") or float("inf"),
            record["key"],
        )

    return sorted(records, key=rank)


def write_results(out: Path, document: dict) -> dict[str, Path]:
    """results.json, results.csv and report.html in `out`; returns their paths."""
    from .page import html_report

    mark_pareto(document["cases"])
    document["cases"] = ordered(document["cases"])
    document["recommendations"] = recommendations(document["cases"])
    document["precision_verdicts"] = precision_verdicts(document["cases"])
    out = Path(out)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "html": out / "report.html"}
    paths["json"].write_text(json.dumps(document, indent=2) + "\n")
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for record in document["cases"]:
            writer.writerow(flatten(record))
    streams = stream_rows(document["cases"])
    if streams:
        paths["streams_csv"] = out / "streams.csv"
        with open(paths["streams_csv"], "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=STREAM_COLUMNS)
            writer.writeheader()
            writer.writerows(streams)
    paths["html"].write_text(html_report(document))
    return paths


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "★" if value else ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


# (title, flat column, width): the terminal table fits 80 columns; the case name gives way first
TABLE_COLUMNS = (
    ("ms/img", "per_image_ms", 6), ("p95", "p95_ms", 6), ("AUROC", "image_auroc", 5), ("RSS MB", "peak_rss_mb", 6),
    ("MB", "size_mb", 5),
)  # fmt: skip
# Served models (bench --server): throughput and latency as the clients see them, no accuracy or size.
SERVER_COLUMNS = (("img/s", "throughput_ips", 5), ("p50", "p50_ms", 5), ("p95", "p95_ms", 5), ("p99", "p99_ms", 5))


def print_table(document: dict, console) -> None:
    """Recommendations, then the compact table (Pareto front ★ first); cases that did not run with their reason."""
    from rich import box
    from rich.table import Table

    if any("clients" in record for record in document["cases"]):
        print_server_table(document, console)
        return
    console.print(f"edgeiad bench on {document['environment']['cpu']['model']}", markup=False, highlight=False)
    for line in recommendation_lines(document.get("recommendations") or recommendations(document["cases"])):
        console.print(line, markup=False, highlight=False)
    for line in verdict_lines(precision_verdicts(document["cases"])):
        console.print(line, markup=False, highlight=False)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption="★ Pareto front · full table: results.csv")
    table.add_column("", width=1, no_wrap=True)
    table.add_column("case", overflow="ellipsis", no_wrap=True, min_width=20)
    for title, _, width in TABLE_COLUMNS:
        table.add_column(title, justify="right", no_wrap=True, min_width=width)
    for record in document["cases"]:
        if record.get("status") == "ok":
            row = flatten(record)
            table.add_row(_fmt(row["pareto"]), describe(record), *[_fmt(row[key]) for _, key, _ in TABLE_COLUMNS])
    console.print(table)
    print_stream_table(document, console)
    for record in document["cases"]:
        if record.get("status") != "ok":  # never dropped: each case that did not run says why
            console.print(f"{record['status']}: {record['key']}: {record.get('reason')}", markup=False, highlight=False)


def print_stream_table(document: dict, console) -> None:
    """bench --streams: total frames/s of all cameras per case and camera count, and one call's p50."""
    from rich import box
    from rich.table import Table

    rows = stream_rows(document["cases"])
    if not rows:
        return
    caption = "frames/s of all cameras together · p50: one scoring call · full table: streams.csv"
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption=caption)
    table.add_column("case", overflow="ellipsis", no_wrap=True, min_width=20)
    for title in ("cameras", "scoring", "frames/s", "p50 ms", "batch"):
        table.add_column(title, justify="right", no_wrap=True)
    for row in rows:
        cells = (str(row["streams"]), stream_mode(row), _fmt(row["fps"]), _fmt(row["latency_ms_p50"]))
        table.add_row(short_key(row["key"]), *cells, _fmt(row["mean_batch"]))
    console.print(table)
    for row in rows:
        if row["frame_errors"]:
            console.print(f"{row['key']}, {row['streams']} cameras: {row['frame_errors']} frames failed", markup=False)


def print_server_table(document: dict, console) -> None:
    """bench --server: one row per served model and client count, batching on/off side by side."""
    from rich import box
    from rich.table import Table

    console.print(f"edgeiad bench --server on {document['environment']['cpu']['model']}", markup=False)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption="latency in ms per request · full table: results.csv")
    table.add_column("served model", overflow="ellipsis", no_wrap=True, min_width=12)
    for title in ("batching", "clients"):
        table.add_column(title, justify="right", no_wrap=True)
    for title, _, width in SERVER_COLUMNS:
        table.add_column(title, justify="right", no_wrap=True, min_width=width)
    records = sorted(document["cases"], key=lambda r: (r.get("served_as", r["model"]), r.get("clients", 0)))
    for record in records:
        if record.get("status") == "ok":
            row = flatten(record)
            batching = "on" if record.get("dynamic_batching") else "off"
            cells = [_fmt(row[key]) for _, key, _ in SERVER_COLUMNS]
            table.add_row(record.get("served_as", record["model"]), batching, str(record["clients"]), *cells)
    console.print(table)
    for record in records:
        if record.get("status") != "ok":
            console.print(f"{record['status']}: {record['key']}: {record.get('reason')}", markup=False, highlight=False)


SHORT = {"per_image_ms": "ms", "p95_ms": "p95", "throughput_ips": "img/s", "peak_rss_mb": "RSS", "load_s": "load",
         "size_mb": "size", "image_auroc": "AUROC"}  # fmt: skip


def short_key(key: str) -> str:
    """A case key without the default parts (baked statistics, batch 1, one thread)."""
    return key.replace("-baked", "").replace("/b1", "").replace("/t1", "")


def compare_table(rows: list[dict], title: str):
    """`bench compare` as a table that fits 80 columns: new/base ratios, and the metrics that regressed."""
    from rich import box
    from rich.table import Table

    from .compare import METRICS

    shown = [m for m, _ in METRICS if m not in ("load_s", "size_mb")]
    caption = "new/base; regressed: worse than --threshold"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, caption=caption)
    table.add_column("case", overflow="fold", min_width=12)  # text may wrap; the numbers never do
    for metric in shown:
        table.add_column(SHORT[metric], justify="right", no_wrap=True, min_width=5)
    table.add_column("regressed", overflow="fold", min_width=9)
    for row in rows:
        cells = [f"{row['ratios'][m]:.2f}" if m in row["ratios"] else "–" for m in shown]
        flagged = ", ".join(SHORT[m] for m in row["regressions"])
        table.add_row(short_key(row["key"]), *cells, f"[red]{flagged}[/red]" if flagged else "ok")
    return table
