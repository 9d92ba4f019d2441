"""Study outputs: the per-dataset table, the mean over datasets with mean ranks, as markdown and one HTML file."""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
from edgeiad_runtime.files import atomic_write

METRICS = (
    ("image AUROC", "image_auroc"),
    ("AP", "image_ap"),
    ("F1-max", "image_f1_max"),
    ("pixel AUROC", "pixel_auroc"),
    ("AUPRO@0.3", "aupro"),
)
RANKED = ("image_auroc", "pixel_auroc")
STYLE = (
    "body{font-family:sans-serif;margin:1.5em;color:#222}h2{margin-top:1.5em}table{border-collapse:collapse;"
    "font-size:12px}td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}td:first-child,"
    "th:first-child{text-align:left}"
)  # the one stylesheet of every study report
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def summarise(cases: list[dict]) -> list[dict]:
    """One row per model × variant: means over its datasets and its mean rank among all rows per dataset."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for case in cases:
        groups.setdefault((case["model"], case["variant"]), []).append(case)
    ranks = _ranks(cases)
    rows = []
    for (model, variant), members in groups.items():
        row = {"model": model, "variant": variant, "datasets": len(members)}
        for _, key in METRICS:
            row[key] = _mean([m["metrics"].get(key) for m in members])
            row[f"{key}_datasets"] = sum(m["metrics"].get(key) is not None for m in members)
        row["fit_s"] = _mean([m.get("fit_s") for m in members])
        row["latency_ms"] = _mean([m.get("latency_ms") for m in members])
        for key in RANKED:
            row[f"rank_{key}"] = _mean([ranks[key].get(m["id"]) for m in members])
        rows.append(row)
    return sorted(rows, key=lambda r: (-(r["image_auroc"] or 0.0), r["model"], r["variant"]))


def _mean(values: list) -> float | None:
    present = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(present)) if present else None


def _ranks(cases: list[dict]) -> dict[str, dict[str, float]]:
    """Rank 1 = best on each dataset, ties sharing their average rank."""
    found: dict[str, dict[str, float]] = {key: {} for key in RANKED}
    for dataset in {case["dataset"] for case in cases}:
        for key in RANKED:
            scored = [(c["id"], c["metrics"][key]) for c in cases if c["dataset"] == dataset and key in c["metrics"]]
            for case_id, value in scored:
                better = sum(other > value for _, other in scored)
                equal = sum(other == value for _, other in scored)
                found[key][case_id] = better + (equal + 1) / 2.0
    return found


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _label(row: dict) -> str:
    return row["model"] if row["variant"] == "default" else f"{row['model']} [{row['variant']}]"


def summary_table(document: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the mean-over-datasets table."""
    header = ["model", "datasets", *[f"mean {title}" for title, _ in METRICS], "fit s", "ms/img", "rank img", "rank px"]
    rows = []
    for row in document["summary"]:
        cells = [_label(row), str(row["datasets"])]
        cells += [_fmt(row[key]) for _, key in METRICS]
        cells += [_fmt(row["fit_s"], 1), _fmt(row["latency_ms"], 1)]
        cells += [_fmt(row[f"rank_{key}"], 2) for key in RANKED]
        rows.append(cells)
    return header, rows


