"""Exact image-level ranking metrics (AUROC, AP, F1-max, FPR@TPR) on numpy arrays, without sklearn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from edgeiad.errors import ConfigError, DataError

__all__ = ["average_precision", "f1_max", "fpr_at_tpr", "image_metrics", "roc_auc"]


class Counts(NamedTuple):
    """Exact ROC-space corners, thresholds descending: positives and negatives scoring >= each threshold."""

    thresholds: np.ndarray
    tps: np.ndarray
    fps: np.ndarray


def ranked_counts(sorted_scores: np.ndarray, sorted_pos: np.ndarray) -> Counts:
    """Curve corners from all scores and the positives' scores, both sorted ascending.

    Ties are grouped: each point is one distinct threshold t with every score >= t counted. Between two
    thresholds holding positives the curve only gains negatives (a horizontal ROC/PRO segment), so only the
    point at each distinct positive score and the corner just before it are kept. Every metric here is
    unchanged by that (areas of horizontal runs, AP steps, F1 peaks and FPR@TPR all sit on kept points), and
    memory stays proportional to the number of positives instead of the number of distinct scores.
    """
    n, n_pos = sorted_scores.size, sorted_pos.size
    levels = np.unique(sorted_pos)[::-1]  # distinct positive scores, best first
    above = np.searchsorted(sorted_scores, levels, side="right")  # index of the first score > level
    all_ge = n - np.searchsorted(sorted_scores, levels, side="left")
    pos_ge = n_pos - np.searchsorted(sorted_pos, levels, side="left")
    pos_gt = n_pos - np.searchsorted(sorted_pos, levels, side="right")
    # Corner before each level: threshold = the smallest score above it, so positives stay at the previous level.
    pre_fps = (n - above) - pos_gt
    main_fps = all_ge - pos_ge
    pre_thr = sorted_scores[np.minimum(above, n - 1)]
    fps = np.stack([pre_fps, main_fps], axis=1).ravel()
    tps = np.stack([pos_gt, pos_ge], axis=1).ravel()
    thresholds = np.stack([pre_thr, levels], axis=1).ravel()
    # The last corner: every sample predicted anomalous.
    fps, tps = np.append(fps, n - n_pos), np.append(tps, n_pos)
    thresholds = np.append(thresholds, sorted_scores[0])
    # Drop corners that add no negatives over the point before them: they coincide with it.
    keep = np.ones(fps.size, dtype=bool)
    keep[0::2] = fps[0::2] > np.concatenate(([0], main_fps))
    return Counts(thresholds[keep], tps[keep], fps[keep])


def require_both_classes(n_pos: int, n_neg: int, what: str = "samples") -> None:
    """Raise DataError naming the missing class when only one class is present."""
    if n_pos == 0:
        raise DataError(f"no anomalous {what} (label 1) given: AUROC needs both good and anomalous {what}")
    if n_neg == 0:
        raise DataError(f"no good {what} (label 0) given: AUROC needs both good and anomalous {what}")


def check_fraction(name: str, value: float) -> float:
    """Validate an option that must lie in (0, 1]."""
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"{name} must be in (0, 1], got {value}")
    return value


def _as_labels_scores(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate image labels/scores and return them as a 1-D bool array and a 1-D float64 array."""
    labels_arr, scores_arr = np.asarray(labels), np.asarray(scores)
    if labels_arr.ndim != 1 or scores_arr.ndim != 1:
        raise DataError(f"labels and scores must be 1-D, got shapes {labels_arr.shape} and {scores_arr.shape}")
    if labels_arr.size == 0 or scores_arr.size == 0:
        raise DataError("empty input: labels and scores must contain at least one image each")
    if labels_arr.size != scores_arr.size:
        raise DataError(f"length mismatch: {labels_arr.size} labels but {scores_arr.size} scores")
    if labels_arr.dtype != bool and not np.isin(labels_arr, (0, 1)).all():
        bad = np.unique(labels_arr[~np.isin(labels_arr, (0, 1))])[:5].tolist()
        raise DataError(f"labels must be 0 (good) or 1 (anomalous), got {bad}")
    try:
        scores_arr = scores_arr.astype(np.float64)
    except (TypeError, ValueError):
        raise DataError(f"scores must be numeric, got dtype {scores_arr.dtype}") from None
    n_bad = int(np.count_nonzero(~np.isfinite(scores_arr)))
    if n_bad:
        raise DataError(f"scores contain {n_bad} NaN or infinite value(s): every image needs a finite score")
    return labels_arr.astype(bool), scores_arr


def _counts_of(labels: np.ndarray, scores: np.ndarray) -> Counts:
    """Exact tie-grouped counts for validated image labels and scores."""
    n_pos = int(labels.sum())
    require_both_classes(n_pos, labels.size - n_pos, "images")
    return ranked_counts(np.sort(scores), np.sort(scores[labels]))


