"""Study (#20): what INT8 exports lose per development set, with the search fp32 and with its cross term in INT8.

For each fitted run (e.g. a study's `cases/patchcore-default/*/run`) it exports fp32 ONNX as the reference, then
INT8 for each target three ways: `--int8-scope backbone`, the default `all` (backbone and the search's cross term,
models/patchcore/lifted.py) and `search` (the search alone, fp32 backbone). Each artifact scores the set's whole
test split through the runtime; the table gives image AUROC / pixel AUROC / AUPRO@0.3 (where the set has masks)
per set and the mean over the sets. An export its parity check refuses is reported with the reason. Results go to
OUT/int8_exports.json as they come, and a rerun with the same OUT skips the cells it already has.

    python benchmarks/studies/int8_exports.py STUDY/cases/patchcore-default/*/run --targets onnx,openvino --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

VARIANTS = {
    "fp32": ("fp32", "all"),
    "int8 backbone": ("int8", "backbone"),
    "int8 backbone+search": ("int8", "all"),
    "int8 search": ("int8", "search"),
}


def _cells(targets: list[str]) -> list[tuple[str, str]]:
    return [("onnx", "fp32")] + [(target, variant) for target in targets for variant in list(VARIANTS)[1:]]


def _score(run: Path, target: str, variant: str, folder: Path, threads: int) -> dict:
    from edgeiad_runtime import Detector
    from edgeiad_runtime.manifest import preprocessing_of

    from edgeiad.engine import compute_metrics, score_with
    from edgeiad.errors import ArtifactError
    from edgeiad.export import export_run
    from edgeiad.runs import load_model, run_dataset

    precision, scope = VARIANTS[variant]
    record, _model = load_model(run)
    dataset = run_dataset(record)
    started = time.perf_counter()
    try:
        artifact = export_run(run, target, precision, out=folder, force=True, int8_scope=scope)
    except ArtifactError as exc:
        return {"refused": str(exc)}
    exported = time.perf_counter() - started
    manifest = json.loads((artifact / "manifest.json").read_text())
    with Detector.load(artifact, threads=threads) as detector:
        scored = score_with(detector.infer, dataset.test, preprocessing_of(detector.manifest),
                            with_masks=dataset.has_masks)  # fmt: skip
    metrics = compute_metrics(scored)
    keep = ("image_auroc", "pixel_auroc", "aupro")
    return {
        **{key: metrics.get(key) for key in keep},
        "export_seconds": round(exported, 1),
        "int8": (manifest["export"].get("openvino") or {}).get("int8") or manifest["export"].get("int8"),
    }


def _cell(result: dict | None) -> str:
    if result is None:
        return "–"
    if "refused" in result:
        return "refused"
    values = [result[key] for key in ("image_auroc", "pixel_auroc", "aupro") if result.get(key) is not None]
    return " / ".join(f"{value:.4f}" for value in values)


def _table(results: dict, runs: list[str], cells: list[tuple[str, str]]) -> str:
    header = ["set", *[f"{target} {variant}" for target, variant in cells]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        row = results.get(run, {})
        lines.append("| " + " | ".join([row.get("set", run), *[_cell(row.get(f"{t} {v}")) for t, v in cells]]) + " |")
    means = []
    for target, variant in cells:
        found = [results.get(run, {}).get(f"{target} {variant}") or {} for run in runs]
        images = [cell["image_auroc"] for cell in found if cell.get("image_auroc") is not None]
        means.append(f"{sum(images) / len(images):.4f}" if len(images) == len(runs) else "–")
    lines.append("| **mean image AUROC** | " + " | ".join(means) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--targets", default="onnx,openvino")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    cells = _cells(targets)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "int8_exports.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    keys = [str(run) for run in args.runs]
    for run in args.runs:
        from edgeiad.runs import read_json

        row = results.setdefault(str(run), {"set": read_json(run / "config.json")["data"]["name"]})
        for target, variant in cells:
            name = f"{target} {variant}"
            if name in row:
                continue
            folder = args.out / "artifacts" / f"{row['set']}-{target}-{variant.replace(' ', '-').replace('+', '-')}"
            started = time.perf_counter()
            row[name] = _score(run, target, variant, folder, args.threads)
            print(f"{row['set']:12s} {name:28s} {_cell(row[name])}  ({time.perf_counter() - started:.0f} s)",
                  flush=True)  # fmt: skip
            scratch = path.with_name(path.name + ".tmp")
            scratch.write_text(json.dumps(results, indent=1))
            os.replace(scratch, path)
    print(_table(results, keys, cells))


if __name__ == "__main__":
    main()
