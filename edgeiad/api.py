"""The Python API beside the CLI: train, evaluate, export and benchmark with the same defaults as the commands.

`edgeiad.export` and `edgeiad.bench` are subpackages, so the verbs are `export_model` and `benchmark`.
"""

from __future__ import annotations

from pathlib import Path


def train(model: str, data: str | Path, out: str | Path | None = None, device: str = "cpu", **config) -> Path:
    """Fit `model` on `data` (elpv-mono, an MVTec-layout or plain folder) and return the run folder.

    Keyword arguments override the model's config (image_size=(256, 256), coreset_ratio=0.01, seed=0, ...).
    """
    from .engine import train as run_training

    return run_training(model, data, out=Path(out) if out else None, device=device, overrides=config, progress=False)


def evaluate(run: str | Path, data: str | Path | None = None, device: str = "cpu") -> dict:
    """Threshold-free metrics of a run on its own test images (validation included) or on `data`."""
    from .engine import evaluate_run

    return evaluate_run(Path(run), data, device, progress=False)


def export_model(
    run: str | Path,
    target: str | None = None,
    precision: str | None = None,
    profile: str | None = None,
    out: str | Path | None = None,
    stats: str | None = None,
    batch: str | int | None = None,
    **options,
) -> Path:
    """Export a run to an artifact folder; a device `profile` fills in target, precision, stats and batch.

    Options: stats_dtype, force, sign (see `edgeiad export --help`).
    """
    from .export import export_run
    from .export.profiles import export_settings

    chosen = export_settings(profile, target=target, precision=precision, stats=stats, batch=batch)
    return export_run(Path(run), **chosen, out=Path(out) if out else None, **options)


def benchmark(
    models: str = "patchcore,padim",
    targets: str = "onnx,openvino",
    precisions: str = "fp32",
    data: str = "elpv-mono",
    out: str | Path = "bench",
    runs: str | Path | None = None,
    batch: str = "1",
    threads: str = "1",
    iters: int = 200,
    warmup: int = 20,
    accuracy_images: int = 400,
    stats: str = "baked",
) -> dict:
    """Run `edgeiad bench` and return its results document (also written as results.json/csv/html in `out`)."""
    from .bench.cases import plan
    from .bench.report import write_results
    from .bench.runner import Bench

    cases = plan(models, targets, precisions, stats, batch, threads)
    session = Bench(Path(out), data, Path(runs) if runs else None, iters, warmup, accuracy_images, echo=lambda m: None)
    document = session.run(cases)
    write_results(Path(out), document)
    return document
