"""Export-time parity: run the exported artifact through the torch-free runtime and compare with eager."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import Dataset, load_rgb
from ..errors import ArtifactError, require_torch
from .targets import Target

PARITY_TRAIN_IMAGES = 4
MAX_AUROC_IMAGES = 400  # bounds export time on big test sets; a stratified, deterministic subset


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


def check_parity(artifact: Path, model, dataset: Dataset, target: Target, precision: str, eager_scores) -> dict:
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
    _enforce(report, target, precision)
    return report


def _auroc_parity(detector, dataset: Dataset, eager_scores) -> dict:
    from ..metrics import roc_auc

    if eager_scores is None or not dataset.test:
        return {}
    indices = auroc_samples(dataset)
    labels = np.array([dataset.test[i].label for i in indices])
    if len(set(labels.tolist())) < 2:
        return {}
    exported = []
    for start in range(0, len(indices), 16):
        chunk = [load_rgb(dataset.test[i]) for i in indices[start : start + 16]]
        exported.extend(r.raw_score for r in detector.predict_batch(chunk, color_order="RGB"))
    eager = np.asarray(eager_scores)[indices]
    eager_auroc, exported_auroc = roc_auc(labels, eager), roc_auc(labels, np.array(exported))
    threshold = detector.manifest["thresholds"]["image"]
    changed = None if threshold is None else int(((eager >= threshold) != (np.array(exported) >= threshold)).sum())
    return {
        "decisions_changed": changed,  # at the eager-fitted image threshold; the CLI turns it into a verdict
        "decisions_compared": len(indices),
        "auroc_images": len(indices),
        "eager_image_auroc": eager_auroc,
        "exported_image_auroc": exported_auroc,
        "auroc_drop": eager_auroc - exported_auroc,
    }


def _enforce(report: dict, target: Target, precision: str) -> None:
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
    report["passed"] = True
