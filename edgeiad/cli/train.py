"""`edgeiad train`, `evaluate`, `predict`, `models`, `demo`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..runs import read_json
from . import app, examples

console = Console()
err_console = Console(stderr=True)  # notes go to stderr so --json output stays machine-readable


@app.command(epilog=examples("edgeiad models", "edgeiad models --json", "edgeiad models --markdown"))
def models(
    markdown: bool = typer.Option(False, "--markdown", help="print the README's markdown table"),
    json_out: bool = typer.Option(False, "--json", help="print the registry as JSON"),
) -> None:
    """List the registered models and backbones."""
    from ..models import MODELS, markdown_table
    from ..models.backbones import BACKBONES

    if markdown:
        print(markdown_table())
        return
    if json_out:
        fields = ("name", "summary", "paper", "min_train_images", "stats_modes")
        entries = [{field: getattr(spec, field) for field in fields} for spec in MODELS.values()]
        print(json.dumps({"models": entries, "backbones": list(BACKBONES)}, indent=2))
        return
    table = Table(title="models")
    for column in ("name", "what it does", "paper", "min. train images"):
        table.add_column(column)
    for spec in MODELS.values():
        table.add_row(spec.name, spec.summary, spec.paper, str(spec.min_train_images))
    console.print(table)
    console.print(f"backbones: {', '.join(BACKBONES)}")


@app.command(
    epilog=examples(
        "edgeiad train patchcore --data elpv-mono",
        "edgeiad train padim --data path/to/mvtec_folder --out runs/padim-parts",
        "edgeiad train fastflow --data path/to/good_images --epochs 20 --max-minutes 5",
        "edgeiad train segad --data path/to/mvtec_folder --labelled-defects 10 --bases patchcore,padim",
    )
)
def train(
    model: str = typer.Argument(..., help="model name (see `edgeiad models`)"),
    data: str = typer.Option(..., "--data", help="elpv-mono | elpv-poly | MVTec-layout folder | folder of good images"),
    backbone: str = typer.Option(
        None, help="backbone (default efficientnet_lite1 for patchcore, else efficientnet_lite0)"
    ),
    image_size: int = typer.Option(
        None, "--image-size", help="input size, multiple of 16 (default 384 for feature-bank models, else 256)"
    ),
    coreset_ratio: float = typer.Option(None, "--coreset-ratio", help="PatchCore memory-bank share (default 0.01)"),
    seed: int = typer.Option(None, help="random seed (default 0)"),
    epochs: int = typer.Option(None, "--epochs", help="learned models: most epochs (default 40, early stop on)"),
    max_minutes: float = typer.Option(None, "--max-minutes", help="learned models: training time limit (default 10)"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    out: Path = typer.Option(None, help="run folder (default runs/<model>/<data>/<timestamp>)"),
    val_anomalous: int = typer.Option(
        5, "--val-anomalous", help="anomalous test images per defect type to fit thresholds on"
    ),
    categories: Path = typer.Option(
        None, "--categories", help="categories.csv for per-category metrics (default DATA/...)"
    ),
    labelled_defects: int = typer.Option(
        0,
        "--labelled-defects",
        help="supervised models (segad): move N anomalous test images per defect type into training (seeded, "
        "never scored); train/<defect>/ folders are used as well",
    ),
    bases: str = typer.Option(None, "--bases", help="segad: comma list of base detectors (default patchcore,padim)"),
    segmentation: str = typer.Option(
        None, "--segmentation", help="segad: grid (2x2, default), kmeans, single, or labels (with --label-map)"
    ),
    label_map: Path = typer.Option(None, "--label-map", help="segad: PNG whose gray values are the segments"),
    noise_robust: float = typer.Option(
        None,
        "--noise-robust",
        help="the share of training images that may be defective (e.g. 0.1): patchcore drops a quarter of that "
        "share of its training patches, those least like other images at the same place; padim trims as much "
        "from each position's Gaussian",
    ),
    settings: list[str] = typer.Option(
        None,
        "--set",
        help="any config setting of MODEL, key=value, repeatable (e.g. --set neighbourhood=3 --set "
        "layers=[4,10,14]); the fields are in the run's config.json",
    ),
    json_out: bool = typer.Option(False, "--json", help="print the run folder and its metrics as JSON at the end"),
) -> None:
    """Fit MODEL on the good images of --data, fit thresholds on a validation split, evaluate on the rest."""
    from ..engine import train as run_training
    from ..study.plan import model_settings

    chosen = model_settings(model.lower(), settings or [])
    overrides = {"backbone": backbone, "seed": seed}
    if image_size is not None:
        overrides["image_size"] = (image_size, image_size)
    if epochs is not None or max_minutes is not None:
        from dataclasses import fields

        from ..models import get_model

        if "epochs" not in {field.name for field in fields(get_model(model).config_cls())}:
            raise typer.BadParameter(f"--epochs/--max-minutes apply to learned models, not {model}")
        overrides.update(epochs=epochs, max_minutes=max_minutes)
    if coreset_ratio is not None:
        if model.lower() != "patchcore":
            raise typer.BadParameter("--coreset-ratio applies to patchcore only")
        overrides["coreset_ratio"] = coreset_ratio
    if noise_robust is not None:
        from ..models import MODELS, get_model

        knob = get_model(model).noise_robust
        if not knob:
            robust = ", ".join(name for name, spec in MODELS.items() if spec.noise_robust)
            raise typer.BadParameter(f"--noise-robust applies to {robust}, not {model}")
        overrides[knob] = noise_robust
    segad_options = {"bases": bases, "segmentation": segmentation, "label_map": label_map}
    if any(value is not None for value in segad_options.values()):
        if model.lower() != "segad":
            raise typer.BadParameter("--bases, --segmentation and --label-map apply to segad only")
        if bases is not None:
            overrides["bases"] = tuple(name.strip().lower() for name in bases.split(",") if name.strip())
        if label_map is not None:
            overrides["label_map"] = str(label_map)
            overrides["segmentation"] = segmentation or "labels"
        elif segmentation is not None:
            overrides["segmentation"] = segmentation
    clash = sorted(key for key, value in overrides.items() if value is not None and key in chosen)
    if clash:
        raise typer.BadParameter(f"{clash[0]} is given both as --set and as its own option: keep one")
    overrides.update(chosen)  # make_config drops the options left at None
    run = run_training(
        model,
        data,
        out=out,
        device=device,
        overrides=overrides,
        echo=lambda message: (err_console if json_out else console).print(
            message, markup=False, highlight=False, soft_wrap=True
        ),
        threshold_options={"val_anomalous": val_anomalous, "categories": categories},
        labelled_defects=labelled_defects,
    )
    metrics = read_json(run / "metrics.json")
    if json_out:
        print(json.dumps({"run": str(run), "metrics": metrics}, indent=2))
    else:
        print_run_summary(run, metrics)


@app.command(
    epilog=examples(
        "edgeiad update runs/padim/parts/20261201-101500 --data path/to/new_good_images",
        "edgeiad update runs/patchcore/parts/20261201-101500 --data path/to/mvtec_folder --out runs/patchcore-v2",
    )
)
def update(
    run: Path = typer.Argument(..., help="run folder to extend (patchcore, padim or npad); it is left unchanged"),
    data: str = typer.Option(..., "--data", help="new good images: a folder of them, or an MVTec-layout folder"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    out: Path = typer.Option(None, help="new run folder (default runs/<model>/<data>/<timestamp>)"),
    val_anomalous: int = typer.Option(
        5, "--val-anomalous", help="anomalous test images per defect type to fit thresholds on"
    ),
    json_out: bool = typer.Option(False, "--json", help="print the new run folder and its metrics as JSON"),
) -> None:
    """Add new good images to a fitted run without its earlier images, into a new run folder.

    PaDiM and N-pad statistics are updated exactly (running sums kept beside the weights), so the result equals a
    fit on the old and new images together; PatchCore's memory bank is re-selected from its current rows and the
    new patches, sized for all patches seen (capped by max_bank). Thresholds are re-fitted on --data's test set
    when it has one. Export the new run like any other.
    """
    from ..engine import update as run_update

    new_run = run_update(
        run,
        data,
        out=out,
        device=device,
        echo=lambda message: (err_console if json_out else console).print(
            message, markup=False, highlight=False, soft_wrap=True
        ),
        threshold_options={"val_anomalous": val_anomalous},
    )
    metrics = read_json(new_run / "metrics.json")
    if json_out:
        print(json.dumps({"run": str(new_run), "metrics": metrics}, indent=2))
    else:
        print_run_summary(new_run, metrics)


def print_run_summary(run: Path, metrics: dict) -> None:
    table = Table(title=f"run {run}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "image_auroc",
        "image_ap",
        "image_f1_max",
        "image_fpr_at_95tpr",
        "pixel_auroc",
        "pixel_f1_max",
        "aupro",
    ):
        if key in metrics:
            table.add_row(key, f"{metrics[key]:.4f}")
    if "pixel_eval" in metrics:
        table.add_row("pixel metrics computed at", metrics["pixel_eval"])
    inference = metrics.get("inference", {})
    for level, keys in (("image", ("precision", "recall", "f1")), ("pixel", ("mean_iou", "dice"))):
        for key in keys:
            value = inference.get(level, {}).get(key)
            if value is not None:
                table.add_row(f"{level} {key} at threshold", f"{value:.4f}")
    console.print(table)
    if metrics.get("overlays"):
        console.print(f"overlays: {run / 'overlays'}")


def _machine_format(json_out: bool, csv_out: bool) -> str | None:
    if json_out and csv_out:
        raise typer.BadParameter("--json and --csv exclude each other: pick one output format")
    return "json" if json_out else "csv" if csv_out else None


@app.command(epilog=examples("edgeiad evaluate runs/padim-bsdata --json", "edgeiad evaluate RUN --data other_folder"))
def evaluate(
    run: Path = typer.Argument(..., help="run folder written by edgeiad train"),
    data: str = typer.Option(None, "--data", help="dataset to evaluate on (default: the run's own)"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    fast: bool = typer.Option(
        False, "--fast", help="pixel metrics at the model's input size (masks downsized), not the images' own size"
    ),
    json_out: bool = typer.Option(False, "--json", help="one JSON document: metrics plus per-image scores"),
    csv_out: bool = typer.Option(False, "--csv", help="per-image scores as CSV (path,label,defect_type,score)"),
) -> None:
    """Re-score a run's test set (or another dataset) with the threshold-free metrics."""
    from ..engine import SCORE_COLUMNS, evaluate_run, write_csv

    output = _machine_format(json_out, csv_out)
    metrics = evaluate_run(run, data, device, progress=True, pixel_eval="fast" if fast else "original")
    err_console.print(scored_note(run, data), markup=False, highlight=False, soft_wrap=True)
    if output == "json":
        print(json.dumps(metrics, indent=2))
    elif output == "csv":
        write_csv(sys.stdout, metrics["images"], SCORE_COLUMNS)
    else:
        print_run_summary(run, metrics)


