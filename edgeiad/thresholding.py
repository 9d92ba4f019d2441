"""Seed 000's two-stage evaluation: fit thresholds on a small validation split, judge them on the rest.

`study` takes scored test images (scores, and maps + masks when the data has masks), splits off a validation
set (`val_anomalous` anomalous images per defect type plus as many good ones), fits every estimator on it and
reports threshold-free metrics next to threshold-dependent (inference) metrics on the remaining images,
overall and per defect category. The chosen image/pixel thresholds and the score normalisation are what runs
store and artifacts carry.

Threshold-free pixel metrics are computed at each ground truth's own size (maps upsampled, as MVTec AD does).
Pixel thresholds and the pixel inference metrics are fitted on model-size maps against masks downsized to
them: candidate thresholds and per-image counts stay small however large the images are.
"""

from __future__ import annotations

import csv
import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError
from .metrics.inference import connected_regions, image_inference_metrics, pixel_inference_metrics
from .metrics.thresholds import (
    DEFAULT_IMAGE_METHOD,
    DEFAULT_PIXEL_METHOD,
    IMAGE_METHODS,
    METHODS,
    check_method,
    image_threshold,
    pixel_threshold,
)

DEFAULT_VAL_ANOMALOUS = 5
GOOD_ONLY_HOLDOUT = 10
CATEGORIES = ("structural", "surface", "contamination", "combined")
NORMALIZATIONS = ("minmax_threshold", "minmax", "none")


