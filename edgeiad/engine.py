"""Train and evaluate: data → fit → run folder (weights, config, metrics, scores, overlays, log)."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .data import Dataset, check_min_images, iter_batches, load_dataset, load_mask, load_rgb
from .errors import require_torch
from .models import get_model
from .progress import progress_callback
from .runs import StagingDir, load_model, new_run_dir, read_json, run_data_spec, save_model, versions, write_json

OVERLAYS_PER_GROUP = 3


@dataclass
class Scored:
    """Scores of a sample list, plus maps when pixel metrics need them."""

    scores: np.ndarray
    labels: np.ndarray
    defect_types: list[str]
    map_min: float = float("inf")
    map_max: float = float("-inf")
    maps: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)


def score_samples(model, samples, preprocessing, device="cpu", with_masks=False, progress=None, batch_size=16):
    """Score samples with the eager model (bounded memory); keep maps only when masks are wanted."""
    torch = require_torch()
    scored = Scored(np.zeros(0), np.array([s.label for s in samples]), [s.defect_type for s in samples])
    scores = []
    model = model.to(device)
    for batch, chunk in iter_batches(samples, preprocessing, batch_size, progress=progress):
        anomaly_map, pred_score = model.infer(torch.from_numpy(batch).to(device))
        maps = anomaly_map[:, 0].float().cpu().numpy()
        scores.append(pred_score.float().cpu().numpy())
        scored.map_min = min(scored.map_min, float(maps.min()))
        scored.map_max = max(scored.map_max, float(maps.max()))
        if with_masks:
            for sample, anomaly in zip(chunk, maps):
                scored.maps.append(anomaly)
                scored.masks.append(_mask_at(sample, anomaly.shape))
    scored.scores = np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)
    return scored


def _mask_at(sample, shape) -> np.ndarray:
    """Ground truth resized (nearest) to the model's input size, where the maps live."""
    original = load_rgb(sample).shape[:2] if sample.mask_path else shape
    mask = load_mask(sample, original).astype(np.uint8)
    if mask.shape != tuple(shape):
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask.astype(bool)


def compute_metrics(scored: Scored) -> dict:
    """Image metrics (and pixel metrics when maps were kept) from a Scored test set."""
    from .metrics import image_metrics, pixel_metrics

    metrics = image_metrics(scored.labels, scored.scores, scored.defect_types)
    if scored.maps:
        metrics.update(pixel_metrics(scored.masks, scored.maps))
    return metrics


def estimate_thresholds(test: Scored | None, train: Scored, metrics: dict) -> dict:
    """Image/pixel thresholds and the min-max normalisation stored with the run.

    With labelled test images: F1-max thresholds (anomalib's default). Without: mean + 3 std of the
    training scores, the only good-only estimate available before a validation split exists.
    """
    if test is not None and metrics:
        image = {"value": float(metrics["image_f1_threshold"]), "method": "f1_max_on_test"}
        pixel_value = metrics.get("pixel_f1_threshold", image["value"])
        pixel = {
            "value": float(pixel_value),
            "method": "f1_max_on_test" if "pixel_f1_threshold" in metrics else "image",
        }
        scores, low, high = test.scores, test.map_min, test.map_max
    else:
        train_scores = train.scores
        value = float(train_scores.mean() + 3.0 * train_scores.std())
        image = {"value": value, "method": "good_only_mean_3std"}
        pixel = {"value": value, "method": "good_only_mean_3std"}
        # maps of good images only: keep the threshold inside the range so 0.5 still means "at threshold"
        scores, low, high = train_scores, train.map_min, max(train.map_max, value)
    normalization = {
        "method": "minmax_threshold",
        "image_min": float(scores.min()),
        "image_max": float(scores.max()),
        "pixel_min": float(low),
        "pixel_max": float(high),
    }
    return {"image": image, "pixel": pixel, "normalization": normalization}


def write_scores_csv(path: Path, samples, scores) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "defect_type", "score"])
        for sample, score in zip(samples, scores):
            writer.writerow([sample.path, sample.label, sample.defect_type, f"{float(score):.6g}"])


def overlay(rgb: np.ndarray, anomaly_map: np.ndarray, low: float, high: float) -> np.ndarray:
    """Heat map (JET, min-max scaled to the run's range) blended over the image, as BGR for cv2.imwrite."""
    from edgeiad_runtime.postprocess import heat_overlay

    scaled = np.clip((anomaly_map - low) / max(high - low, 1e-12), 0, 1)
    return heat_overlay(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), scaled)


