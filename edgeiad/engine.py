"""Train and evaluate: data → fit → run folder (weights, config, metrics, scores, overlays, log)."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .data import (
    Dataset,
    check_min_images,
    iter_batches,
    load_dataset,
    load_mask,
    load_rgb,
    read_batches,
    take_labelled_defects,
)
from .errors import ArtifactError, ConfigError, DataError, require_torch
from .models import MODELS, get_model
from .progress import progress_callback
from .runs import (
    StagingDir,
    load_model,
    load_running,
    new_run_dir,
    read_json,
    run_dataset,
    run_model_name,
    save_model,
    save_running,
    versions,
    write_json,
)

OVERLAYS_PER_GROUP = 3


PIXEL_EVAL_MODES = ("original", "fast")
SCORE_COLUMNS = ("path", "label", "defect_type", "score")


@dataclass
class Scored:
    """Scores of a sample list, plus model-size maps and masks when pixel metrics need them.

    Pixel metrics read each ground truth again at its own size (`samples`, `sizes`) and upsample the map to it,
    so memory holds model-size maps only; `masks` (downsized, nearest) serve model-size threshold fitting.
    """

    scores: np.ndarray
    labels: np.ndarray
    defect_types: list[str]
    map_min: float = float("inf")
    map_max: float = float("-inf")
    maps: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    samples: list = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)

    def truth(self, index: int) -> np.ndarray:
        """Ground truth of image `index` at its own resolution (the stored mask when no sample is known)."""
        if not self.samples:
            return np.asarray(self.masks[index], dtype=bool)
        return load_mask(self.samples[index], self.sizes[index])


def eager_infer(model, device="cpu"):
    """`infer(NCHW batch) -> (NxHxW maps, N scores)` with the eager model, as numpy float32."""
    torch = require_torch()
    model = model.to(device)

    def infer(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            anomaly_map, pred_score = model.infer(torch.from_numpy(batch).to(device))
        return anomaly_map[:, 0].float().cpu().numpy(), pred_score.float().cpu().numpy()

    return infer


def score_samples(model, samples, preprocessing, device="cpu", with_masks=False, progress=None, batch_size=16):
    """Score samples with the eager model (bounded memory); keep maps only when masks are wanted."""
    return score_with(eager_infer(model, device), samples, preprocessing, with_masks, progress, batch_size)


def score_with(infer, samples, preprocessing, with_masks=False, progress=None, batch_size=16) -> Scored:
    """Score samples with `infer(NCHW batch) -> (NxHxW maps, N scores)`: an eager model or an exported one."""
    samples = list(samples)
    scored = Scored(np.zeros(0), np.array([s.label for s in samples]), [s.defect_type for s in samples])
    scores = []
    for batch in read_batches(samples, preprocessing, batch_size, progress=progress):
        maps, batch_scores = infer(batch.images)
        scores.append(np.asarray(batch_scores, dtype=np.float32).reshape(len(batch.samples)))
        scored.map_min = min(scored.map_min, float(maps.min()))
        scored.map_max = max(scored.map_max, float(maps.max()))
        if with_masks:
            for sample, size, anomaly in zip(batch.samples, batch.sizes, maps):
                scored.maps.append(np.ascontiguousarray(anomaly, dtype=np.float32))
                scored.masks.append(_mask_at(sample, size, anomaly.shape))
                scored.sizes.append(size)
    scored.samples = samples if with_masks else []
    scored.scores = np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)
    return scored


def _mask_at(sample, size, shape) -> np.ndarray:
    """Ground truth (read at the image's own `size`) resized (nearest) to the model's input size."""
    if sample.label == 0 or sample.mask_path is None:
        return np.zeros(shape, dtype=bool)
    mask = load_mask(sample, size).astype(np.uint8)
    if mask.shape != tuple(shape):
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask.astype(bool)


def pixel_metrics_of(scored: Scored, indices=None, pixel_eval: str = "original") -> dict:
    """Pixel AUROC, F1-max and AUPRO of `scored` (all images or `indices`), labelled by how they were computed.

    "original": each map upsampled with the runtime's resize_map to its ground truth's size, as MVTec AD scores
    them (masks read one at a time, bounded memory); "fast": model-size maps against downsized masks.
    """
    from edgeiad_runtime.postprocess import resize_map

    from .metrics import PixelAccumulator, pixel_metrics

    indices = range(len(scored.maps)) if indices is None else indices
    if pixel_eval == "fast":
        height, width = scored.maps[0].shape
        found = pixel_metrics([scored.masks[i] for i in indices], [scored.maps[i] for i in indices])
        return {**found, "pixel_eval": f"fast-{height}x{width}"}
    if pixel_eval != "original":
        raise ConfigError(f"pixel evaluation {pixel_eval!r} is unknown: use one of {', '.join(PIXEL_EVAL_MODES)}")
    with PixelAccumulator() as accumulator:
        for index in indices:
            truth = scored.truth(index)
            accumulator.add(truth, resize_map(scored.maps[index], *truth.shape))
        return {**accumulator.result(), "pixel_eval": "original"}


def compute_metrics(scored: Scored, pixel_eval: str = "original") -> dict:
    """Image metrics (and pixel metrics when maps were kept) from a Scored test set."""
    from .metrics import image_metrics

    metrics = image_metrics(scored.labels, scored.scores, scored.defect_types)
    if scored.maps:
        metrics.update(pixel_metrics_of(scored, pixel_eval=pixel_eval))
    return metrics


def score_rows(samples, scores) -> list[dict]:
    """One record per image (path, label, defect type, raw score as a float) for CSV or JSON output."""
    return [
        {"path": s.path, "label": int(s.label), "defect_type": s.defect_type, "score": float(score)}
        for s, score in zip(samples, scores)
    ]


def write_csv(handle, rows, columns) -> None:
    """CSV with `\n` line ends and floats as repr (they read back to the identical value)."""
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else _csv_cell(row[c]) for c in columns])


def _csv_cell(value):
    if isinstance(value, bool):
        return int(value)
    return repr(value) if isinstance(value, float) else value


def write_scores_csv(path: Path, samples, scores, validation: set[str] = frozenset()) -> None:
    """One row per test image; `split` says whether thresholds were fitted on it (validation) or not (test)."""
    rows = score_rows(samples, scores)
    for row in rows:
        row["split"] = "validation" if row["path"] in validation else "test"
    with open(path, "w", newline="") as handle:
        write_csv(handle, rows, (*SCORE_COLUMNS, "split"))


def overlay(
    rgb: np.ndarray, anomaly_map: np.ndarray, low: float, high: float, threshold=None, truth=None
) -> np.ndarray:
    """Heat map (JET, min-max scaled to the run's range) over the image, with the pixel-threshold contour,
    the ground-truth outline and a colour bar; BGR for cv2.imwrite."""
    from edgeiad_runtime.postprocess import annotated_overlay

    span = max(high - low, 1e-12)
    scaled = np.clip((anomaly_map - low) / span, 0, 1)
    level = None if threshold is None else float((threshold - low) / span)
    return annotated_overlay(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), scaled, level, truth)


def overlay_choice(scored: Scored) -> list[tuple[int, str]]:
    """False alarms (highest good scores), the worst misses (lowest anomalous) and the clearest hit."""
    order = np.argsort(-scored.scores)
    good = [i for i in order if scored.labels[i] == 0][:OVERLAYS_PER_GROUP]
    anomalous = [i for i in order if scored.labels[i] != 0]
    missed = anomalous[::-1][: OVERLAYS_PER_GROUP - 1]
    hits = [i for i in anomalous[:1] if i not in missed]
    return [(i, "good") for i in good] + [(i, "missed") for i in missed] + [(i, "anomalous") for i in hits]


def write_overlays(folder: Path, model, samples, scored: Scored, preprocessing, device, threshold=None) -> list[str]:
    """PNG overlays of the highest-scored good images, the lowest-scored anomalous ones and the clearest hit."""
    from .data import load_mask

    chosen = overlay_choice(scored)
    if not chosen:
        return []
    folder.mkdir(exist_ok=True)
    picked = [samples[i] for i, _ in chosen]
    maps = score_samples(model, picked, preprocessing, device, with_masks=True).maps
    written = []
    for (index, group), sample, anomaly in zip(chosen, picked, maps):
        name = f"{group}_{scored.scores[index]:.4g}_{Path(sample.path).stem}.png"
        rgb = load_rgb(sample)
        truth = load_mask(sample, rgb.shape[:2]) if sample.mask_path else None
        image = overlay(rgb, anomaly, scored.map_min, scored.map_max, threshold, truth)
        cv2.imwrite(str(folder / name), image)
        written.append(name)
    return written


class RunLog:
    """Collects log lines for the run's train.log and echoes them through `echo`."""

    def __init__(self, echo=None) -> None:
        self.lines: list[str] = []
        self.echo = echo

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        self.lines.append(line)
        if self.echo is not None:
            self.echo(message)


def train(
    model_name: str,
    data: str | Path | Dataset,
    out: Path | None = None,
    device: str | None = None,
    overrides: dict | None = None,
    progress: bool = True,
    echo=None,
    threshold_options: dict | None = None,
    labelled_defects: int = 0,
) -> Path:
    """Fit `model_name` on the good images of `data` (a spec or a loaded Dataset), evaluate, write a run folder.

    `labelled_defects` moves that many anomalous test images per defect type into the training set of a
    supervised model (seeded by the config's seed), before the threshold validation split is drawn.
    """
    from .models._fitting import resolve_device

    spec = get_model(model_name)
    config = spec.make_config(**(overrides or {}))
    device = resolve_device(device)
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    if labelled_defects and not spec.supervised:
        supervised = ", ".join(name for name, s in MODELS.items() if s.supervised)
        raise ConfigError(f"--labelled-defects trains supervised models ({supervised}), not {spec.name}")
    dataset = take_labelled_defects(dataset, labelled_defects, config.seed)
    check_min_images(dataset, spec.min_train_images, spec.name)
    target = new_run_dir(Path(out) if out else None, spec.name, dataset.name)
    log = RunLog(echo)
    log(f"training {spec.name} on {dataset.name}: {len(dataset.train)} good images, device {device}")
    if spec.supervised:
        log(_labelled_line(dataset))
    model, fit_info = fit_model(config, dataset, device, progress)
    log(f"fit done in {fit_info['fit_s']:.1f} s: {fit_info}")
    return _write_run(target, model, config, dataset, device, progress, log, threshold_options, fit_info)


def _write_run(target: Path, model, config, dataset: Dataset, device, progress, log, threshold_options, fit_info,
               **extra):  # fmt: skip
    """Write a run folder atomically: statistics, running sums, evaluation and thresholds, config (with `extra`
    keys), metrics, train.log."""
    with StagingDir(target) as staging:
        save_model(model, staging)
        save_running(model, staging)
        results = _evaluate_into(staging, model, config, dataset, device, progress, log, threshold_options)
        write_json(staging / "config.json", {**_config_record(config, dataset, device, fit_info), **extra})
        write_json(staging / "metrics.json", results["metrics"])
        write_json(staging / "thresholds.json", results["thresholds"])
        (staging / "train.log").write_text("\n".join(log.lines) + "\n")
    return target


def update(
    run: Path,
    data: str | Path | Dataset,
    out: Path | None = None,
    device: str | None = None,
    progress: bool = True,
    echo=None,
    threshold_options: dict | None = None,
) -> Path:
    """Add the good images of `data` to a fitted run without its earlier images; write a new run folder.

    PaDiM and N-pad statistics are updated exactly from running sums; PatchCore's bank is re-selected from the
    current bank and the new patches. The new run is evaluated (and its thresholds fitted) on `data`'s test set;
    the earlier run is left as it was, so an update can be rolled back by deploying the earlier run again.
    """
    from .models._fitting import resolve_device, seed_everything
    from .models.backbones import weights_sha256

    run = Path(run)
    record, model = load_model(run)
    spec = get_model(run_model_name(record, run))
    updater = spec.update()
    if updater is None:
        updatable = ", ".join(name for name, s in MODELS.items() if s.update_function)
        raise ConfigError(
            f"{spec.name} learns its weights and cannot add images without its earlier ones: retrain it on the old "
            f"and new good images with edgeiad train (edgeiad update works for {updatable})"
        )
    running = load_running(run, spec.running_shapes(model))
    config = model.config
    if record.get("backbone_weights_sha256") not in (None, weights_sha256(config.backbone)):
        raise ArtifactError(
            f"the installed {config.backbone} weights differ from those {run} was fitted with: features would not "
            "match the statistics; reinstall the weight package the run used, or retrain"
        )
    device = resolve_device(device)
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    check_min_images(dataset, 1, spec.name)
    target = new_run_dir(Path(out) if out else None, spec.name, dataset.name)
    log = RunLog(echo)
    seen = record.get("data", {})
    log(f"updating {spec.name} run {run} (fitted on {seen.get('name')}) with {len(dataset.train)} good images "
        f"of {dataset.name}, device {device}")  # fmt: skip
    seed_everything(config.seed)
    started = time.perf_counter()
    batches = iter_batches(dataset.train, config.preprocessing(), progress="embedding new images" if progress else None)
    with progress_callback(spec.fit_label, progress) as callback:
        model, info = updater(config, model, running, batches, device=device, progress=callback)
    info["fit_s"] = round(time.perf_counter() - started, 3)
    log(f"update done in {info['fit_s']:.1f} s: {info}")
    updates = [*record.get("updates", []), {"from_run": str(run), "data": dataset.summary(), "fit": info}]
    history = [*record.get("data_history", []), seen]
    return _write_run(target, model, config, dataset, device, progress, log, threshold_options, record.get("fit", {}),
                      updates=updates, data_history=history)  # fmt: skip


def _labelled_line(dataset: Dataset) -> str:
    if not dataset.train_anomalous:
        return (
            "no labelled defective images (train/<defect>/ folders or --labelled-defects N): the second stage "
            "trains on synthetic disturbances of good images instead (seed 003, Appendix A.2)"
        )
    found = dataset.labelled_summary()["train_anomalous_types"]
    kinds = ", ".join(f"{count} {kind}" for kind, count in found.items())
    return f"labelled defective training images: {kinds} (never scored; listed in config.json)"


def fit_model(config, dataset: Dataset, device: str = "cpu", progress: bool = False):
    """Fit the model `config` names on the dataset's good images; return (model, fit info with `fit_s`)."""
    from .models._fitting import seed_everything

    spec = get_model(config.model)
    check_min_images(dataset, spec.min_train_images, spec.name)
    config.image_size = config.fitted_to(_image_sizes(dataset.train))
    config.validate()
    seed_everything(config.seed)
    started = time.perf_counter()
    desc = "embedding train images" if progress else None
    batches = iter_batches(dataset.train, config.preprocessing(), progress=desc)
    extra = {}
    if spec.supervised:
        labelled = dataset.train_anomalous
        extra["anomalous"] = iter_batches(labelled, config.preprocessing()) if labelled else None
    with progress_callback(spec.fit_label, progress) as callback:
        model, fit_info = spec.fit()(config, batches, device=device, progress=callback, **extra)
    fit_info["fit_s"] = round(time.perf_counter() - started, 3)
    return model, fit_info


def _image_sizes(samples, count: int = 16) -> list[tuple[int, int]]:
    """(height, width) of up to `count` samples spread over the list (decoded: image headers vary by format)."""
    picks = sorted(set(np.linspace(0, len(samples) - 1, min(count, len(samples))).round().astype(int).tolist()))
    return [load_rgb(samples[i]).shape[:2] for i in picks]


def _config_record(config, dataset: Dataset, device: str, fit_info: dict) -> dict:
    from .models.backbones import weights_sha256

    return {
        "model": config.to_dict(),
        "preprocessing": config.preprocessing().to_dict(),
        "backbone_weights_sha256": weights_sha256(config.backbone),
        "data": dataset.summary(),
        "device": device,
        "fit": fit_info,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _evaluate_into(folder: Path, model, config, dataset: Dataset, device, progress, log, threshold_options) -> dict:
    """Score train and test images, fit thresholds on a validation split, write scores, reports and overlays."""
    from .thresholding import study_dataset, write_reports

    preprocessing = config.preprocessing()
    desc = "scoring train images" if progress else None
    train = score_samples(model, dataset.train, preprocessing, device, progress=desc)
    desc = "scoring test images" if progress else None
    test = score_samples(model, dataset.test, preprocessing, device, with_masks=dataset.has_masks, progress=desc)
    if not dataset.test:
        log("no test images: metrics skipped, threshold estimated from good images only")
    result = study_dataset(test, dataset, threshold_options or {}, train.scores, config.seed)
    metrics: dict = {"train_score_mean": float(train.scores.mean()), "train_score_std": float(train.scores.std())}
    metrics.update(result["threshold_free"])
    metrics["inference"] = _chosen_inference(result)
    metrics["split"] = {k: result["split"][k] for k in ("validation", "test")}
    for note in result["notes"]:
        log(note)
    if result["threshold_free"]:
        log(_metrics_line(metrics))
    elif dataset.test:
        log("test images hold one class only: threshold-free metrics need good and anomalous images")
    if dataset.test:
        write_scores_csv(folder / "scores.csv", dataset.test, test.scores, set(result["split"]["validation_paths"]))
        metrics["overlays"] = write_overlays(
            folder / "overlays", model, dataset.test, test, preprocessing, device, result["pixel"]["value"]
        )
    write_reports(folder, result, f"{config.model} on {dataset.name}")
    return {"metrics": metrics, "thresholds": result}


def _chosen_inference(result: dict) -> dict:
    """Inference metrics of the chosen image/pixel thresholds on the test images."""
    chosen = {"image": result["ablation"]["image"][result["image"]["method"]]["test"]}
    pixel = result["ablation"]["pixel"].get(result["pixel"]["method"])
    if pixel is not None:
        chosen["pixel"] = pixel["test"]
    return chosen


def _metrics_line(metrics: dict) -> str:
    keys = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro")
    line = "metrics: " + ", ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)
    return line + (f" (pixel metrics: {metrics['pixel_eval']})" if "pixel_eval" in metrics else "")


def evaluate_run(
    run: Path, data: str | Path | None = None, device: str | None = None, progress=True, pixel_eval: str = "original"
) -> dict:
    """Re-score a run's test set (or another dataset's): metrics plus per-image `images`; the run is unchanged."""
    from .models._fitting import resolve_device

    if pixel_eval not in PIXEL_EVAL_MODES:
        raise ConfigError(f"pixel evaluation {pixel_eval!r} is unknown: use one of {', '.join(PIXEL_EVAL_MODES)}")
    record, model = load_model(Path(run))
    device = resolve_device(device)
    dataset = run_dataset(record, data)
    if not dataset.test:
        raise DataError(f"dataset {dataset.name} has no test images: evaluate needs an MVTec-layout test/ folder")
    config = model.config
    desc = "scoring test images" if progress else None
    test = score_samples(model, dataset.test, config.preprocessing(), device, dataset.has_masks, progress=desc)
    return {**compute_metrics(test, pixel_eval), "images": score_rows(dataset.test, test.scores)}


def run_thresholds(run: Path) -> dict:
    """The thresholds and normalisation a run carries (read by export)."""
    return read_json(Path(run) / "thresholds.json")


def score_spec(thresholds: dict):
    """The runtime's ScoreSpec from a run's thresholds.json, so toolkit and runtime label alike."""
    from edgeiad_runtime.postprocess import ScoreSpec

    values = {"image": thresholds["image"]["value"], "pixel": thresholds["pixel"]["value"]}
    return ScoreSpec.from_manifest({"thresholds": values, "normalization": thresholds["normalization"]})
