"""Exact pixel-level metrics (pixel AUROC, pixel F1-max, AUPRO), streamed image by image in bounded memory.

Scores are compared as float32: each pixel becomes an order-preserving uint32 key of its float32 score, and
a 65,536-bin histogram of the keys' top 16 bits is kept while images are added. Keys (plus region ids for
defect pixels) stay in RAM up to `budget` pixels and spill to a temporary file beyond it. `result` walks the
histogram from the highest score down and cuts it into buckets of at most `budget` pixels; a single bin
holding more is a bucket of its own, read in budget-sized blocks (it has at most 65,536 distinct keys). Each
bucket is reduced to its distinct scores and the curves are accumulated across buckets, so memory is bounded
by the budget and the histogram whatever the number and size of images, and the curve is exact: no binning.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from edgeiad.errors import DataError
from edgeiad.metrics.image import check_fraction, require_both_classes

__all__ = ["PixelAccumulator", "aupro", "float32_keys", "pixel_metrics"]

# MVTec AD counts diagonally touching defect pixels as one region (8-connectivity).
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_BIN_SHIFT = 16  # histogram bins: the top 16 bits of a key
DEFAULT_BUDGET = 1 << 22  # pixels held in RAM (about 160 MB at peak while a bucket is reduced)
_POSITIVE = np.dtype([("key", "<u4"), ("region", "<i4")])


def float32_keys(values: ArrayLike) -> np.ndarray:
    """Order-preserving uint32 keys of float32 values (-0.0 and 0.0 share a key)."""
    bits = (np.asarray(values, dtype=np.float32).ravel() + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 = 0.0
    # Negative floats: flip every bit (their order reverses); others: set the sign bit (they sort above).
    bits ^= (bits >> np.uint32(31)) * np.uint32(0x7FFFFFFF) | np.uint32(0x80000000)
    return bits


def _key_value(key: int) -> float:
    """The float32 score a key stands for, as a Python float."""
    key = int(key)
    bits = key ^ 0x80000000 if key & 0x80000000 else ~key & 0xFFFFFFFF
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


class _Tally(NamedTuple):
    """Distinct keys (ascending) with their good-pixel count, defect-pixel count and region-weight sum."""

    keys: np.ndarray
    neg: np.ndarray
    pos: np.ndarray
    weight: np.ndarray


def _tally(keys: np.ndarray, neg: np.ndarray, pos: np.ndarray, weight: np.ndarray) -> _Tally:
    distinct, inverse = np.unique(keys, return_inverse=True)
    size = distinct.size
    return _Tally(
        distinct,
        np.bincount(inverse, neg, size).astype(np.int64),
        np.bincount(inverse, pos, size).astype(np.int64),
        np.bincount(inverse, weight, size),
    )


def _block_tally(neg_keys: np.ndarray, positives: np.ndarray, region_weights: np.ndarray) -> _Tally:
    """Tally raw records: good pixels' keys and defect pixels' (key, region)."""
    neg_distinct, neg_counts = np.unique(neg_keys, return_counts=True)
    pos_distinct, inverse, pos_counts = np.unique(positives["key"], return_inverse=True, return_counts=True)
    pos_weight = np.bincount(inverse, region_weights[positives["region"]], pos_distinct.size)
    zeros_neg, zeros_pos = np.zeros(neg_distinct.size), np.zeros(pos_distinct.size)
    if pos_distinct.size == 0:
        return _Tally(neg_distinct, neg_counts.astype(np.int64), zeros_neg.astype(np.int64), zeros_neg)
    return _tally(
        np.concatenate((neg_distinct, pos_distinct)),
        np.concatenate((neg_counts, zeros_pos)),
        np.concatenate((zeros_neg, pos_counts)),
        np.concatenate((zeros_neg, pos_weight)),
    )


def _merge(first: _Tally | None, second: _Tally) -> _Tally:
    """Sum two tallies: the smaller one's keys are looked up in, or inserted into, the larger one."""
    if first is None:
        return second
    big, small = (first, second) if first.keys.size >= second.keys.size else (second, first)
    at = np.searchsorted(big.keys, small.keys)
    found = at < big.keys.size
    found[found] = big.keys[at[found]] == small.keys[found]
    summed = [big.keys, *(field.copy() for field in big[1:])]
    for total, part in zip(summed[1:], small[1:], strict=True):
        total[at[found]] += part[found]
    new = ~found
    return _Tally(*(np.insert(total, at[new], part[new]) for total, part in zip(summed, small, strict=True)))