def split_validation(labels: Sequence[int], defect_types: Sequence[str], per_type: int, seed: int = 0):
    """(validation, rest) index lists: `per_type` anomalous images per defect type plus as many good ones.

    A defect type never gives more than half its images, so every type stays represented in the rest.
    With no anomalous images to take, up to GOOD_ONLY_HOLDOUT good ones are held out for good-only thresholds.
    """
    if per_type < 0:
        raise ConfigError(f"--val-anomalous {per_type} is invalid: use 0 (no split) or a positive count")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    chosen: list[int] = []
    for defect in sorted({d for d, label in zip(defect_types, labels) if label != 0}):
        members = [i for i, (d, label) in enumerate(zip(defect_types, labels)) if label != 0 and d == defect]
        take = min(per_type, len(members) // 2)
        chosen += rng.choice(members, size=take, replace=False).tolist() if take else []
    good = np.flatnonzero(labels == 0)
    # Without anomalous images the good-only estimator still needs held-out good ones: training images
    # score too low (a memory bank contains their own patches).
    n_good = min(len(chosen) or GOOD_ONLY_HOLDOUT, good.size // 2)
    chosen += rng.choice(good, size=n_good, replace=False).tolist() if n_good else []
    validation = sorted(chosen)
    taken = set(validation)
    return validation, [i for i in range(labels.size) if i not in taken]


def load_categories(path: Path | None, paths: Sequence[str], root: str | None) -> dict[int, dict]:
    """Index -> {category, background} from a categories.csv (columns path, category, background).

    Without `path`, ROOT/categories.csv is used when it exists; paths in it are relative to ROOT.
    """
    if path is None and root is not None and (Path(root) / "categories.csv").is_file():
        path = Path(root) / "categories.csv"
    if path is None:
        return {}
    if not Path(path).is_file():
        raise DataError(f"categories file not found: {path} (columns: path, category, background)")
    keys = {_path_key(p, root): i for i, p in enumerate(paths)}
    found: dict[int, dict] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"path", "category"} <= set(reader.fieldnames):
            raise DataError(f"{path} needs a header with columns path,category[,background]")
        for line, row in enumerate(reader, start=2):
            category = (row.get("category") or "").strip().lower()
            if category not in CATEGORIES:
                raise DataError(f"{path} line {line}: category {category!r} is not one of {', '.join(CATEGORIES)}")
            background = (row.get("background") or "").strip().lower() or None
            if background not in (None, "yes", "no"):
                raise DataError(f"{path} line {line}: background {background!r} must be yes or no")
            index = keys.get(_path_key(row["path"].strip(), root))
            if index is not None:
                found[index] = {"category": category, "background": background}
    return found


def _path_key(path: str, root: str | None) -> str:
    if path.startswith("elpv:") or root is None:
        return path
    candidate = Path(path)
    return str((candidate if candidate.is_absolute() else Path(root) / candidate).resolve())


def derived_category(mask: np.ndarray | None) -> str:
    """Seed 000's one automatic label: 'combined' when the ground truth has more than one region."""
    if mask is None:
        return "unlabelled"
    return "combined" if connected_regions(mask)[1] > 1 else "single-region"


def study(
    scored,
    paths: Sequence[str],
    val_anomalous: int = DEFAULT_VAL_ANOMALOUS,
    image_method: str = DEFAULT_IMAGE_METHOD,
    pixel_method: str = DEFAULT_PIXEL_METHOD,
    target_fpr: float = 0.01,
    sigmas: float = 3.0,
    categories: dict[int, dict] | None = None,
    train_scores: np.ndarray | None = None,
    normalization: str = "minmax_threshold",
    seed: int = 0,
) -> dict:
    """Fit all estimators on a validation split of `scored` and evaluate them on the rest (see module doc)."""
    check_method(image_method, "image")
    check_method(pixel_method, "pixel")
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"--normalization {normalization!r} is invalid: use one of {', '.join(NORMALIZATIONS)}")
    labels = np.asarray(scored.labels)
    val, rest = split_validation(labels, scored.defect_types, val_anomalous, seed)
    has_pixels = bool(scored.maps)
    notes: list[str] = []
    val_labels = labels[val]
    image_methods = IMAGE_METHODS if val_labels.any() else ("good-only",)
    pixel_methods = METHODS if has_pixels and val_labels.any() else ("good-only",)
    if not val_labels.any():
        notes.append("no anomalous validation images: thresholds come from good images only (good-only)")
        image_method = pixel_method = "good-only"
    val_scores = scored.scores[val]
    if not val:
        if train_scores is None:
            raise DataError("no test images and no training scores: nothing to fit a threshold on")
        notes.append("no validation images: good-only thresholds from the training images' own scores (in-sample)")
        val_scores, val_labels = np.asarray(train_scores), np.zeros(len(train_scores), dtype=int)
    groups = _groups(scored, rest, categories or {})
    ablation: dict = {"image": {}, "pixel": {}}
    for method in image_methods:
        value = image_threshold(method, val_labels, val_scores, target_fpr, sigmas)
        ablation["image"][method] = _image_entry(value, scored, val, rest, groups)
    if has_pixels:
        val_maps, val_masks = [scored.maps[i] for i in val], [scored.masks[i] for i in val]
        for method in pixel_methods:
            if not val_maps:
                break
            value = pixel_threshold(method, val_maps, val_masks, target_fpr, sigmas)
            ablation["pixel"][method] = _pixel_entry(value, scored, val, rest, groups)
    image = {"value": ablation["image"][image_method]["threshold"], "method": image_method}
    if ablation["pixel"]:
        pixel = {"value": ablation["pixel"][pixel_method]["threshold"], "method": pixel_method}
    else:
        pixel = {"value": image["value"], "method": "image (no pixel masks)"}
    return {
        "image": image,
        "pixel": pixel,
        "normalization": _normalization(normalization, val_scores, scored, val, image["value"], pixel["value"]),
        "split": _split_record(labels, val, rest, val_anomalous, seed, paths),
        "options": {"target_fpr": target_fpr, "good_only_sigmas": sigmas},
        "threshold_free": _threshold_free(scored, rest),
        "ablation": ablation,
        "notes": notes,
    }


def study_dataset(scored, dataset, options: dict, train_scores=None, seed: int = 0) -> dict:
    """`study` on a dataset's scored test images, reading its categories.csv (explicit or at the root)."""
    paths = [sample.path for sample in dataset.test]
    options = {**options, "categories": load_categories(options.get("categories"), paths, dataset.root)}
    return study(scored, paths, train_scores=train_scores, seed=seed, **options)