def case_table(document: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-dataset table (dataset, then model order of the summary)."""
    header = ["dataset", "model", *[title for title, _ in METRICS], "fit s", "ms/img"]
    order = {(r["model"], r["variant"]): i for i, r in enumerate(document["summary"])}
    cases = sorted(document["cases"], key=lambda c: (c["dataset"], order.get((c["model"], c["variant"]), 0)))
    rows = [
        [case["dataset"], _label(case)]
        + [_fmt(case["metrics"].get(key)) for _, key in METRICS]
        + [_fmt(case.get("fit_s"), 1), _fmt(case.get("latency_ms"), 1)]
        for case in cases
    ]
    return header, rows


def _scoring_note(document: dict) -> str:
    if document["scoring"] == "exported":
        return (
            f"Scored through the exported ONNX artifact (edgeiad_runtime, ONNX Runtime, {document['threads']} "
            "thread(s)); ms/img is the median Detector.predict time at batch 1, pre/post-processing included."
        )
    return "Scored with the eager PyTorch model (fast study mode); no export, no latency."


def markdown(document: dict) -> str:
    """study.md: command, scoring, the summary table and the per-dataset table."""
    lines = ["# edgeiad study", "", f"`{document['command']}`" if document["command"] else "", ""]
    lines += [_scoring_note(document), "Pixel metrics: " + _pixel_note(document), ""]
    lines += ["## Mean over datasets", "", *_md_table(*summary_table(document)), ""]
    lines += ["## Per dataset", "", *_md_table(*case_table(document)), ""]
    return "\n".join(lines)


def _pixel_note(document: dict) -> str:
    modes = {case["metrics"].get("pixel_eval") for case in document["cases"] if "pixel_auroc" in case["metrics"]}
    modes.discard(None)
    return ", ".join(sorted(modes)) or "not recorded"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(row) + " |" for row in rows]


def _bars_svg(document: dict) -> str:
    """Mean image and pixel AUROC per row, as paired horizontal bars from 0.5 to 1."""
    rows = document["summary"]
    width, step = 640, 30
    height = step * len(rows) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    for i, row in enumerate(rows):
        y = 10 + i * step
        parts.append(f'<text x="215" y="{y + 14}" font-size="11" text-anchor="end">{html.escape(_label(row))}</text>')
        for j, (key, colour) in enumerate((("image_auroc", PALETTE[0]), ("pixel_auroc", PALETTE[1]))):
            value = row.get(key)
            if value is None:
                continue
            length = max(value - 0.5, 0.0) / 0.5 * 360
            parts.append(f'<rect x="220" y="{y + j * 12}" width="{length:.1f}" height="10" fill="{colour}"/>')
            parts.append(f'<text x="{224 + length:.1f}" y="{y + 9 + j * 12}" font-size="9">{value:.3f}</text>')
    parts.append(f'<text x="220" y="{height - 4}" font-size="10">0.5</text>')
    parts.append(f'<text x="580" y="{height - 4}" font-size="10" text-anchor="end">1.0</text></svg>')
    return "".join(parts)


def html_report(document: dict) -> str:
    """One offline HTML file: the AUROC bars, the summary and per-dataset tables, the settings."""
    legend = f'<span style="color:{PALETTE[0]}">■</span> image AUROC <span style="color:{PALETTE[1]}">■</span> pixel'
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>edgeiad study</title>"
        f"<style>{STYLE}</style></head><body><h1>edgeiad study</h1>"
        f"<p><code>{html.escape(document['command'])}</code></p><p>{html.escape(_scoring_note(document))}<br>"
        f"Pixel metrics: {html.escape(_pixel_note(document))}</p>"
        f"<h2>Mean AUROC over datasets</h2><p>{legend} AUROC (axis from 0.5)</p>{_bars_svg(document)}"
        f"<h2>Mean over datasets</h2>{_html_table(*summary_table(document))}"
        f"<h2>Per dataset</h2>{_html_table(*case_table(document))}"
        f"<h2>Settings</h2><pre>{html.escape(repr(document['settings']))}</pre>"
        f"<p>{html.escape(', '.join(f'{k} {v}' for k, v in document['versions'].items()))}</p></body></html>\n"
    )


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_reports(out: Path, document: dict) -> dict[str, Path]:
    """study.md and study.html beside study.json (each written atomically)."""
    paths = {"md": Path(out) / "study.md", "html": Path(out) / "study.html"}
    for kind, text in (("md", markdown(document)), ("html", html_report(document))):
        atomic_write(paths[kind], [text.encode("utf-8")])
    return paths