class _Stream:
    """Append-only records: in RAM until spilled to a file, then read back in blocks."""

    def __init__(self, dtype: np.dtype, path: str) -> None:
        self.dtype, self.path = np.dtype(dtype), path
        self.chunks: list[np.ndarray] = []
        self.spilled = 0

    def spill(self) -> None:
        with open(self.path, "ab") as handle:
            for chunk in self.chunks:
                chunk.tofile(handle)
                self.spilled += chunk.size
        self.chunks = []

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        if self.spilled:
            data = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.spilled,))
            for start in range(0, self.spilled, size):
                yield np.array(data[start : start + size])
            del data
        yield from self.chunks


class _Walk:
    """Curve state carried from bucket to bucket, highest scores first: AUROC, best F1, PRO area."""

    def __init__(self, n_pos: int, n_neg: int, n_regions: int, fpr_limit: float) -> None:
        self.n_pos, self.n_neg, self.n_regions, self.limit = n_pos, n_neg, n_regions, fpr_limit
        self.tp = self.fp = self.twice_area = 0
        self.weight = 0.0
        self.best_f1, self.best_threshold = -1.0, float("nan")
        self.x = self.y = self.pro_area = 0.0
        self.pro_done = False

    def step(self, tally: _Tally) -> None:
        """Add one bucket's distinct scores (all below those already walked)."""
        tps = self.tp + np.cumsum(tally.pos[::-1])
        fps = self.fp + np.cumsum(tally.neg[::-1])
        prev_tps, prev_fps = np.concatenate(([self.tp], tps[:-1])), np.concatenate(([self.fp], fps[:-1]))
        # Twice the trapezoid ROC area in count units, exact in integers (as sklearn's roc_auc_score).
        self.twice_area += int(np.dot(fps - prev_fps, tps + prev_tps))
        f1 = 2.0 * tps / (tps + fps + self.n_pos)
        best = int(np.argmax(f1))
        if f1[best] > self.best_f1:  # strictly better: ties keep the higher threshold
            self.best_f1, self.best_threshold = float(f1[best]), _key_value(tally.keys[::-1][best])
        # Mean overlap over regions = sum over covered defect pixels of 1 / (area of its region) / n_regions.
        covered = self.weight + np.cumsum(tally.weight[::-1])
        pro = covered / self.n_regions
        pro[tps == self.n_pos] = 1.0  # summation rounding must not move the overlap off 1 at full coverage
        np.clip(pro, None, 1.0, out=pro)
        if not self.pro_done:
            self._pro_step(fps / self.n_neg, pro)
        self.tp, self.fp, self.weight = int(tps[-1]), int(fps[-1]), float(covered[-1])

    def _pro_step(self, fpr: np.ndarray, pro: np.ndarray) -> None:
        """Trapezoids up to the FPR limit, the last one closed at the limit by interpolation (MVTec AD)."""
        x, y = np.concatenate(([self.x], fpr)), np.concatenate(([self.y], pro))
        inside = int(np.searchsorted(fpr, self.limit, side="right"))  # points with FPR <= limit
        self.pro_area += float(np.sum(0.5 * (y[1 : inside + 1] + y[:inside]) * np.diff(x[: inside + 1])))
        if inside < fpr.size:
            x0, x1, y0, y1 = x[inside], x[inside + 1], y[inside], y[inside + 1]
            if x0 < self.limit:
                y_limit = y0 + (y1 - y0) * (self.limit - x0) / (x1 - x0)
                self.pro_area += 0.5 * (y0 + y_limit) * (self.limit - x0)
            self.pro_done = True
        self.x, self.y = float(x[-1]), float(y[-1])

    def metrics(self) -> dict[str, float]:
        return {
            "pixel_auroc": self.twice_area / (2 * self.n_pos * self.n_neg),
            "pixel_f1_max": self.best_f1,
            "pixel_f1_threshold": self.best_threshold,
            "aupro": self.pro_area / self.limit,
        }


