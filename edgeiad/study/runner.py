"""Run a study plan case by case, saving after each case so an interrupted study resumes where it stopped."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..data import Dataset, load_dataset, load_rgb
from ..errors import ConfigError, DataError
from ..runs import versions, write_json
from .plan import StudyPlan, Variant
from .report import summarise, write_reports

SCHEMA_VERSION = 1
WARMUP_CALLS = 3


def run_study(plan: StudyPlan, out: Path, echo=None, command: str = "") -> dict:
    """Train and score every model × dataset × variant; write study.json/.md/.html into `out`; return the document."""
    plan.validate()
    echo = echo or (lambda message: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    document = _resume(out / "study.json", plan, command)
    done = {case["id"]: case for case in document["cases"]}
    total, count, started = len(plan.models) * len(plan.datasets) * len(plan.variants), 0, time.perf_counter()
    for spec in plan.datasets:
        dataset = _study_dataset(spec)
        for variant in plan.variants:
            for model in plan.models:
                count += 1
                case_id = f"{model}|{variant.name}|{dataset.name}"
                overrides = plan.overrides(model, variant)
                previous = done.get(case_id)
                if previous is not None and previous["overrides"] == jsonable(overrides):
                    echo(f"[{count}/{total}] {case_id}: done before, kept")
                    continue
                echo(f"[{count}/{total}] {case_id} ({_eta(started, count - 1, total)})")
                record = run_case(plan, model, variant, overrides, dataset, spec, out)
                done[case_id] = record
                document["cases"] = list(done.values())
                echo(f"    {_line(record)}")
                _save(out, document)
    document["cases"] = list(done.values())
    return _save(out, document)


def run_case(plan: StudyPlan, model: str, variant: Variant, overrides: dict, dataset: Dataset, spec: str, out: Path):
    """One model × dataset × variant: fit, score (exported or eager), time; return its record."""
    scorer = _exported_case if plan.scoring == "exported" else _eager_case
    metrics, fit, config, latency = scorer(plan, model, overrides, dataset, out / "cases" / _slug(model, variant))
    return {
        "id": f"{model}|{variant.name}|{dataset.name}",
        "model": model,
        "variant": variant.name,
        "dataset": dataset.name,
        "data": spec,
        "overrides": jsonable(overrides),
        "config": config,
        "scoring": plan.scoring,
        "metrics": metrics,
        "fit_s": fit.get("fit_s"),
        "fit": fit,
        "latency_ms": latency,
        "n_train": len(dataset.train),
        "n_test": len(dataset.test),
    }


def _eager_case(plan: StudyPlan, model: str, overrides: dict, dataset: Dataset, folder: Path):
    from ..engine import compute_metrics, fit_model, score_samples
    from ..models import get_model

    config = get_model(model).make_config(**overrides)
    fitted, fit = fit_model(config, dataset)
    scored = score_samples(fitted, dataset.test, config.preprocessing(), with_masks=dataset.has_masks)
    return compute_metrics(scored), fit, config.to_dict(), None


def _exported_case(plan: StudyPlan, model: str, overrides: dict, dataset: Dataset, folder: Path):
    import shutil

    from edgeiad_runtime import Detector

    from ..engine import compute_metrics, score_with, train
    from ..export import export_run
    from ..runs import read_json

    run, artifact = folder / dataset.name / "run", folder / dataset.name / "artifact"
    shutil.rmtree(run.parent, ignore_errors=True)  # a case interrupted earlier starts again from nothing
    train(model, dataset, out=run, overrides=overrides, progress=False)
    export_run(run, target="onnx", out=artifact)
    record = read_json(run / "config.json")
    with Detector.load(artifact, threads=plan.threads) as detector:
        spec = _preprocessing(detector)
        scored = score_with(detector.infer, dataset.test, spec, with_masks=dataset.has_masks)
        latency = _latency(detector, dataset, plan.latency_images)
    return compute_metrics(scored), record["fit"], record["model"], latency


def _preprocessing(detector):
    from edgeiad_runtime.manifest import preprocessing_of

    return preprocessing_of(detector.manifest)


def _latency(detector, dataset: Dataset, count: int) -> float | None:
    """Median end-to-end `Detector.predict` time (decode excluded, pre/post-processing included), batch 1."""
    if count == 0:
        return None
    frames = [load_rgb(sample) for sample in _spread(dataset.test, count)]
    for frame in frames[:WARMUP_CALLS]:
        detector.predict(frame, color_order="RGB")
    times = []
    for frame in frames:
        start = time.perf_counter()
        detector.predict(frame, color_order="RGB")
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def _spread(samples: list, count: int) -> list:
    picks = np.linspace(0, len(samples) - 1, min(count, len(samples))).round().astype(int)
    return [samples[i] for i in sorted(set(picks.tolist()))]


def _study_dataset(spec: str) -> Dataset:
    dataset = load_dataset(spec)
    labels = {sample.label for sample in dataset.test}
    if labels != {0, 1}:
        raise DataError(
            f"dataset {spec} needs good and anomalous test images for a study (found labels {sorted(labels)}): "
            "use an MVTec-layout folder with test/good and test/<defect>"
        )
    return dataset


def _resume(path: Path, plan: StudyPlan, command: str) -> dict:
    """The earlier document in `out` when it was made with the same scoring, else a new one."""
    fresh = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "scoring": plan.scoring,
        "threads": plan.threads,
        "settings": jsonable(plan.settings),
        "versions": versions(),
        "cases": [],
    }
    earlier = resume_document(path, fresh, ("scoring", "schema_version"), "a study with other scoring")
    if earlier is fresh:
        return fresh
    earlier["command"] = command or earlier.get("command", "")
    return earlier


def _save(out: Path, document: dict) -> dict:
    document["summary"] = summarise(document["cases"])
    write_json(out / "study.json", document)
    write_reports(out, document)
    return document


def resume_document(path: Path, fresh: dict, same: tuple[str, ...], conflict: str) -> dict:
    """The study document saved at `path` when its `same` keys equal `fresh`'s, `fresh` when there is none;
    anything else stops with one line (`conflict` says what differs)."""
    if not path.is_file():
        return fresh
    try:
        earlier = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"{path} is not valid JSON: delete it or choose another --out") from None
    if any(earlier.get(key) != fresh[key] for key in same):
        raise ConfigError(f"{path} holds {conflict}: choose another --out or delete it")
    return earlier


def jsonable(value):
    """`value` as plain JSON types (tuples as lists, tensors and arrays by their `tolist`)."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else list(v)))


def _slug(model: str, variant: Variant) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in variant.name)
    return f"{model}-{safe}"


def _eta(started: float, done: int, total: int) -> str:
    if done == 0:
        return "first case"
    left = (time.perf_counter() - started) / done * (total - done)
    return f"about {left / 60:.0f} min left"


def _line(record: dict) -> str:
    metrics = record["metrics"]
    parts = [f"{k}={metrics[k]:.4f}" for k in ("image_auroc", "pixel_auroc", "aupro") if k in metrics]
    parts.append(f"fit {record['fit_s']:.0f} s")
    if record["latency_ms"] is not None:
        parts.append(f"{record['latency_ms']:.1f} ms")
    return ", ".join(parts)
