"""`edgeiad threshold`: the seed-000 threshold study on a run, or (re)calibrating an exported artifact."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from . import app, examples

# Spelled out, not imported: edgeiad.metrics loads scipy, too slow for `--help` (a test keeps these in sync).
_METHODS = "iou, f1, youden, fpr, good-only"
_IMAGE_METHODS = "f1, youden, fpr, good-only"

console = Console()


@app.command(
    epilog=examples(
        "edgeiad threshold runs/padim-bsdata --method all",
        "edgeiad threshold artifacts/padim              # refit on the exported model's own outputs",
        "edgeiad threshold artifacts/padim --set 42.0   # raw image threshold by hand",
    )
)
def threshold(
    target: Path = typer.Argument(..., help="run folder (edgeiad train) or artifact folder (edgeiad export)"),
    method: str = typer.Option(None, "--method", help=f"all (default) or one of {_METHODS} for both levels"),
    image_method: str = typer.Option(None, "--image-method", help=f"{_IMAGE_METHODS} (default f1)"),
    pixel_method: str = typer.Option(None, "--pixel-method", help=f"{_METHODS} (default iou)"),
    val_anomalous: int = typer.Option(5, "--val-anomalous", help="anomalous validation images per defect type"),
    target_fpr: float = typer.Option(0.01, "--target-fpr", help="fpr method: largest false-positive rate on good"),
    sigmas: float = typer.Option(3.0, "--sigmas", help="good-only: mean + SIGMAS x std of good scores"),
    categories: Path = typer.Option(None, "--categories", help="CSV path,category,background (default DATA/...)"),
    normalization: str = typer.Option("minmax_threshold", "--normalization", help="minmax_threshold | minmax | none"),
    data: str = typer.Option(None, "--data", help="dataset to calibrate on (default: the run's own)"),
    set_image: float = typer.Option(None, "--set", help="artifact only: set the raw image threshold by hand"),
    set_pixel: float = typer.Option(None, "--set-pixel", help="artifact only: set the raw pixel threshold by hand"),
    device: str = typer.Option("cpu", help="cpu or cuda (runs only)"),
    json_out: bool = typer.Option(False, "--json", help="print the chosen thresholds and the ablation as JSON"),
) -> None:
    """Fit image and pixel thresholds on a validation split with five estimators and report the ablation."""
    from ..calibration import is_artifact, set_artifact_thresholds, threshold_artifact, threshold_run
    from ..errors import ConfigError

    artifact = is_artifact(target)
    signed = artifact and _is_signed(target)
    if set_image is not None or set_pixel is not None:
        if not artifact:
            raise ConfigError(f"--set needs an artifact folder (with manifest.json); {target} is not one")
        chosen = set_artifact_thresholds(target, set_image, set_pixel)
        if json_out:
            print(json.dumps({"artifact": str(target), "thresholds": chosen}, indent=2))
            return
        console.print(f"{target}/manifest.json: image threshold {chosen['image']}, pixel threshold {chosen['pixel']}")
        _signature_note(target, signed)
        return
    options = _options(method, image_method, pixel_method, val_anomalous, target_fpr, sigmas, normalization)
    options["categories"] = categories
    if artifact:
        result = threshold_artifact(target, options, data=data)
    else:
        result = threshold_run(target, options, data=data, device=device)
    if json_out:
        print(json.dumps(result, indent=2, default=str))
    else:
        _print(result, target, artifact)
    _signature_note(target, signed)


def _is_signed(artifact: Path) -> bool:
    from edgeiad_runtime.manifest import load_manifest

    return bool((load_manifest(artifact, verify=False).get("integrity") or {}).get("signature"))


def _signature_note(artifact: Path, signed: bool) -> None:
    if signed:  # a signature over the old thresholds cannot vouch for the new ones
        console.print(f"note: the old signature was removed; re-sign with `edgeiad sign {artifact} --key KEY`")


def _options(method, image_method, pixel_method, val_anomalous, target_fpr, sigmas, normalization) -> dict:
    from ..metrics.thresholds import DEFAULT_IMAGE_METHOD, DEFAULT_PIXEL_METHOD, IMAGE_METHODS, check_method

    if method not in (None, "all"):
        check_method(method, "pixel")
        image_method = image_method or (method if method in IMAGE_METHODS else None)
        pixel_method = pixel_method or method
    return {
        "val_anomalous": val_anomalous,
        "image_method": image_method or DEFAULT_IMAGE_METHOD,
        "pixel_method": pixel_method or DEFAULT_PIXEL_METHOD,
        "target_fpr": target_fpr,
        "sigmas": sigmas,
        "normalization": normalization,
    }


def _print(result: dict, target: Path, artifact: bool) -> None:
    from ..thresholding import IMAGE_COLUMNS, PIXEL_COLUMNS, ablation_rows, split_line

    console.print(split_line(result), markup=False, highlight=False)
    for note in result["notes"]:
        console.print(f"note: {note}", markup=False, highlight=False)
    for level, columns in (("image", IMAGE_COLUMNS), ("pixel", PIXEL_COLUMNS)):
        if not result["ablation"][level]:
            continue
        table = Table(title=f"{level} thresholds")
        for column in ("method", "stage", *columns):
            table.add_column(column)
        for row in ablation_rows(result, level):
            table.add_row(*row)
        console.print(table)
    where = f"{target}/manifest.json" if artifact else f"{target}/thresholds.json (+ thresholds.md, thresholds.html)"
    console.print(f"written: {where}", markup=False, highlight=False)