def _groups(scored, rest: list[int], categories: dict[int, dict]) -> dict[str, dict[str, list[int]]]:
    """Per breakdown (category, defect_type, background): value -> (good rest indices, its anomalous ones)."""
    good = [i for i in rest if scored.labels[i] == 0]
    breakdown: dict[str, dict[str, list[int]]] = {"category": {}, "defect_type": {}}
    for i in rest:
        if scored.labels[i] == 0:
            continue
        mask = scored.masks[i] if scored.masks else None
        info = categories.get(i, {})
        keys = {"category": info.get("category") or derived_category(mask), "defect_type": scored.defect_types[i]}
        if info.get("background"):
            keys["background"] = info["background"]
        for kind, value in keys.items():
            breakdown.setdefault(kind, {}).setdefault(value, []).append(i)
    return {kind: {k: (good, members) for k, members in sorted(values.items())} for kind, values in breakdown.items()}


def _image_entry(value: float, scored, val, rest, groups) -> dict:
    def metrics(indices):
        return image_inference_metrics(scored.labels[indices], scored.scores[indices], value)

    # Image metrics per group: the group's anomalous images against every good one (precision needs negatives).
    return {
        "threshold": value,
        "validation": metrics(val) if val else None,
        "test": metrics(rest),
        "per_group": {kind: {k: metrics(g + m) for k, (g, m) in values.items()} for kind, values in groups.items()},
    }


def _pixel_entry(value: float, scored, val, rest, groups) -> dict:
    def metrics(indices):
        return pixel_inference_metrics([scored.maps[i] for i in indices], [scored.masks[i] for i in indices], value)

    # Segmentation per group: the group's defective images only, so good images cannot dilute its IoU.
    return {
        "threshold": value,
        "validation": metrics(val),
        "test": metrics(rest),
        "per_group": {kind: {k: metrics(m) for k, (_, m) in values.items()} for kind, values in groups.items()},
    }


def _threshold_free(scored, rest: list[int]) -> dict:
    from .engine import pixel_metrics_of
    from .metrics import image_metrics

    labels = scored.labels[rest]
    if len(set(labels.tolist())) < 2:
        return {}
    found = image_metrics(labels, scored.scores[rest], [scored.defect_types[i] for i in rest])
    if scored.maps:
        found.update(pixel_metrics_of(scored, rest))
    return found


def _normalization(method: str, val_scores, scored, val, image_value: float, pixel_value: float) -> dict:
    """Range for the runtime's score/map normalisation, from validation data, always holding the threshold."""
    if method == "none":
        return {"method": "none", "image_min": None, "image_max": None, "pixel_min": None, "pixel_max": None}
    maps = [scored.maps[i] for i in val] if scored.maps else []
    pixel_low = min([float(m.min()) for m in maps] + [pixel_value])
    pixel_high = max([float(m.max()) for m in maps] + [pixel_value])
    return {
        "method": method,
        "image_min": float(min(np.min(val_scores), image_value)),
        "image_max": float(max(np.max(val_scores), image_value)),
        "pixel_min": pixel_low if maps else float(min(np.min(val_scores), pixel_value)),
        "pixel_max": pixel_high if maps else float(max(np.max(val_scores), pixel_value)),
    }


def _split_record(labels, val, rest, per_type, seed, paths) -> dict:
    return {
        "val_anomalous_per_type": per_type,
        "seed": seed,
        "validation": {"good": int(np.sum(labels[val] == 0)), "anomalous": int(np.sum(labels[val] != 0))},
        "test": {"good": int(np.sum(labels[rest] == 0)), "anomalous": int(np.sum(labels[rest] != 0))},
        "validation_paths": [paths[i] for i in val],
    }


IMAGE_COLUMNS = ("threshold", "precision", "recall", "f1", "accuracy", "fpr")
PIXEL_COLUMNS = (
    "threshold", "iou", "mean_iou", "defect_mean_iou", "dice", "precision", "recall", "region_recall",
    "good_images_flagged",
)  # fmt: skip
GROUP_COLUMNS = {"image": ("recall", "precision", "f1"), "pixel": ("defect_mean_iou", "dice", "region_recall")}


