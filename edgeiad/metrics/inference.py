"""Threshold-dependent (inference) metrics: what a line sees once a threshold turns scores into decisions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None when the denominator is 0 (the metric is undefined, not 0)."""
    return None if denominator == 0 else float(numerator / denominator)


def image_inference_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float) -> dict:
    """Confusion matrix, precision, recall, F1, accuracy and FPR of `score >= threshold` against labels."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(scores, dtype=np.float64) >= threshold
    tp, fp = int(np.sum(predicted & labels)), int(np.sum(predicted & ~labels))
    fn, tn = int(np.sum(~predicted & labels)), int(np.sum(~predicted & ~labels))
    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, labels.size),
        "fpr": _ratio(fp, fp + tn),
    }


def connected_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean mask: (label image, count)."""
    return ndimage.label(np.asarray(mask, dtype=bool), structure=_EIGHT_CONNECTED)


def pixel_inference_metrics(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], threshold: float) -> dict:
    """Segmentation quality of `map >= threshold`: IoU, Dice, precision, recall, region recall, false alarms.

    `iou`/`dice`/`precision`/`recall` pool all pixels. `mean_iou` averages per image (seed 000's IoU; a good
    image counts 1 when nothing is flagged, else 0); `defect_mean_iou` averages over defective images only.
    `region_recall` is the share of ground-truth regions with at least one flagged pixel; `good_images_flagged`
    the share of good images with any flagged pixel (a false alarm on the line).
    """
    tp = fp = fn = 0
    ious, defect_ious, regions, hit, good, good_flagged = [], [], 0, 0, 0, 0
    for amap, mask in zip(maps, masks):
        mask = np.asarray(mask, dtype=bool)
        predicted = np.asarray(amap) >= np.float32(threshold)
        inter = int(np.sum(predicted & mask))
        flagged, actual = int(predicted.sum()), int(mask.sum())
        tp, fp, fn = tp + inter, fp + flagged - inter, fn + actual - inter
        if actual == 0:
            good += 1
            good_flagged += int(flagged > 0)
            ious.append(float(flagged == 0))
            continue
        ious.append(inter / (flagged + actual - inter))
        defect_ious.append(ious[-1])
        labelled, count = connected_regions(mask)
        regions += count
        hit += len(set(np.unique(labelled[predicted & mask]).tolist()) - {0})
    return {
        "iou": _ratio(tp, tp + fp + fn),
        "mean_iou": float(np.mean(ious)) if ious else None,
        "defect_mean_iou": float(np.mean(defect_ious)) if defect_ious else None,
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "region_recall": _ratio(hit, regions),
        "good_images_flagged": _ratio(good_flagged, good),
    }