def write_overlays(folder: Path, model, samples, scored: Scored, preprocessing, device) -> list[str]:
    """PNG overlays of the worst-scored good images and best-scored anomalous ones."""
    good = [i for i in np.argsort(-scored.scores) if scored.labels[i] == 0][:OVERLAYS_PER_GROUP]
    bad = [i for i in np.argsort(-scored.scores) if scored.labels[i] != 0][:OVERLAYS_PER_GROUP]
    chosen = [(i, "good") for i in good] + [(i, "anomalous") for i in bad]
    if not chosen:
        return []
    folder.mkdir(exist_ok=True)
    picked = [samples[i] for i, _ in chosen]
    maps = score_samples(model, picked, preprocessing, device, with_masks=True).maps
    written = []
    for (index, group), sample, anomaly in zip(chosen, picked, maps):
        name = f"{group}_{scored.scores[index]:.4g}_{Path(sample.path).stem}.png"
        cv2.imwrite(str(folder / name), overlay(load_rgb(sample), anomaly, scored.map_min, scored.map_max))
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
    data: str | Path,
    out: Path | None = None,
    device: str | None = None,
    overrides: dict | None = None,
    progress: bool = True,
    echo=None,
) -> Path:
    """Fit `model_name` on the good images of `data`, evaluate on its test split, write a run folder."""
    from .models._fitting import resolve_device, seed_everything

    spec = get_model(model_name)
    config = spec.make_config(**(overrides or {}))
    device = resolve_device(device)
    dataset = load_dataset(data)
    check_min_images(dataset, spec.min_train_images, spec.name)
    target = new_run_dir(Path(out) if out else None, spec.name, dataset.name)
    log = RunLog(echo)
    log(f"training {spec.name} on {dataset.name}: {len(dataset.train)} good images, device {device}")
    seed_everything(config.seed)
    preprocessing = config.preprocessing()
    started = time.perf_counter()
    batches = iter_batches(dataset.train, preprocessing, progress="embedding train images" if progress else None)
    with progress_callback("selecting memory bank", progress) as callback:
        model, fit_info = spec.fit()(config, batches, device=device, progress=callback)
    fit_info["fit_s"] = round(time.perf_counter() - started, 3)
    log(f"fit done in {fit_info['fit_s']:.1f} s: {fit_info}")
    with StagingDir(target) as staging:
        save_model(model, staging)
        results = _evaluate_into(staging, model, config, dataset, device, progress, log)
        write_json(staging / "config.json", _config_record(config, dataset, device, fit_info))
        write_json(staging / "metrics.json", results["metrics"])
        write_json(staging / "thresholds.json", results["thresholds"])
        (staging / "train.log").write_text("\n".join(log.lines) + "\n")
    return target


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


def _evaluate_into(folder: Path, model, config, dataset: Dataset, device, progress, log) -> dict:
    """Score train (for good-only thresholds) and test images; write scores.csv and overlays."""
    preprocessing = config.preprocessing()
    desc = "scoring train images" if progress else None
    train = score_samples(model, dataset.train, preprocessing, device, progress=desc)
    metrics: dict = {"train_score_mean": float(train.scores.mean()), "train_score_std": float(train.scores.std())}
    test = None
    if dataset.test:
        desc = "scoring test images" if progress else None
        test = score_samples(model, dataset.test, preprocessing, device, with_masks=dataset.has_masks, progress=desc)
        labels = set(test.labels.tolist())
        if labels == {0, 1}:
            metrics.update(compute_metrics(test))
            log(_metrics_line(metrics))
        else:
            log("test set has only one class: threshold-free metrics need good and anomalous images")
        write_scores_csv(folder / "scores.csv", dataset.test, test.scores)
        metrics["overlays"] = write_overlays(folder / "overlays", model, dataset.test, test, preprocessing, device)
    else:
        log("no test images: metrics skipped, threshold estimated from good images only")
    thresholds = estimate_thresholds(test if "image_auroc" in metrics else None, train, metrics)
    return {"metrics": metrics, "thresholds": thresholds}


def _metrics_line(metrics: dict) -> str:
    keys = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro")
    return "metrics: " + ", ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)


def evaluate_run(run: Path, data: str | Path | None = None, device: str | None = None, progress=True) -> dict:
    """Re-score a run's test set (or another dataset's) and return its metrics; the run is not modified."""
    from .models._fitting import resolve_device

    record, model = load_model(Path(run))
    device = resolve_device(device)
    dataset = load_dataset(data if data is not None else run_data_spec(record))
    if not dataset.test:
        from .errors import DataError

        raise DataError(f"dataset {dataset.name} has no test images: evaluate needs an MVTec-layout test/ folder")
    config = model.config
    desc = "scoring test images" if progress else None
    test = score_samples(model, dataset.test, config.preprocessing(), device, dataset.has_masks, progress=desc)
    return compute_metrics(test)


def run_thresholds(run: Path) -> dict:
    """The thresholds and normalisation a run carries (read by export)."""
    return read_json(Path(run) / "thresholds.json")


def score_spec(thresholds: dict):
    """The runtime's ScoreSpec from a run's thresholds.json, so toolkit and runtime label alike."""
    from edgeiad_runtime.postprocess import ScoreSpec

    norm = thresholds["normalization"]
    return ScoreSpec(
        image_threshold=thresholds["image"]["value"],
        pixel_threshold=thresholds["pixel"]["value"],
        normalize=norm["method"] == "minmax_threshold",
        image_min=norm["image_min"],
        image_max=norm["image_max"],
        pixel_min=norm["pixel_min"],
        pixel_max=norm["pixel_max"],
    )


def predict_images(run: Path, images: list[Path], save_maps: Path | None = None, device: str | None = None):
    """Yield one dict per image (score, raw score, label) scored by the run's eager model."""
    from edgeiad_runtime.preprocess import preprocess, read_image

    from .models._fitting import resolve_device

    torch = require_torch()
    _record, model = load_model(Path(run))
    spec = score_spec(run_thresholds(run))
    device = resolve_device(device)
    model = model.to(device)
    preprocessing = model.config.preprocessing()
    if save_maps is not None:
        Path(save_maps).mkdir(parents=True, exist_ok=True)
    for path in images:
        rgb = read_image(path)
        batch = torch.from_numpy(preprocess(rgb, preprocessing)[None]).to(device)
        anomaly_map, pred_score = model.infer(batch)
        raw = float(pred_score[0])
        if save_maps is not None:
            raw_map = anomaly_map[0, 0].float().cpu().numpy()
            image = overlay(rgb, raw_map, spec.pixel_min, spec.pixel_max)
            cv2.imwrite(str(Path(save_maps) / f"{Path(path).stem}_overlay.png"), image)
        yield {"path": str(path), "score": spec.score(raw), "raw_score": raw, "is_anomalous": spec.is_anomalous(raw)}
