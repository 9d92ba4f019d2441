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
        "edgeiad study --setting fewshot --models patchcore,padim,npad,efficientad --data a --data b --data c",
        "edgeiad study --setting noisy --models patchcore,padim --data path/to/mvtec_folder --max-train 100",
        "edgeiad study --setting continual --models patchcore,padim --data a,b,c --out study/continual",
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
        help="clean (one-class, the default); supervised: SegAD over --models as base detectors against them "
        "and a supervised classifier, 0/5/10 labelled defects per type, 3 seeds (seed 003); fewshot (m = 1, 2, "
        "4, 8 good images), noisy (0/5/10/20 % defective training images, with each model's noise-robust "
        "option) or continual (the --data sets as a task sequence; forgetting and memory of one model per "
        "product against one shared, updated model), 3 seeds (seed 004)",
    ),
    levels: str = typer.Option(
        None, "--levels", help="fewshot: image counts (default 1,2,4,8); noisy: shares (default 0,0.05,0.1,0.2)"
    ),
    seeds: str = typer.Option("0,1,2", "--seeds", help="fewshot, noisy: comma list of seeds"),
    max_train: int = typer.Option(
        0, "--max-train", help="noisy, continual: good training images drawn per seed and task (0 = all)"
    ),
    max_test: int = typer.Option(
        0, "--max-test", help="fewshot, noisy, continual: stratified test subsample per dataset (0 = all)"
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
    if setting in ("fewshot", "noisy", "continual"):
        _manufacturing_setting(setting, names, datasets, settings, levels, seeds, max_train, max_test, threads,
                               latency_images, out, command)  # fmt: skip
        return
    if setting != "clean":
        raise typer.BadParameter(
            f"--setting {setting!r} is unknown: use clean, supervised, fewshot, noisy or continual"
        )
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


def _numbers(text: str | None, kind, option: str) -> tuple:
    if not text:
        return ()
    try:
        return tuple(kind(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise typer.BadParameter(f"{option} {text!r} is invalid: use a comma list of numbers, e.g. 1,2,4,8") from None


def _manufacturing_setting(setting, names, datasets, settings, levels, seeds, max_train, max_test, threads,
                           latency_images, out, command) -> None:  # fmt: skip
    from ..study import parse_settings

    echo = lambda m: console.print(m, markup=False, highlight=False)  # noqa: E731
    chosen_seeds = _numbers(seeds, int, "--seeds")
    if setting == "continual":
        from ..study.continual import ContinualPlan, run_continual_study

        plan = ContinualPlan(names, datasets, parse_settings(settings), chosen_seeds, max_train, max_test, threads)
        run_continual_study(plan, out, echo=echo, command=command)
    else:
        from ..study.settings import SettingPlan, run_setting_study

        kind = int if setting == "fewshot" else float
        plan = SettingPlan(setting, names, datasets, _numbers(levels, kind, "--levels"), chosen_seeds, max_train,
                           max_test, parse_settings(settings), threads, min(latency_images, 10))  # fmt: skip
        run_setting_study(plan, out, echo=echo, command=command)
    written = ", ".join(str(out / f"{setting}.{suffix}") for suffix in ("md", "json", "html"))
    console.print(f"written: {written}", markup=False)