def _image_counts(labels: ArrayLike, scores: ArrayLike) -> Counts:
    """Validate inputs and build the exact tie-grouped counts for image-level metrics."""
    return _counts_of(*_as_labels_scores(labels, scores))


def auroc_from_counts(counts: Counts) -> float:
    """Exact trapezoidal ROC area, as sklearn's roc_auc_score, computed in integers to avoid rounding."""
    tps, fps = counts.tps.astype(np.int64), counts.fps.astype(np.int64)
    n_pos, n_neg = int(tps[-1]), int(fps[-1])
    # Twice the trapezoid area in count units: sum of d(fp) * (tp_prev + tp), starting from (0, 0).
    twice_area = int(fps[0]) * int(tps[0]) + int(np.dot(np.diff(fps), tps[1:] + tps[:-1]))
    return twice_area / (2 * n_pos * n_neg)


def ap_from_counts(counts: Counts) -> float:
    """Step-wise average precision, sum of (R_n - R_{n-1}) * P_n, as sklearn's average_precision_score."""
    tps = counts.tps
    precision = tps / (tps + counts.fps)
    recall_steps = np.diff(tps, prepend=0)
    return float(np.dot(recall_steps, precision) / tps[-1])


def f1_from_counts(counts: Counts) -> tuple[float, float]:
    """Best F1 over distinct thresholds and the (highest) threshold reaching it."""
    n_pos = counts.tps[-1]
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + P).
    f1 = 2.0 * counts.tps / (counts.tps + counts.fps + n_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(counts.thresholds[best])


def fpr_at_tpr_from_counts(counts: Counts, tpr: float) -> float:
    """Lowest FPR among thresholds reaching TPR >= tpr."""
    # FP counts only grow as the threshold falls, so the first threshold reaching the TPR has the lowest FPR.
    first = int(np.argmax(counts.tps / counts.tps[-1] >= tpr))
    return float(counts.fps[first] / counts.fps[-1])


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (higher score = more anomalous), exact with tied scores."""
    return auroc_from_counts(_image_counts(labels, scores))


def average_precision(labels: ArrayLike, scores: ArrayLike) -> float:
    """Average precision with the same definition as sklearn.metrics.average_precision_score."""
    return ap_from_counts(_image_counts(labels, scores))


def f1_max(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """(best F1, threshold) where a sample is predicted anomalous iff score >= threshold."""
    return f1_from_counts(_image_counts(labels, scores))


def fpr_at_tpr(labels: ArrayLike, scores: ArrayLike, tpr: float = 0.95) -> float:
    """Lowest false-positive rate among thresholds whose true-positive rate is at least `tpr`."""
    tpr = check_fraction("tpr", tpr)
    return fpr_at_tpr_from_counts(_image_counts(labels, scores), tpr)


def _per_defect_auroc(labels: np.ndarray, scores: np.ndarray, defect_types: Sequence[str]) -> dict[str, float]:
    """AUROC of each defect type's images against all good images."""
    types = np.asarray([str(t) for t in defect_types])
    if types.size != labels.size:
        raise DataError(f"length mismatch: {labels.size} labels but {types.size} defect types")
    wrong = np.flatnonzero((types == "good") == labels)
    if wrong.size:
        i = int(wrong[0])
        raise DataError(f"image {i} has defect type {str(types[i])!r} but label {int(labels[i])}: 'good' iff label 0")
    good = ~labels
    result = {}
    for defect in sorted(set(types[labels].tolist())):
        chosen = good | (types == defect)
        result[defect] = roc_auc(labels[chosen], scores[chosen])
    return result


def image_metrics(
    labels: ArrayLike, scores: ArrayLike, defect_types: Sequence[str] | None = None
) -> dict[str, float | int | dict[str, float]]:
    """All image-level metrics from one sort; per-defect AUROC when defect types are given."""
    labels_arr, scores_arr = _as_labels_scores(labels, scores)
    counts = _counts_of(labels_arr, scores_arr)
    f1, threshold = f1_from_counts(counts)
    result: dict[str, float | int | dict[str, float]] = {
        "image_auroc": auroc_from_counts(counts),
        "image_ap": ap_from_counts(counts),
        "image_f1_max": f1,
        "image_f1_threshold": threshold,
        "image_fpr_at_95tpr": fpr_at_tpr_from_counts(counts, 0.95),
        "n_good": int(counts.fps[-1]),
        "n_anomalous": int(counts.tps[-1]),
    }
    if defect_types is not None:
        result["per_defect_auroc"] = _per_defect_auroc(labels_arr, scores_arr, defect_types)
    return result
