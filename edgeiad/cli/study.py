"""`edgeiad study`: models × datasets (× one factor) with one configuration, one table."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer
from rich.console import Console

from . import app, examples

console = Console()


@app.command(
    epilog=examples(
        "edgeiad study --models patchcore,padim --data elpv-mono",
        "edgeiad study --models all --data elpv-mono --data path/to/mvtec_folder --vary image_size=256,320",
        "edgeiad study --setting supervised --models patchcore,padim --data path/to/mvtec_folder --out study/segad",
    )
)
def study(
    models: str = typer.Option("patchcore,padim", "--models", help="comma list of models, or all"),
    data: list[str] = typer.Option(
        ..., "--data", help="dataset (elpv-mono, elpv-poly, MVTec-layout folder); repeat or comma-separate"
    ),
    settings: list[str] = typer.Option(
        [], "--set", help="config override for every model that has it (key=value) or one (model.key=value)"
    ),
    vary: str = typer.Option(None, "--vary", help="one factor to study, e.g. image_size=256,320,384"),
    scoring: str = typer.Option("exported", "--scoring", help="exported (ONNX through the runtime) or eager"),
    threads: int = typer.Option(1, "--threads", help="runtime threads for scoring and the latency column"),
    latency_images: int = typer.Option(20, "--latency-images", help="test images timed per case (0: no latency)"),
    out: Path = typer.Option(Path("study"), "--out", help="output folder; an earlier study there is resumed"),
    json_out: bool = typer.Option(False, "--json", help="print the summary table as JSON (study.json has it all)"),
    setting: str = typer.Option(
        "clean",
        "--setting",
        help="clean (one-class, the default) or supervised: SegAD over --models as base detectors against them "
        "and a supervised classifier, 0/5/10 labelled defects per type, 3 seeds (seed 003)",
    ),
) -> None:
    """Train every model on every dataset with one configuration and tabulate the exported models' accuracy.

    Example: edgeiad study --models patchcore,padim --data elpv-mono --data path/to/mvtec_folder --vary
    image_size=256,320 --out study/size
    """
    from ..models import MODELS
    from ..study import StudyPlan, parse_settings, parse_vary, run_study

    names = list(MODELS) if models.strip().lower() == "all" else [m.strip().lower() for m in models.split(",")]
    datasets = [item.strip() for entry in data for item in entry.split(",") if item.strip()]
    command = "edgeiad " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
    if setting == "supervised":
        from ..study.supervised import run_supervised_study

        bases = tuple(name for name in names if name and MODELS[name].pixel_maps and not MODELS[name].supervised)
        run_supervised_study(datasets, out, bases, echo=lambda m: console.print(m, markup=False), command=command)
        console.print(f"written: {out / 'supervised.md'}, {out / 'supervised.json'}", markup=False)
        return
    if setting != "clean":
        raise typer.BadParameter(f"--setting {setting!r} is unknown: use clean or supervised")
    plan = StudyPlan(
        models=[name for name in names if name],
        datasets=datasets,
        settings=parse_settings(settings),
        variants=parse_vary(vary),
        scoring=scoring,
        threads=threads,
        latency_images=latency_images,
    )
    log = Console(stderr=True) if json_out else console  # --json: stdout carries only the JSON
    document = run_study(plan, out, echo=lambda m: log.print(m, markup=False, highlight=False), command=command)
    from ..study.report import summary_table

    header, rows = summary_table(document)
    if json_out:
        import json

        print(json.dumps({"out": str(out), "rows": [dict(zip(header, row)) for row in rows]}, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"mean over {len(datasets)} dataset(s), {scoring} scoring")
    for column in header:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"written: {out / 'study.md'}, {out / 'study.json'}, {out / 'study.html'}", markup=False)