def scored_note(run: Path, data: str | None) -> str:
    """Which images evaluate scored, and why its numbers differ from the ones train reported."""
    if data is not None:
        return f"scored every test image of {data}"
    split = read_json(run / "metrics.json").get("split") if (run / "metrics.json").is_file() else None
    if not split:
        return "scored every test image of the run's dataset"
    held, kept = (sum(split[part].values()) for part in ("validation", "test"))
    return (
        f"scored all {held + kept} test images of the run's dataset, including the {held} validation images its "
        f"thresholds were fitted on; `edgeiad train` reported on the other {kept} only"
    )


@app.command(epilog=examples("edgeiad predict runs/padim-bsdata part1.png part2.png --save-maps maps/"))
def predict(
    run: Path = typer.Argument(..., help="run folder written by edgeiad train"),
    images: list[Path] = typer.Argument(..., help="image files and/or folders (recursed) to score"),
    save_maps: Path = typer.Option(None, "--save-maps", help="folder for heat-map overlays (input folders kept)"),
    save_raw: Path = typer.Option(
        None, "--save-raw", help="folder for float32 .npy maps at each image's own size (input folders kept)"
    ),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    json_out: bool = typer.Option(False, "--json", help="JSON lines, one object per image (the default)"),
    csv_out: bool = typer.Option(False, "--csv", help="CSV, one row per image; is_anomalous as 1/0"),
) -> None:
    """Score images with a run's eager PyTorch model, in batches; one JSON line (or CSV row) per image."""
    from ..engine import write_csv
    from ..predict import PREDICT_COLUMNS, predict_images

    output = _machine_format(json_out, csv_out) or "json"
    lines = predict_images(run, images, save_maps, device, save_raw=save_raw)
    if output == "csv":
        write_csv(sys.stdout, lines, PREDICT_COLUMNS)
        return
    for line in lines:
        print(json.dumps(line))


@app.command(epilog=examples("edgeiad demo", "edgeiad demo --out runs/my-demo"))
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="where the demo run and artifact go"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
) -> None:
    """Train PatchCore on built-in ELPV mono solar cells, evaluate, export to ONNX, print where things are."""
    from ..demo import run_demo

    run_demo(out, device, console)
