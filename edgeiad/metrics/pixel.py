"""Exact pixel-level metrics (pixel AUROC, pixel F1-max, AUPRO) from one sort of all pixel scores.

Maps are compared at float32 precision: all scores are concatenated into one float32 array so that a few
hundred 512x512 maps fit in memory, and the returned F1 threshold is one of those float32 values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from edgeiad.errors import DataError
from edgeiad.metrics.image import (
    Counts,
    auroc_from_counts,
    check_fraction,
    f1_from_counts,
    ranked_counts,
    require_both_classes,
)

__all__ = ["aupro", "pixel_metrics"]

# MVTec AD counts diagonally touching defect pixels as one region (8-connectivity).
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class _Pixels(NamedTuple):
    """All pixel scores plus the defect pixels' scores and region ids, compactly typed."""

    scores: np.ndarray  # float32, every pixel of every image
    pos_scores: np.ndarray  # float32, defect pixels only
    pos_regions: np.ndarray  # int32 index into region_weights, defect pixels only
    region_weights: np.ndarray  # float64, 1 / region area, one entry per connected defect region


class _PixelCurve(NamedTuple):
    """Tie-grouped counts plus the mean per-region overlap at each of their thresholds."""

    counts: Counts
    pro: np.ndarray  # float64, same length as counts.thresholds


def _checked_pairs(masks: Sequence[ArrayLike], maps: Sequence[ArrayLike]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validate masks/maps pairwise (count, 2-D shape, finite scores) without copying the maps."""
    if len(masks) == 0 or len(maps) == 0:
        raise DataError("empty input: masks and maps must contain at least one image each")
    if len(masks) != len(maps):
        raise DataError(f"length mismatch: {len(masks)} masks but {len(maps)} maps")
    pairs = []
    for i, (mask, amap) in enumerate(zip(masks, maps, strict=True)):
        mask, amap = np.asarray(mask), np.asarray(amap)
        if mask.shape != amap.shape:
            raise DataError(f"shape mismatch at image {i}: mask {mask.shape} but map {amap.shape}")
        if mask.ndim != 2:
            raise DataError(f"image {i}: masks and maps must be 2-D (HxW), got shape {mask.shape}")
        if not np.isfinite(amap).all():
            raise DataError(f"map {i} contains NaN or infinite values: every pixel needs a finite score")
        pairs.append((mask, amap))
    return pairs


def _gather(masks: Sequence[ArrayLike], maps: Sequence[ArrayLike]) -> _Pixels:
    """Concatenate scores as float32 and label 8-connected defect regions per image."""
    pairs = _checked_pairs(masks, maps)
    scores = np.empty(sum(amap.size for _, amap in pairs), dtype=np.float32)
    pos_scores, pos_regions, areas = [], [], []
    offset = n_regions = 0
    for mask, amap in pairs:
        regions, n = ndimage.label(mask != 0, structure=_EIGHT_CONNECTED)
        scores[offset : offset + amap.size] = amap.ravel()
        offset += amap.size
        if n:
            defect = regions > 0
            pos_scores.append(amap[defect].astype(np.float32, copy=False))
            # Region ids are made global (0-based) so regions of different images never merge.
            pos_regions.append(regions[defect] + (n_regions - 1))
            areas.append(np.bincount(regions.ravel(), minlength=n + 1)[1:])
            n_regions += n
    require_both_classes(sum(s.size for s in pos_scores), scores.size - sum(s.size for s in pos_scores), "pixels")
    return _Pixels(
        scores,
        np.concatenate(pos_scores),
        np.concatenate(pos_regions),
        1.0 / np.concatenate(areas).astype(np.float64),
    )


def _pixel_curve(masks: Sequence[ArrayLike], maps: Sequence[ArrayLike]) -> _PixelCurve:
    """Sort all pixel scores once and read TP, FP and PRO off at every curve corner (ties grouped)."""
    scores, pos_scores, pos_regions, region_weights = _gather(masks, maps)
    scores.sort()  # in place: the float32 copy is ours, and sorting values needs no int64 index array
    order = np.argsort(pos_scores)  # defect pixels only, far fewer than all pixels
    counts = ranked_counts(scores, pos_scores[order])
    del scores, pos_scores
    # Mean overlap over regions = sum over covered defect pixels of 1 / (area of its region) / n_regions.
    # Accumulating those weights from the top score down gives the overlap sum for the k best defect pixels.
    top_weight = np.concatenate(([0.0], np.cumsum(region_weights[pos_regions[order[::-1]]])))
    pro = top_weight[counts.tps] / region_weights.size
    # Summation rounding must not move the overlap off 1 once every defect pixel is covered.
    pro[counts.tps == pos_regions.size] = 1.0
    np.clip(pro, None, 1.0, out=pro)
    return _PixelCurve(counts, pro)


def _pro_area(curve: _PixelCurve, fpr_limit: float) -> float:
    """Normalised area under the PRO curve for FPR in [0, fpr_limit], as the MVTec AD reference code."""
    fps = curve.counts.fps
    fpr = fps / fps[-1]
    # Only the points up to the first one past the limit matter; FPR = 1 at the last threshold bounds this.
    stop = int(np.searchsorted(fpr, fpr_limit, side="right")) + 1
    # The curve starts at (0, 0) above the highest score and ends at (1, 1) below the lowest.
    x = np.concatenate(([0.0], fpr[:stop], [1.0]))
    y = np.concatenate(([0.0], curve.pro[:stop], [1.0]))
    inside = int(np.searchsorted(x, fpr_limit, side="right"))  # points with FPR <= limit
    area = float(np.sum(0.5 * (y[1:inside] + y[: inside - 1]) * np.diff(x[:inside])))
    if x[inside - 1] < fpr_limit:
        # Close the last trapezoid at exactly the limit by interpolating between its neighbours.
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_limit) * (fpr_limit - x0)
    return float(area / fpr_limit)


def aupro(masks: Sequence[ArrayLike], maps: Sequence[ArrayLike], fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to `fpr_limit`, divided by it (1.0 = perfect)."""
    fpr_limit = check_fraction("fpr_limit", fpr_limit)
    return _pro_area(_pixel_curve(masks, maps), fpr_limit)


def pixel_metrics(masks: Sequence[ArrayLike], maps: Sequence[ArrayLike], fpr_limit: float = 0.3) -> dict[str, float]:
    """Pixel AUROC, pixel F1-max (with its threshold) and AUPRO, all from a single sort."""
    fpr_limit = check_fraction("fpr_limit", fpr_limit)
    curve = _pixel_curve(masks, maps)
    f1, threshold = f1_from_counts(curve.counts)
    return {
        "pixel_auroc": auroc_from_counts(curve.counts),
        "pixel_f1_max": f1,
        "pixel_f1_threshold": threshold,
        "aupro": _pro_area(curve, fpr_limit),
    }
