"""Threshold estimators (seed 000): iou, f1, youden, fpr and good-only, at image and pixel level.

Every estimator is a pure function of validation scores (and maps/masks for pixels). A value is anomalous
when `score >= threshold`. Image thresholds sit halfway between two neighbouring validation scores, so a
tiny numeric drift in an exported model cannot flip a validation image that sat exactly on the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeiad.errors import ConfigError, DataError

METHODS = ("iou", "f1", "youden", "fpr", "good-only")
IMAGE_METHODS = ("f1", "youden", "fpr", "good-only")  # IoU is a segmentation measure: pixel level only
DEFAULT_IMAGE_METHOD = "f1"
DEFAULT_PIXEL_METHOD = "iou"
PIXEL_LEVELS = 1024  # candidate pixel thresholds on large validation sets: quantiles of the maps


def check_method(method: str, level: str) -> str:
    """Return `method` if it is known for `level` ('image' or 'pixel'), else raise ConfigError."""
    allowed = IMAGE_METHODS if level == "image" else METHODS
    if method not in allowed:
        raise ConfigError(f"{level} threshold method {method!r} is unknown: use one of {', '.join(allowed)}")
    return method


def _midpoint_below(values: np.ndarray, threshold: float) -> float:
    """Halfway between `threshold` and the largest value below it (the threshold itself if none)."""
    below = values[values < threshold]
    return float(threshold) if below.size == 0 else float((threshold + below.max()) / 2.0)


def _lowest_with_fpr(good: np.ndarray, target_fpr: float) -> float:
    """Lowest threshold flagging at most `target_fpr` of `good` (above every value when none may be flagged)."""
    if not 0.0 <= target_fpr < 1.0:
        raise ConfigError(f"--target-fpr {target_fpr} is invalid: use a fraction in [0, 1)")
    if good.size == 0:
        raise DataError("the fpr threshold needs good validation images: add good test images or use good-only")
    levels = np.unique(good)
    flagged = good.size - np.searchsorted(np.sort(good), levels, side="left")  # count of good >= each level
    allowed = int(np.floor(target_fpr * good.size + 1e-9))
    ok = levels[flagged <= allowed]
    if ok.size == 0:
        return float(np.nextafter(np.float32(good.max()), np.float32(np.inf)))
    return _midpoint_below(good, float(ok.min()))


def _good_only(good: np.ndarray, sigmas: float) -> float:
    if good.size == 0:
        raise DataError("the good-only threshold needs scores of good images, and none were given")
    return float(good.mean() + sigmas * good.std())


def image_threshold(
    method: str, labels: np.ndarray, scores: np.ndarray, target_fpr: float = 0.01, sigmas: float = 3.0
) -> float:
    """Image threshold from validation `scores` (labels 0 good / 1 anomalous) by `method`."""
    check_method(method, "image")
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    good = scores[~labels]
    if method == "fpr":
        return _lowest_with_fpr(good, target_fpr)
    if method == "good-only":
        return _good_only(good, sigmas)
    if labels.all() or not labels.any():
        raise DataError(f"the {method} threshold needs good and anomalous validation images: use good-only")
    levels = np.unique(scores)
    order = np.sort(scores)
    positives = np.sort(scores[labels])
    predicted = scores.size - np.searchsorted(order, levels, side="left")
    tp = positives.size - np.searchsorted(positives, levels, side="left")
    fp = predicted - tp
    if method == "f1":
        objective = 2 * tp / np.maximum(predicted + positives.size, 1)
    else:  # youden
        objective = tp / positives.size - fp / max(good.size, 1)
    best = float(levels[int(np.argmax(objective))])
    return _midpoint_below(scores, best)


def _pixel_candidates(maps: Sequence[np.ndarray]) -> np.ndarray:
    """Exact (midpoints between distinct values) when there are few values, else PIXEL_LEVELS quantiles."""
    values = np.unique(np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in maps]))
    if values.size > 4 * PIXEL_LEVELS:
        values = np.unique(np.quantile(values, np.linspace(0.0, 1.0, PIXEL_LEVELS)).astype(np.float32))
    return np.unique(np.concatenate([values[:1], (values[:-1] + values[1:]) / np.float32(2.0)]))


def pixel_counts(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], candidates: np.ndarray):
    """Per image and candidate threshold: defect pixels flagged (tp), good pixels flagged (fp), totals."""
    n, c = len(maps), candidates.size
    tp, fp = np.zeros((n, c), np.int64), np.zeros((n, c), np.int64)
    positives, negatives = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for i, (amap, mask) in enumerate(zip(maps, masks)):
        amap, mask = np.asarray(amap, dtype=np.float32), np.asarray(mask, dtype=bool)
        if amap.shape != mask.shape:
            raise DataError(f"validation image {i}: map {amap.shape} and mask {mask.shape} differ in size")
        for values, out in ((amap[mask], tp), (amap[~mask], fp)):
            # values >= candidates[j] for j < index: a reversed cumulative count gives "flagged at j".
            index = np.searchsorted(candidates, values, side="right")
            out[i] = np.cumsum(np.bincount(index, minlength=c + 1)[::-1])[::-1][1:]
        positives[i], negatives[i] = int(mask.sum()), int(mask.size - mask.sum())
    return tp, fp, positives, negatives


def pixel_threshold(
    method: str,
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    target_fpr: float = 0.01,
    sigmas: float = 3.0,
) -> float:
    """Pixel threshold from validation maps and ground-truth masks (same size) by `method`."""
    check_method(method, "pixel")
    if not maps:
        raise DataError("pixel thresholds need validation maps, and none were given")
    good_pixels = [np.asarray(m, np.float32)[~np.asarray(k, bool)] for m, k in zip(maps, masks) if not np.any(k)]
    if method in ("fpr", "good-only"):
        good = np.concatenate(good_pixels) if good_pixels else np.zeros(0, np.float32)
        return _lowest_with_fpr(good, target_fpr) if method == "fpr" else _good_only(good.astype(np.float64), sigmas)
    candidates = _pixel_candidates(maps)
    tp, fp, positives, negatives = pixel_counts(maps, masks, candidates)
    defective = positives > 0
    if not defective.any():
        raise DataError(f"the pixel {method} threshold needs anomalous validation images with masks: use good-only")
    if method == "iou":
        # Mean per-image IoU, |pred ∩ gt| / |pred ∪ gt| = tp / (positives + fp). A good image scores 1 when
        # nothing is flagged and 0 otherwise, so false alarms on good parts count against a threshold.
        union = positives[:, None] + fp
        objective = np.where(union > 0, tp / np.maximum(union, 1), 1.0).mean(axis=0)
    elif method == "f1":
        tps, fps, pos = tp.sum(0), fp.sum(0), positives.sum()
        objective = 2 * tps / np.maximum(2 * tps + fps + (pos - tps), 1)
    else:  # youden
        objective = tp.sum(0) / positives.sum() - fp.sum(0) / max(negatives.sum(), 1)
    return float(candidates[_middle_of_best(objective)])


def _middle_of_best(objective: np.ndarray) -> int:
    """Index of the middle candidate among those reaching the best value: the widest margin on both sides."""
    best = np.flatnonzero(objective >= objective.max() - 1e-12)
    return int(best[len(best) // 2])
