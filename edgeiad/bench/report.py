"""Bench outputs: results.json (versioned), results.csv, a terminal table and one self-contained report.html."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

COLUMNS = (
    "key", "model", "target", "precision", "stats", "batch", "threads", "status", "reason", "size_mb", "load_s",
    "first_inference_ms", "p50_ms", "p95_ms", "p99_ms", "per_image_ms", "throughput_ips", "preprocess_ms",
    "inference_ms", "postprocess_ms", "peak_rss_mb", "image_auroc", "image_ap", "image_f1_max", "pixel_auroc",
    "aupro", "pixel_eval", "parity_max_rel_map_error", "parity_auroc_drop", "backbone_p50_ms", "e2e_over_backbone",
    "pareto",
)  # fmt: skip
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def flatten(record: dict) -> dict:
    """One flat row per case (the CSV and table view of a results.json record)."""
    row = {k: record.get(k) for k in ("key", "model", "target", "precision", "stats", "batch", "threads")}
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
    row["pareto"] = record.get("pareto", False)
    return {column: row.get(column) for column in COLUMNS}


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
    mark_pareto(document["cases"])
    document["cases"] = ordered(document["cases"])
    out = Path(out)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "html": out / "report.html"}
    paths["json"].write_text(json.dumps(document, indent=2) + "\n")
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for record in document["cases"]:
            writer.writerow(flatten(record))
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


TABLE_COLUMNS = (
    ("", "pareto"), ("case", "key"), ("status", "status"), ("ms/img", "per_image_ms"), ("p95 ms", "p95_ms"),
    ("img/s", "throughput_ips"), ("AUROC", "image_auroc"), ("px AUROC", "pixel_auroc"), ("RSS MB", "peak_rss_mb"),
    ("size MB", "size_mb"), ("load s", "load_s"), ("e2e/bb", "e2e_over_backbone"),
)  # fmt: skip


def print_table(document: dict, console) -> None:
    """The rich terminal table, Pareto front (★) first; skipped and failed cases with their reason."""
    from rich.table import Table

    table = Table(title=f"edgeiad bench on {document['environment']['cpu']['model']}")
    for title, _ in TABLE_COLUMNS:
        table.add_column(title, overflow="fold")
    rows = [flatten(record) for record in document["cases"]]
    for row in rows:
        if row["status"] == "ok":
            table.add_row(*[_fmt(row[key]) for _, key in TABLE_COLUMNS])
    console.print(table)
    for row in rows:
        if row["status"] != "ok":  # never dropped: each case that did not run says why
            console.print(f"{row['status']}: {row['key']}: {row['reason']}", markup=False, highlight=False)


def _text(x: float, y: float, content: str, size: int = 10, anchor: str = "start", extra: str = "") -> str:
    """An SVG <text> element with escaped content."""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" {extra}>{html.escape(content)}</text>'
    )


def _scale(value: float, low: float, high: float, start: float, end: float) -> float:
    return start + (value - low) / ((high - low) or 1.0) * (end - start)


def scatter_svg(
    points: list[tuple[float, float, str, str]],
    x_label: str,
    y_label: str,
    front: list | None = None,
    log_x: bool = False,
) -> str:
    """An inline SVG scatter plot: points (x, y, colour, label); `front` is a polyline of (x, y)."""
    import math

    width, height, left, bottom, top, right = 560, 360, 60, 40, 20, 20
    if not points:
        return f'<svg width="{width}" height="80"><text x="10" y="40">no measured points</text></svg>'
    fx = (lambda v: math.log10(max(v, 1e-6))) if log_x else (lambda v: v)
    xs, ys = [fx(p[0]) for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad_x, pad_y = (x1 - x0) * 0.08 or 0.5, (y1 - y0) * 0.08 or 0.01
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y

    def px(v):
        return _scale(fx(v), x0, x1, left, width - right)

    def py(v):
        return _scale(v, y0, y1, height - bottom, top)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="plot">']
    box = f'x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}"'
    parts.append(f'<rect {box} fill="#fafafa" stroke="#888"/>')
    for i in range(5):
        yv, xv = y0 + (y1 - y0) * i / 4, x0 + (x1 - x0) * i / 4
        parts.append(_text(left - 5, py(yv) + 4, f"{yv:.3f}", anchor="end"))
        shown = 10**xv if log_x else xv
        parts.append(
            _text(_scale(xv, x0, x1, left, width - right), height - bottom + 14, f"{shown:.3g}", anchor="middle")
        )
    parts.append(_text((left + width) / 2, height - 5, x_label, size=12, anchor="middle"))
    middle = (top + height) / 2
    parts.append(_text(14, middle, y_label, size=12, anchor="middle", extra=f'transform="rotate(-90 14 {middle})"'))
    if front:
        line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(front))
        parts.append(f'<polyline points="{line}" fill="none" stroke="#444" stroke-dasharray="4 3"/>')
    for x, y, colour, label in points:
        cx, cy = px(x), py(y)
        title = f"<title>{html.escape(label)}</title>"
        parts.append(f'<circle class="point" cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{colour}">{title}</circle>')
        # printed copies have no hover: label every point (without the model name, which the colour gives)
        parts.append(_text(cx + 7, cy - 6, label.split("-", 1)[-1], size=8, extra='fill="#555"'))
    parts.append("</svg>")
    return "".join(parts)


def bars_svg(items: list[tuple[str, float, str]], unit: str) -> str:
    """Horizontal bars (label, value, colour)."""
    width, row = 560, 18
    if not items:
        return '<svg width="560" height="40"><text x="10" y="25">no measured cases</text></svg>'
    peak = max(value for _, value, _ in items) or 1.0
    height = row * len(items) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    for i, (label, value, colour) in enumerate(items):
        length = value / peak * 260
        y = 5 + i * row
        parts.append(f'<text x="245" y="{y + 12}" font-size="10" text-anchor="end">{html.escape(label)}</text>')
        parts.append(f'<rect class="bar" x="250" y="{y + 2}" width="{length:.1f}" height="{row - 5}" fill="{colour}"/>')
        parts.append(f'<text x="{254 + length:.1f}" y="{y + 12}" font-size="10">{value:.0f} {unit}</text>')
    parts.append("</svg>")
    return "".join(parts)


def boxes_svg(items: list[tuple[str, list[float], str]]) -> str:
    """Latency distributions: one horizontal box (p5–p95 whiskers, quartile box, median) per case."""
    import numpy as np

    width, row = 560, 18
    if not items:
        return '<svg width="560" height="40"><text x="10" y="25">no measured cases</text></svg>'
    peak = max(max(values) for _, values, _ in items) or 1.0
    height = row * len(items) + 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    for i, (label, values, colour) in enumerate(items):
        p5, q1, med, q3, p95 = np.percentile(values, [5, 25, 50, 75, 95])
        x = [250 + v / peak * 290 for v in (p5, q1, med, q3, p95)]
        y = 5 + i * row
        parts.append(f'<text x="245" y="{y + 12}" font-size="10" text-anchor="end">{html.escape(label)}</text>')
        parts.append(f'<line x1="{x[0]:.1f}" x2="{x[4]:.1f}" y1="{y + 8}" y2="{y + 8}" stroke="{colour}"/>')
        geometry = f'x="{x[1]:.1f}" y="{y + 2}" width="{max(x[3] - x[1], 1):.1f}" height="{row - 6}"'
        parts.append(f'<rect {geometry} fill="{colour}" fill-opacity="0.5" stroke="{colour}"/>')
        parts.append(f'<line x1="{x[2]:.1f}" x2="{x[2]:.1f}" y1="{y + 1}" y2="{y + row - 3}" stroke="#000"/>')
    parts.append(_text(250, height - 4, "0 ms") + _text(540, height - 4, f"{peak:.1f} ms per call", anchor="end"))
    parts.append("</svg>")
    return "".join(parts)


def _colours(records: list[dict]) -> dict[str, str]:
    models = sorted({r["model"] for r in records})
    return {model: PALETTE[i % len(PALETTE)] for i, model in enumerate(models)}


def html_report(document: dict) -> str:
    """One offline HTML file: Pareto plot, size vs AUROC, RSS bars, latency distributions, environment, table."""
    records = document["cases"]
    colours = _colours(records)
    plotted = [r for r in records if _plottable(r)]
    latency = [(r["per_image_ms"], r["accuracy"]["image_auroc"], colours[r["model"]], r["key"]) for r in plotted]
    front = [(r["per_image_ms"], r["accuracy"]["image_auroc"]) for r in plotted if r.get("pareto")]
    size = [(r["size_mb"], r["accuracy"]["image_auroc"], colours[r["model"]], r["key"]) for r in plotted]
    measured = [r for r in records if r.get("status") == "ok"]
    rss = [(r["key"], r["peak_rss_mb"] or 0.0, colours[r["model"]]) for r in measured]
    boxes = [(r["key"], r["latencies_ms"], colours[r["model"]]) for r in measured if r.get("latencies_ms")]
    legend = " ".join(f'<span style="color:{c}">●</span> {html.escape(m)}' for m, c in colours.items())
    env = document["environment"]
    env_rows = [
        (
            "CPU",
            f"{env['cpu']['model']} ({env['cpu']['cores']} cores; ISA {', '.join(env['cpu']['isa']) or '–'})",
        ),
        ("memory", f"{env.get('memory_gb')} GB"),
        ("GPU", ", ".join(g["name"] for g in env["gpus"]) or "none"),
        ("OS / Python", f"{env['os']} / {env['python']}"),
        ("libraries", ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)),
        ("settings", ", ".join(f"{k}={v}" for k, v in document["settings"].items())),
    ]
    header = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS if c not in ("reason",))
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(_fmt(row[c]))}</td>" for c in COLUMNS if c != "reason")
        + "</tr>"
        + (
            f'<tr><td></td><td colspan="{len(COLUMNS) - 2}" class="reason">{html.escape(row["reason"])}</td></tr>'
            if row["reason"]
            else ""
        )
        for row in map(flatten, records)
    )
    style = (
        "body{font-family:sans-serif;margin:1.5em;color:#222}h2{margin-top:1.5em}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}.reason{text-align:left;"
        "color:#a00}.grid{display:flex;flex-wrap:wrap;gap:2em}"
    )
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>edgeiad bench</title>"
        f"<style>{style}</style></head><body><h1>edgeiad bench</h1><p>{html.escape(document['created'])} · {legend}</p>"
        '<div class="grid"><div><h2>Latency vs AUROC (Pareto front dashed)</h2>'
        + scatter_svg(latency, "ms per image (log)", "image AUROC (exported model)", front, log_x=True)
        + "</div><div><h2>Size vs AUROC</h2>"
        + scatter_svg(size, "artifact size, MB (log)", "image AUROC", log_x=True)
        + "</div></div><h2>Peak RSS per case</h2>"
        + bars_svg(rss, "MB")
        + "<h2>Latency distribution per call</h2>"
        + boxes_svg(boxes)
        + "<h2>Environment</h2><table>"
        + "".join(
            f"<tr><th>{html.escape(k)}</th><td style='text-align:left'>{html.escape(str(v))}</td></tr>"
            for k, v in env_rows
        )
        + "</table><h2>All cases</h2>"
        + f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table></body></html>\n"
    )
