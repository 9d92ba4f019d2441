"""Tables of a settings study (few-shot, noisy): mean ± std over seeds of the mean over datasets, per dataset,
the cost of each model, and for the noisy setting the gain of each noise-robust option over its plain model."""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
from edgeiad_runtime.files import atomic_write

from .report import STYLE, _html_table, _md_table

METRICS = (("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"), ("AUPRO@0.3", "aupro"))
COSTS = (
    ("fit s", "fit_s", 1),
    ("ms/img", "latency_ms", 1),
    ("fit peak +MB", "fit_peak_mb", 0),
    ("infer peak MB", "infer_peak_mb", 0),
    ("model MB", "model_mb", 2),
)
LEVEL_TITLE = {"fewshot": "m = {}", "noisy": "noise {:.0%}"}


def _value(case: dict, key: str):
    value = case.get("metrics", {}).get(key) if key in dict(METRICS).values() else case.get(key)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _mean_std(values: list) -> list | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return [float(np.mean(present)), float(np.std(present)), len(present)]


def summarise(document: dict) -> dict:
    """{"labels", "datasets", "levels", "mean": label→level→key→[mean, std, n], "per_dataset": dataset→label→
    level→key→[mean, std, n], "refused": label→level→text, "gain": model→level→key→[mean, std, n]}."""
    cases = document["cases"]
    labels = list(dict.fromkeys(c["label"] for c in cases))
    datasets = list(dict.fromkeys(c["dataset"] for c in cases))
    levels, seeds = document["levels"], document["seeds"]
    keys = [key for _, key in METRICS] + [key for _, key, _ in COSTS]
    index = {(c["label"], c["level"], c["seed"], c["dataset"]): c for c in cases}
    mean: dict = {}
    per_dataset: dict = {name: {} for name in datasets}
    refused: dict = {}
    for label in labels:
        for level in levels:
            for dataset in datasets:
                found = [index.get((label, level, seed, dataset)) for seed in seeds]
                found = [c for c in found if c is not None]
                if found and all("refused" in c for c in found):
                    refused.setdefault(label, {})[_key(level)] = found[0]["refused"]
                cell = {key: _mean_std([_value(c, key) for c in found if "refused" not in c]) for key in keys}
                per_dataset[dataset].setdefault(label, {})[_key(level)] = cell
            # Per seed: the mean over the datasets that have the metric; then mean ± std over seeds.
            cell = {}
            for key in keys:
                per_seed = []
                for seed in seeds:
                    values = [_value(index[(label, level, seed, d)], key) for d in datasets if (label, level, seed, d)
                              in index and "refused" not in index[(label, level, seed, d)]]  # fmt: skip
                    values = [v for v in values if v is not None]
                    per_seed.append(float(np.mean(values)) if values else None)
                cell[key] = _mean_std(per_seed)
            mean.setdefault(label, {})[_key(level)] = cell
    return {
        "labels": labels,
        "datasets": datasets,
        "levels": [_key(level) for level in levels],
        "mean": mean,
        "per_dataset": per_dataset,
        "refused": refused,
        "gain": _gains(index, labels, levels, seeds, datasets),
    }


def _gains(index, labels, levels, seeds, datasets) -> dict:
    """Robust minus plain, per seed (mean over datasets), for each model with a "+robust" row; `index` maps
    (label, level, seed, dataset) to its case."""
    gains: dict = {}
    for label in labels:
        if not label.endswith(" +robust"):
            continue
        plain = label.removesuffix(" +robust")
        for level in levels:
            cell = {}
            for _, key in METRICS:
                per_seed = []
                for seed in seeds:
                    diffs = []
                    for dataset in datasets:
                        a, b = index.get((label, level, seed, dataset)), index.get((plain, level, seed, dataset))
                        if a and b and "refused" not in a and "refused" not in b:
                            va, vb = _value(a, key), _value(b, key)
                            if va is not None and vb is not None:
                                diffs.append(va - vb)
                    per_seed.append(float(np.mean(diffs)) if diffs else None)
                cell[key] = _mean_std(per_seed)
            gains.setdefault(plain, {})[_key(level)] = cell
    return gains


def _key(level) -> str:
    return str(level)


