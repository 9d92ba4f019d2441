"""report.html: recommendations, Pareto plot, size vs AUROC, RSS, latency boxes, environment, tables (offline)."""

from __future__ import annotations

import html

from .recommend import describe, precision_verdicts, recommendation_lines, recommendations, verdict_lines
from .report import COLUMNS, _fmt, _plottable, flatten, stream_mode, stream_rows
from .svg import bars_svg, boxes_svg, scatter_svg

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
COMPACT = ("pareto", "per_image_ms", "p95_ms", "throughput_ips", "image_auroc", "pixel_auroc", "peak_rss_mb", "size_mb")
STYLE = (
    "body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1300px}h2{margin:1.2em 0 .3em}"
    "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}"
    "td.case{text-align:left}.reason{text-align:left;color:#a00}.grid{display:flex;flex-wrap:wrap;gap:1.5em}"
    ".pick{font-size:15px;margin:.2em 0}.pick b{color:#1a5}details{margin-top:1em}summary{cursor:pointer}"
)


def _colours(records: list[dict]) -> dict[str, str]:
    models = sorted({r["model"] for r in records})
    return {model: PALETTE[i % len(PALETTE)] for i, model in enumerate(models)}


def _label(record: dict) -> str:
    return describe(record).replace("/", " ")


def _table(records: list[dict], columns: tuple[str, ...]) -> str:
    header = "<th>case</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = []
    for record in records:
        row = flatten(record)
        cells = "".join(f"<td>{html.escape(_fmt(row[c]))}</td>" for c in columns)
        rows.append(f'<tr><td class="case">{html.escape(row["key"])}</td>{cells}</tr>')
        if row["reason"]:
            rows.append(
                f'<tr><td></td><td colspan="{len(columns)}" class="reason">{html.escape(row["reason"])}</td></tr>'
            )
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _streams(records: list[dict]) -> str:
    """bench --streams: one row per case and camera run; empty when none ran."""
    rows = stream_rows(records)
    if not rows:
        return ""
    titles = ("case", "cameras", "scoring", "frames/s", "p50 ms", "p95 ms", "mean batch", "dropped", "frame errors")
    header = "".join(f"<th>{html.escape(t)}</th>" for t in titles)
    body = []
    for row in rows:
        values = (row["streams"], stream_mode(row), row["fps"], row["latency_ms_p50"], row["latency_ms_p95"],
                  row["mean_batch"], row["dropped"], row["frame_errors"])  # fmt: skip
        cells = "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in values)
        body.append(f'<tr><td class="case">{html.escape(row["key"])}</td>{cells}</tr>')
    note = "<small>frames/s of all cameras together (each always has a fresh frame); p50/p95: one scoring call</small>"
    table = f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f"<h2>Several cameras</h2>{note}{table}"


def _environment(document: dict) -> str:
    env = document["environment"]
    rows = [
        ("CPU", f"{env['cpu']['model']} ({env['cpu']['cores']} cores; ISA {', '.join(env['cpu']['isa']) or '–'})"),
        ("memory", f"{env.get('memory_gb')} GB"),
        ("GPU", ", ".join(g["name"] for g in env["gpus"]) or "none"),
        ("OS / Python", f"{env['os']} / {env['python']}"),
        ("libraries", ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)),
        ("settings", ", ".join(f"{k}={v}" for k, v in document["settings"].items())),
    ]
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td class='case'>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _picks(document: dict) -> str:
    lines = recommendation_lines(document.get("recommendations") or recommendations(document["cases"]))
    if not lines:
        return "<p>No case was measured with an AUROC: nothing to recommend.</p>"
    items = []
    for line in lines:
        budget, _, rest = line.partition(": ")
        items.append(f'<p class="pick">{html.escape(budget)}: <b>{html.escape(rest)}</b></p>')
    items += [f"<p>{html.escape(line)}</p>" for line in verdict_lines(precision_verdicts(document["cases"]))]
    return "".join(items)


def html_report(document: dict) -> str:
    """One offline HTML file: what to deploy per latency budget first, then the evidence."""
    records = document["cases"]
    colours = _colours(records)
    plotted = [r for r in records if _plottable(r)]
    latency = [(r["per_image_ms"], r["accuracy"]["image_auroc"], colours[r["model"]], _label(r)) for r in plotted]
    size = [(r["size_mb"], r["accuracy"]["image_auroc"], colours[r["model"]], _label(r)) for r in plotted]
    measured = [r for r in records if r.get("status") == "ok"]
    rss = [(_label(r), r["peak_rss_mb"] or 0.0, colours[r["model"]]) for r in measured]
    boxes = [(_label(r), r["latencies_ms"], colours[r["model"]]) for r in measured if r.get("latencies_ms")]
    legend = " ".join(f'<span style="color:{c}">●</span> {html.escape(m)}' for m, c in colours.items())
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>edgeiad bench</title><style>{STYLE}</style></head>"
        f"<body><h1>edgeiad bench</h1><p>{html.escape(document['created'])} · "
        f"{html.escape(document['environment']['cpu']['model'])} · {legend}</p>"
        f"<h2>Recommendation</h2>{_picks(document)}"
        '<div class="grid"><div><h2>Latency vs AUROC</h2><small>the line: best AUROC reachable within each latency'
        "</small><br>"
        + scatter_svg(latency, "ms per image (log scale)", "image AUROC (exported model)", front=True)
        + "</div><div><h2>Size vs AUROC</h2><small>artifact folder size</small><br>"
        + scatter_svg(size, "artifact size, MB (log scale)", "image AUROC")
        + f"</div></div><h2>Cases</h2>{_table(records, COMPACT)}"
        + f"<details><summary>all {len(COLUMNS)} columns</summary>{_table(records, COLUMNS[1:])}</details>"
        + _streams(records)
        + "<div class='grid'><div><h2>Peak RSS per case</h2>"
        + bars_svg(rss, "MB")
        + "</div><div><h2>Latency per call</h2>"
        + boxes_svg(boxes)
        + f"</div></div><h2>Environment</h2>{_environment(document)}</body></html>\n"
    )
