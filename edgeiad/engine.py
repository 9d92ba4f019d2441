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
    model = model.to(device)

    def infer(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        anomaly_map, pred_score = model.infer(torch.from_numpy(batch).to(device))
        return anomaly_map[:, 0].float().cpu().numpy(), pred_score.float().cpu().numpy()

    return score_with(infer, samples, preprocessing, with_masks, progress, batch_size)


def score_with(infer, samples, preprocessing, with_masks=False, progress=None, batch_size=16) -> Scored:
    """Score samples with `infer(NCHW batch) -> (NxHxW maps, N scores)`: an eager model or an exported one."""
    scored = Scored(np.zeros(0), np.array([s.label for s in samples]), [s.defect_type for s in samples])
    scores = []
    for batch, chunk in iter_batches(samples, preprocessing, batch_size, progress=progress):
        maps, batch_scores = infer(batch)
        scores.append(np.asarray(batch_scores, dtype=np.float32).reshape(len(chunk)))
        scored.map_min = min(scored.map_min, float(maps.min()))
        scored.map_max = max(scored.map_max, float(maps.max()))
        if with_masks:
            for sample, anomaly in zip(chunk, maps):
                scored.maps.append(np.ascontiguousarray(anomaly, dtype=np.float32))
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


def write_scores_csv(path: Path, samples, scores, validation: set[str] = frozenset()) -> None:
    """One row per test image; `split` says whether thresholds were fitted on it (validation) or not (test)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "defect_type", "score", "split"])
        for sample, score in zip(samples, scores):
            split = "validation" if sample.path in validation else "test"
            writer.writerow([sample.path, sample.label, sample.defect_type, f"{float(score):.6g}", split])


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
) -> Path:
    """Fit `model_name` on the good images of `data` (a spec or a loaded Dataset), evaluate, write a run folder."""
    from .models._fitting import resolve_device

    spec = get_model(model_name)
    config = spec.make_config(**(overrides or {}))
    device = resolve_device(device)
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    check_min_images(dataset, spec.min_train_images, spec.name)
    target = new_run_dir(Path(out) if out else None, spec.name, dataset.name)
    log = RunLog(echo)
    log(f"training {spec.name} on {dataset.name}: {len(dataset.train)} good images, device {device}")
    model, fit_info = fit_model(config, dataset, device, progress)
    log(f"fit done in {fit_info['fit_s']:.1f} s: {fit_info}")
    with StagingDir(target) as staging:
        save_model(model, staging)
        results = _evaluate_into(staging, model, config, dataset, device, progress, log, threshold_options)
        write_json(staging / "config.json", _config_record(config, dataset, device, fit_info))
        write_json(staging / "metrics.json", results["metrics"])
        write_json(staging / "thresholds.json", results["thresholds"])
        (staging / "train.log").write_text("\n".join(log.lines) + "\n")
    return target


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
    with progress_callback(spec.fit_label, progress) as callback:
        model, fit_info = spec.fit()(config, batches, device=device, progress=callback)
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

    values = {"image": thresholds["image"]["value"], "pixel": thresholds["pixel"]["value"]}
    return ScoreSpec.from_manifest({"thresholds": values, "normalization": thresholds["normalization"]})


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