def _cell(value: list | None, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "–"
    sign = "+" if signed else ""
    if value[2] < 2:
        return f"{value[0]:{sign}.{digits}f}"
    return f"{value[0]:{sign}.{digits}f} ± {value[1]:.{digits}f}"


def _title(setting: str, level: str) -> str:
    return LEVEL_TITLE[setting].format(float(level) if setting == "noisy" else int(float(level)))


def tables(setting: str, summary: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, in report order."""
    levels = summary["levels"]
    heads = [_title(setting, level) for level in levels]
    found = []
    for title, key in METRICS:
        rows = []
        for label in summary["labels"]:
            refused = summary["refused"].get(label, {})
            cells = [refused.get(lv) if lv in refused and not summary["mean"][label][lv][key] else
                     _cell(summary["mean"][label][lv][key]) for lv in levels]  # fmt: skip
            rows.append([label, *cells])
        found.append((f"{title}, mean over datasets (± std over seeds)", ["model", *heads], rows))
    if summary["gain"]:
        for title, key in METRICS[:2]:
            rows = [[f"{model} +robust − {model}", *[_cell(cells[lv][key], signed=True) for lv in levels]]
                    for model, cells in summary["gain"].items()]  # fmt: skip
            found.append((f"noise-robust option: gain in {title} (mean over datasets, ± std over seeds)",
                          ["model", *heads], rows))  # fmt: skip
    cost_rows = []
    for label in summary["labels"]:
        for lv in levels:
            cell = summary["mean"][label][lv]
            if all(cell[key] is None for _, key, _ in COSTS):
                continue
            cost_rows.append([label, _title(setting, lv)] + [_cell(cell[key], digits) for _, key, digits in COSTS])
    found.append(("cost, mean over datasets (± std over seeds)", ["model", "level", *[t for t, _, _ in COSTS]],
                  cost_rows))  # fmt: skip
    for title, key in METRICS[:2]:
        rows = []
        for dataset, per_label in summary["per_dataset"].items():
            for label, cells in per_label.items():
                rows.append([dataset, label, *[_cell(cells[lv][key]) for lv in levels]])
        found.append((f"{title} per dataset (± std over seeds)", ["dataset", "model", *heads], rows))
    return found


def markdown(setting: str, document: dict, summary: dict) -> str:
    lines = [f"# edgeiad study: {setting} setting (seed 004)", ""]
    if document.get("command"):
        lines += [f"`{document['command']}`", ""]
    lines += [_protocol(setting, document), ""]
    for title, header, rows in tables(setting, summary):
        lines += [f"## {title}", "", *_md_table(header, rows), ""]
    return "\n".join(lines)


def _protocol(setting: str, document: dict) -> str:
    seeds = ", ".join(str(s) for s in document["seeds"])
    test = f"a stratified subsample of {document['max_test']}" if document["max_test"] else "all"
    text = (
        f"Seeds {seeds}; every case is scored on {test} images per dataset (eager PyTorch, "
        f"{document['threads']} thread(s)); ms/img is the median batch-1 inference with preprocessing; peak memory "
        "is the process's resident high-water mark (fit: increase over the start; inference: absolute)."
    )
    if setting == "noisy":
        cap = f"{document['max_train']} good images drawn per seed" if document["max_train"] else "all good images"
        text += (
            f" Training: {cap}, plus defective test images (removed from the test set) making up the noise share. "
            "+robust rows switch the model's noise-robust option on at the noise level."
        )
    else:
        text += " Training: m good images drawn per seed; a refusal names the model's minimum."
    return text


def html_report(setting: str, document: dict, summary: dict) -> str:
    parts = [
        f"<!doctype html><html><head><meta charset=utf-8><title>edgeiad {setting} study</title><style>{STYLE}"
        f"</style></head><body><h1>edgeiad study: {setting} setting</h1>",
        f"<p><code>{html.escape(document.get('command', ''))}</code></p><p>{html.escape(_protocol(setting, document))}",
    ]
    for title, header, rows in tables(setting, summary):
        parts.append(f"<h2>{html.escape(title)}</h2>{_html_table(header, rows)}")
    versions = ", ".join(f"{k} {v}" for k, v in document.get("versions", {}).items())
    parts.append(f"<p>{html.escape(versions)}</p></body></html>\n")
    return "".join(parts)


def write_setting_reports(out: Path, setting: str, document: dict) -> dict:
    """<setting>.md and <setting>.html (atomic); returns the summary for the JSON."""
    summary = summarise(document)
    for suffix, text in (
        ("md", markdown(setting, document, summary)),
        ("html", html_report(setting, document, summary)),
    ):
        atomic_write(Path(out) / f"{setting}.{suffix}", [text.encode("utf-8")])
    return summary
