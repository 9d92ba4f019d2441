"""`edgeiad demo`: the whole path on built-in data in a few minutes — train, evaluate, export, predict."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .errors import ConfigError


def run_demo(out: Path, device: str, console: Console) -> None:
    """Train PatchCore on ELPV mono into out/run, export to ONNX into out/artifact when export exists."""
    from .engine import train
    from .runs import read_json

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / "run" / "config.json").exists() and not (out / "artifact").exists():
            raise ConfigError(f"{out} exists and is not a previous demo folder: pass --out to a new folder")
        shutil.rmtree(out)
    started = time.perf_counter()
    console.print("[bold]edgeiad demo[/bold]: PatchCore on ELPV mono solar cells (200 good training images)")
    run = train(
        "patchcore",
        "elpv-mono",
        out=out / "run",
        device=device,
        echo=lambda message: console.print(message, markup=False, highlight=False),
    )
    metrics = read_json(run / "metrics.json")
    table = Table(title="PatchCore on ELPV mono (image level)")
    for column in ("metric", "value"):
        table.add_column(column)
    for key in ("image_auroc", "image_ap", "image_f1_max", "image_fpr_at_95tpr"):
        table.add_row(key, f"{metrics[key]:.4f}")
    artifact_line = _export_step(run, out / "artifact", console)
    table.add_row("wall time", f"{time.perf_counter() - started:.0f} s")
    console.print(table)
    console.print(f"run folder: {run}\noverlays:   {run / 'overlays'}\n{artifact_line}")


def _export_step(run: Path, target: Path, console: Console) -> str:
    try:
        from .export import export_run
    except ImportError:
        return "export: skipped (the exporter is not part of this build yet)"
    artifact = export_run(
        run, target="onnx", out=target, echo=lambda message: console.print(message, markup=False, highlight=False)
    )
    return f"artifact:   {artifact} (run it with: python -m edgeiad_runtime {artifact} IMAGE)"