class PixelAccumulator:
    """Exact pixel AUROC / F1-max / AUPRO over images added one at a time, in bounded memory (see module doc).

    `add(mask, map)` takes one image's ground truth and its map at the same size; defect regions are its mask's
    8-connected components, and FPR counts every good pixel of every image, as the MVTec AD reference does.
    """

    def __init__(self, budget: int = DEFAULT_BUDGET, spill_dir: str | None = None) -> None:
        self.budget = max(int(budget), 1)
        self._folder = tempfile.TemporaryDirectory(prefix="edgeiad-pixels-", dir=spill_dir)
        self._neg = _Stream(np.uint32, f"{self._folder.name}/good.u4")
        self._pos = _Stream(_POSITIVE, f"{self._folder.name}/defect.rec")
        self._hist = np.zeros((2, 1 << (32 - _BIN_SHIFT)), dtype=np.int64)  # rows: good, defect pixels
        self._areas: list[np.ndarray] = []
        self.images = self._in_ram = self._regions = 0

    def add(self, mask: ArrayLike, anomaly_map: ArrayLike) -> None:
        """Add one image: a HxW mask (non-zero = defect) and a HxW map of finite scores."""
        mask, anomaly_map = np.asarray(mask), np.asarray(anomaly_map)
        index, self.images = self.images, self.images + 1
        if mask.shape != anomaly_map.shape:
            raise DataError(f"shape mismatch at image {index}: mask {mask.shape} but map {anomaly_map.shape}")
        if mask.ndim != 2:
            raise DataError(f"image {index}: masks and maps must be 2-D (HxW), got shape {mask.shape}")
        if not np.isfinite(anomaly_map).all():
            raise DataError(f"map {index} contains NaN or infinite values: every pixel needs a finite score")
        keys = float32_keys(anomaly_map)
        regions, count = ndimage.label(mask != 0, structure=_EIGHT_CONNECTED)
        regions = regions.ravel()
        defect = regions > 0
        positives = np.empty(int(defect.sum()), dtype=_POSITIVE)
        positives["key"] = keys[defect]
        # Region ids are made global (0-based) so regions of different images never merge.
        positives["region"] = regions[defect] + (self._regions - 1)
        self._areas.append(np.bincount(regions, minlength=count + 1)[1:])
        self._regions += count
        self._store(keys[~defect], positives)

    def _store(self, neg_keys: np.ndarray, positives: np.ndarray) -> None:
        for row, keys in enumerate((neg_keys, positives["key"])):
            self._hist[row] += np.bincount(keys >> np.uint32(_BIN_SHIFT), minlength=self._hist.shape[1])
        self._neg.chunks.append(neg_keys)
        self._pos.chunks.append(positives)
        self._in_ram += neg_keys.size + positives.size
        if self._in_ram > self.budget:
            self._neg.spill()
            self._pos.spill()
            self._in_ram = 0

    def result(self, fpr_limit: float = 0.3) -> dict[str, float]:
        """Pixel AUROC, pixel F1-max with its threshold (a float32 score), and AUPRO up to `fpr_limit`."""
        fpr_limit = check_fraction("fpr_limit", fpr_limit)
        n_neg, n_pos = (int(total) for total in self._hist.sum(axis=1))
        require_both_classes(n_pos, n_neg, "pixels")
        weights = 1.0 / np.concatenate(self._areas).astype(np.float64)
        walk = _Walk(n_pos, n_neg, self._regions, fpr_limit)
        for tally in self._bucket_tallies(weights):
            walk.step(tally)
        return walk.metrics()

    def _bucket_tallies(self, weights: np.ndarray) -> Iterator[_Tally]:
        """One tally per bucket, highest scores first."""
        if not (self._neg.spilled or self._pos.spilled):
            yield _block_tally(np.concatenate(self._neg.chunks), np.concatenate(self._pos.chunks), weights)
            return
        self._neg.spill()
        self._pos.spill()
        self._in_ram = 0
        bucket_of = self._plan()
        buckets = int(bucket_of.max()) + 1
        folder = self._folder.name
        neg = _partition(self._neg, bucket_of, self._hist[0], buckets, self.budget, f"{folder}/good.part")
        pos = _partition(self._pos, bucket_of, self._hist[1], buckets, self.budget, f"{folder}/defect.part")
        empty = np.zeros(0, dtype=_POSITIVE)
        for bucket in range(buckets):
            tally = None
            for block in neg.blocks(bucket, self.budget):
                tally = _merge(tally, _block_tally(block, empty, weights))
            for block in pos.blocks(bucket, self.budget):
                tally = _merge(tally, _block_tally(np.zeros(0, np.uint32), block, weights))
            if tally is not None:
                yield tally

    def _plan(self) -> np.ndarray:
        """Bucket index of every histogram bin: consecutive bins (highest first) of at most `budget` pixels."""
        counts = self._hist.sum(axis=0)
        # uint16 (at most one bucket per bin) lets the partition's stable argsort run as a radix sort.
        bucket_of = np.zeros(counts.size, dtype=np.uint16)
        bucket, filled = 0, 0
        for bin_index in range(counts.size - 1, -1, -1):
            count = int(counts[bin_index])
            if count and filled and filled + count > self.budget:
                bucket, filled = bucket + 1, 0
            bucket_of[bin_index] = bucket
            filled += count
        # Bins were numbered from the top: bucket 0 holds the highest scores.
        return bucket_of

    def close(self) -> None:
        """Delete the spill files now instead of when the accumulator is garbage-collected."""
        self._folder.cleanup()

    def __enter__(self) -> PixelAccumulator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _Partition:
    """A stream's records rewritten bucket after bucket (a counting sort on the bucket index) in one file."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray) -> None:
        self.data, self.offsets = data, offsets

    def blocks(self, bucket: int, size: int) -> Iterator[np.ndarray]:
        start, stop = int(self.offsets[bucket]), int(self.offsets[bucket + 1])
        for begin in range(start, stop, size):
            yield np.array(self.data[begin : min(begin + size, stop)])


def _partition(stream: _Stream, bucket_of, hist, buckets: int, size: int, path: str) -> _Partition:
    """Rewrite `stream` grouped by bucket; `hist` is its per-bin count, so the bucket sizes are known upfront."""
    counts = np.bincount(bucket_of, weights=hist, minlength=buckets).astype(np.int64)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    if offsets[-1] == 0:
        return _Partition(np.zeros(0, dtype=stream.dtype), offsets)
    data = np.memmap(path, dtype=stream.dtype, mode="w+", shape=(int(offsets[-1]),))
    written = offsets[:-1].copy()
    for block in stream.blocks(size):
        index = bucket_of[(block["key"] if block.dtype.names else block) >> np.uint32(_BIN_SHIFT)]
        order = np.argsort(index, kind="stable")
        per_bucket = np.bincount(index, minlength=buckets)
        start = 0
        for bucket in np.flatnonzero(per_bucket):
            count = int(per_bucket[bucket])
            data[written[bucket] : written[bucket] + count] = block[order[start : start + count]]
            written[bucket] += count
            start += count
    return _Partition(data, offsets)


def _accumulate(masks: Sequence[ArrayLike], maps: Sequence[ArrayLike], budget: int) -> PixelAccumulator:
    if len(masks) == 0 or len(maps) == 0:
        raise DataError("empty input: masks and maps must contain at least one image each")
    if len(masks) != len(maps):
        raise DataError(f"length mismatch: {len(masks)} masks but {len(maps)} maps")
    accumulator = PixelAccumulator(budget)
    for mask, anomaly_map in zip(masks, maps, strict=True):
        accumulator.add(mask, anomaly_map)
    return accumulator


def aupro(
    masks: Sequence[ArrayLike], maps: Sequence[ArrayLike], fpr_limit: float = 0.3, budget: int = DEFAULT_BUDGET
) -> float:
    """Area under the per-region-overlap curve up to `fpr_limit`, divided by it (1.0 = perfect)."""
    return pixel_metrics(masks, maps, fpr_limit, budget)["aupro"]


def pixel_metrics(
    masks: Sequence[ArrayLike], maps: Sequence[ArrayLike], fpr_limit: float = 0.3, budget: int = DEFAULT_BUDGET
) -> dict[str, float]:
    """Pixel AUROC, pixel F1-max (with its threshold) and AUPRO of maps against same-size masks."""
    fpr_limit = check_fraction("fpr_limit", fpr_limit)
    with _accumulate(masks, maps, budget) as accumulator:
        return accumulator.result(fpr_limit)
