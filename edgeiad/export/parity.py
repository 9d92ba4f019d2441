"""Export-time parity: run the exported artifact through the torch-free runtime and compare with eager."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import Dataset, load_rgb
from ..errors import ArtifactError, require_torch
from .targets import Target

PARITY_TRAIN_IMAGES = 4
MAX_AUROC_IMAGES = 400  # bounds export time on big test sets; a stratified, deterministic subset
DRIFT_IMAGES = 64  # good images whose verdicts are compared when no AUROC can be (no labelled test set)


def parity_samples(dataset: Dataset) -> list:
    """A few training images plus, when labelled, good and anomalous test images."""
    samples = dataset.train[-PARITY_TRAIN_IMAGES:]
    good = [s for s in dataset.test if s.label == 0][:2]
    bad = [s for s in dataset.test if s.label != 0][:2]
    return samples + good + bad


def evenly_spaced(samples: list, limit: int) -> list:
    """At most `limit` samples spread evenly over the list, so every class folder keeps its share (0: all)."""
    if not limit or len(samples) <= limit:
        return list(samples)
    picks = np.linspace(0, len(samples) - 1, limit).round().astype(int)
    return [samples[i] for i in sorted(set(picks.tolist()))]


def auroc_samples(dataset: Dataset) -> list[int]:
    """Indices into dataset.test used for the exported-vs-eager AUROC comparison."""
    count = len(dataset.test)
    if count <= MAX_AUROC_IMAGES:
        return list(range(count))
    return sorted(np.linspace(0, count - 1, MAX_AUROC_IMAGES).round().astype(int).tolist())


def drift_samples(dataset: Dataset) -> tuple[list, str]:
    """Good images for the verdict-drift gate: held-out test/good ones, else training images (in-sample)."""
    good = [s for s in dataset.test if s.label == 0]
    if good:
        return evenly_spaced(good, DRIFT_IMAGES), "test good images (held out from training)"
    return evenly_spaced(dataset.train, DRIFT_IMAGES), "training images (in-sample: no held-out good images)"


def check_parity(
    artifact: Path, model, dataset: Dataset, target: Target, precision: str, eager_scores, accept_drift: bool = False
) -> dict:
    """Compare maps/scores of the artifact and the eager model; raise ArtifactError above tolerance."""
    from edgeiad_runtime import Detector
    from edgeiad_runtime.postprocess import resize_map
    from edgeiad_runtime.preprocess import preprocess

    torch = require_torch()
    backend = "onnxruntime" if target.name == "trt" else target.runtime_backend
    preprocessing = model.config.preprocessing()
    with Detector.load(artifact, backend=backend, threads=None) as detector:
        images = [load_rgb(s) for s in parity_samples(dataset)]
        results = detector.predict_batch(images, color_order="RGB")
        single = detector.predict(images[0], color_order="RGB")
        batch = np.stack([preprocess(image, preprocessing) for image in images])
        with torch.no_grad():
            eager_map, eager_score = model.infer(torch.from_numpy(batch))
        eager_maps = [resize_map(m[0].numpy(), *img.shape[:2]) for m, img in zip(eager_map, images)]
        scale = max(float(eager_map.abs().max()), 1e-12)
        map_error = max(float(np.abs(r.raw_map - m).max()) for r, m in zip(results, eager_maps))
        score_error = float(np.abs(np.array([r.raw_score for r in results]) - eager_score.numpy()).max())
        batch_consistency = abs(single.raw_score - results[0].raw_score)
        report = {
            "images": len(images),
            "backend": detector.backend_name,
            "max_abs_map_error": map_error,
            "max_rel_map_error": map_error / scale,
            "max_abs_score_error": score_error,
            "batch1_vs_batchN_score_diff": float(batch_consistency),
        }
        report.update(_auroc_parity(detector, dataset, eager_scores))
        threshold = detector.manifest["thresholds"]["image"]
        if precision != "fp32" and "auroc_drop" not in report and threshold is not None:
            report["drift"] = _verdict_drift(detector, model, dataset, preprocessing, float(threshold))
    _enforce(report, target, precision, accept_drift)
    return report


def _verdict_drift(detector, model, dataset: Dataset, preprocessing, threshold: float) -> dict:
    """Share of good images whose verdict at the stored image threshold differs between eager and exported."""
    from ..engine import eager_infer, score_with

    samples, source = drift_samples(dataset)
    eager = score_with(eager_infer(model), samples, preprocessing).scores.astype(np.float64)
    exported = exported_scores(detector, samples)
    flipped = int(np.sum((eager >= threshold) != (exported >= threshold)))
    return {
        "images": len(samples),
        "source": source,
        "threshold": threshold,
        "eager_flagged": int(np.sum(eager >= threshold)),
        "exported_flagged": int(np.sum(exported >= threshold)),
        "flipped": flipped,
        "flip_share": flipped / len(samples),
        "max_abs_score_drift": float(np.max(np.abs(exported - eager))),
        "mean_score_drift": float(np.mean(exported - eager)),
    }


def exported_scores(detector, samples: list) -> np.ndarray:
    """Raw image scores of `samples` through the artifact, 16 images per call."""
    scores = []
    for start in range(0, len(samples), 16):
        chunk = [load_rgb(sample) for sample in samples[start : start + 16]]
        scores.extend(r.raw_score for r in detector.predict_batch(chunk, color_order="RGB"))
    return np.asarray(scores, dtype=np.float64)


def _auroc_parity(detector, dataset: Dataset, eager_scores) -> dict:
    from ..metrics import roc_auc

    if eager_scores is None or not dataset.test:
        return {}
    indices = auroc_samples(dataset)
    labels = np.array([dataset.test[i].label for i in indices])
    if len(set(labels.tolist())) < 2:
        return {}
    exported = exported_scores(detector, [dataset.test[i] for i in indices])
    eager = np.asarray(eager_scores)[indices]
    eager_auroc, exported_auroc = roc_auc(labels, eager), roc_auc(labels, exported)
    threshold = detector.manifest["thresholds"]["image"]
    changed = None if threshold is None else int(((eager >= threshold) != (exported >= threshold)).sum())
    return {
        "decisions_changed": changed,  # at the eager-fitted image threshold; the CLI turns it into a verdict
        "decisions_compared": len(indices),
        "auroc_images": len(indices),
        "eager_image_auroc": eager_auroc,
        "exported_image_auroc": exported_auroc,
        "auroc_drop": eager_auroc - exported_auroc,
    }


def _enforce(report: dict, target: Target, precision: str, accept_drift: bool) -> None:
    limit = target.map_tolerance[precision]
    if report["max_rel_map_error"] > limit:
        auroc = f", image AUROC {report['exported_image_auroc']:.4f}" if "exported_image_auroc" in report else ""
        raise ArtifactError(
            f"parity check failed: exported {target.name}/{precision} map differs from eager by "
            f"{report['max_rel_map_error']:.3g} of the map range (limit {limit:g}{auroc}); nothing was written. "
            "Try another precision or report this model/target combination"
        )
    drop, allowed = report.get("auroc_drop", 0.0), target.auroc_tolerance[precision]
    if drop > allowed:
        raise ArtifactError(
            f"parity check failed: exported {target.name}/{precision} image AUROC "
            f"{report['exported_image_auroc']:.4f} vs eager {report['eager_image_auroc']:.4f} "
            f"(drop {drop:.4f} > {allowed:g}); nothing was written. Use a higher precision"
        )
    if "drift" in report:
        _enforce_drift(report["drift"], target, precision, accept_drift)
    report["passed"] = True


def _enforce_drift(drift: dict, target: Target, precision: str, accept_drift: bool) -> None:
    drift["limit"] = target.flip_tolerance[precision]
    drift["accept_drift"] = accept_drift
    if drift["flip_share"] <= drift["limit"]:
        return
    if accept_drift:
        drift["accepted_over_limit"] = True
        return
    raise ArtifactError(
        f"parity check failed: exported {target.name}/{precision} flips the verdict of {drift['flipped']} of "
        f"{drift['images']} good {drift['source'].split(' (')[0]} at the stored image threshold "
        f"({drift['flip_share']:.1%} > limit {drift['limit']:.0%}); nothing was written. Use a higher precision, "
        "or pass --accept-drift and refit the threshold on the artifact with `edgeiad threshold ARTIFACT`"
    )
