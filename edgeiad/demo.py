"""`edgeiad demo`: the whole path on built-in data in a few minutes: train, evaluate, export to ONNX."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .errors import ConfigError

READING = (
    "How to read this: image AUROC is the chance that a defective cell scores above a good one (0.5 = coin toss,\n"
    "1.0 = every defective cell above every good one); AP is the same ranking seen from the defective side (chance\n"
    "= the share of defective cells, about 0.56 here); F1-max is the best balance of missed and false defects over\n"
    "all thresholds; FPR@95%TPR is the share of good cells flagged when 95 % of defective ones are caught (lower is\n"
    "better). The 200 training cells are a seeded random sample of the good mono cells; the test set is every other\n"
    "mono cell, including cells an expert marked defective with only 1/3 confidence, so a perfect score is not\n"
    "expected. `--data elpv-mono-drift` trains on the first 200 cells only (early modules) and measures drift."
)


def run_demo(out: Path, device: str, console: Console) -> None:
    """Train PatchCore on ELPV mono into out/run, export it to ONNX into out/artifact, print a summary."""
    from .engine import train
    from .export import export_run
    from .runs import read_json

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / "run" / "config.json").exists() and not (out / "artifact").exists():
            raise ConfigError(f"{out} exists and is not a previous demo folder: pass --out to a new folder")
        shutil.rmtree(out)
    say = lambda message: console.print(message, markup=False, highlight=False)  # noqa: E731
    started = time.perf_counter()
    say("edgeiad demo: PatchCore (default settings) on ELPV mono solar cells, 200 good training images")
    run = train("patchcore", "elpv-mono", out=out / "run", device=device, echo=say)
    metrics = read_json(run / "metrics.json")
    artifact = export_run(run, target="onnx", out=out / "artifact", echo=say)
    parity = read_json(artifact / "manifest.json")["parity"]
    backbone = read_json(run / "config.json")["model"]["backbone"].replace("efficientnet_lite", "EfficientNet-Lite")
    table = Table(title=f"PatchCore ({backbone}) on ELPV mono")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("image_auroc", "image_ap", "image_f1_max", "image_fpr_at_95tpr"):
        table.add_row(key, f"{metrics[key]:.4f}")
    if "exported_image_auroc" in parity:
        subset = f"ONNX vs eager AUROC ({parity['auroc_images']} test images)"
        table.add_row(subset, f"{parity['exported_image_auroc']:.4f} / {parity['eager_image_auroc']:.4f}")
    table.add_row("ONNX max map error", f"{parity['max_rel_map_error']:.2e} of range")
    table.add_row("wall time", f"{time.perf_counter() - started:.0f} s")
    console.print(table)
    say(READING)
    say(f"run folder: {run}\noverlays:   {run / 'overlays'}\nartifact:   {artifact}")
    say(f"score an image without torch: python -m edgeiad_runtime {artifact} IMAGE.png")