def _cell(value) -> str:
    return "–" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))


def ablation_rows(result: dict, level: str) -> list[list[str]]:
    """Rows (method, stage, metrics...) of the ablation table for 'image' or 'pixel'."""
    columns = IMAGE_COLUMNS if level == "image" else PIXEL_COLUMNS
    rows = []
    for method, entry in result["ablation"][level].items():
        chosen = " (chosen)" if result[level]["method"] == method else ""
        for stage in ("validation", "test"):
            metrics = entry[stage] or {}
            values = [entry["threshold"] if c == "threshold" else metrics.get(c) for c in columns]
            rows.append([method + chosen, stage, *map(_cell, values)])
    return rows


def group_rows(result: dict, level: str) -> list[list[str]]:
    """Rows (breakdown, group, method, F1 or IoU...) of the per-category table on the test images."""
    key = GROUP_COLUMNS[level]
    rows = []
    for method, entry in result["ablation"][level].items():
        for kind, groups in entry["per_group"].items():
            for group, metrics in groups.items():
                rows.append([kind, group, method, *(_cell(metrics.get(k)) for k in key)])
    return rows


FREE_KEYS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro", "pixel_eval")


def report_tables(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table: threshold-free metrics, then per level ablation and groups."""
    tables = []
    free = result["threshold_free"]
    if free:
        keys = [k for k in FREE_KEYS if k in free]
        tables.append(
            ("Threshold-free (validation-stage) metrics on the test images", keys, [[_cell(free[k]) for k in keys]])
        )
    for level in ("image", "pixel"):
        if not result["ablation"][level]:
            continue
        columns = IMAGE_COLUMNS if level == "image" else PIXEL_COLUMNS
        tables.append((f"{level} thresholds", ["method", "stage", *columns], ablation_rows(result, level)))
        key = GROUP_COLUMNS[level]
        header = ["breakdown", "group", "method", *key]
        tables.append((f"{level} metrics per group on the test images", header, group_rows(result, level)))
    return tables


def markdown_report(result: dict, title: str) -> str:
    """The ablation as markdown: threshold-free metrics, then methods × inference metrics per level."""
    lines = [f"# Thresholds: {title}", "", split_line(result)]
    lines += [f"- note: {note}" for note in result["notes"]]
    for name, header, rows in report_tables(result):
        lines += ["", f"## {name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def split_line(result: dict) -> str:
    """One sentence: the validation/test split and the chosen thresholds."""
    split = result["split"]
    val, test = split["validation"], split["test"]
    return (
        f"Validation: {val['anomalous']} anomalous + {val['good']} good images "
        f"({split['val_anomalous_per_type']} per defect type, seed {split['seed']}); "
        f"test: {test['anomalous']} anomalous + {test['good']} good. Chosen: image {result['image']['method']} "
        f"= {result['image']['value']:.6g}, pixel {result['pixel']['method']} = {result['pixel']['value']:.6g}."
    )


_STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #999;padding:3px 8px;text-align:right}"
)


def html_report(result: dict, title: str) -> str:
    """The same tables as one self-contained HTML page (no scripts, no external files)."""
    parts = [f"<h1>Thresholds: {html.escape(title)}</h1>", f"<p>{html.escape(split_line(result))}</p>"]
    parts += [f"<p>note: {html.escape(note)}</p>" for note in result["notes"]]
    for name, header, rows in report_tables(result):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        parts.append(f"<h2>{html.escape(name)}</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    head = f"<meta charset=utf-8><title>{html.escape(title)}</title><style>{_STYLE}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(parts)}</body></html>\n"


def write_reports(folder: Path, result: dict, title: str) -> None:
    """thresholds.md and thresholds.html next to thresholds.json."""
    (Path(folder) / "thresholds.md").write_text(markdown_report(result, title))
    (Path(folder) / "thresholds.html").write_text(html_report(result, title))
