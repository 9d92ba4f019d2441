"""Metrics checked against sklearn and slow brute-force references written out here."""

from __future__ import annotations

import ast
from bisect import bisect_right
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edgeiad.metrics
from edgeiad.errors import ConfigError, DataError
from edgeiad.metrics import (
    PixelAccumulator,
    aupro,
    average_precision,
    f1_max,
    fpr_at_tpr,
    image_metrics,
    pixel_metrics,
    roc_auc,
)


def sklearn_metrics():
    """sklearn is a dev-only reference: imported lazily so the rest of the file runs without it."""
    return pytest.importorskip("sklearn.metrics")


# ---------------------------------------------------------------- brute-force references


def brute_f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 over every distinct score used as threshold (score >= t), highest threshold on ties."""
    labels = labels.astype(bool)
    best = (-1.0, 0.0)
    for t in np.unique(scores)[::-1]:
        pred = scores >= t
        tp = int(np.sum(pred & labels))
        fp = int(np.sum(pred & ~labels))
        fn = int(np.sum(~pred & labels))
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best[0]:
            best = (f1, float(t))
    return best


def brute_fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, tpr: float) -> float:
    """Minimum FPR over all thresholds whose TPR reaches `tpr`."""
    labels = labels.astype(bool)
    fprs = [
        np.sum((scores >= t) & ~labels) / np.sum(~labels)
        for t in np.unique(scores)
        if np.sum((scores >= t) & labels) / np.sum(labels) >= tpr
    ]
    return float(min(fprs))


def components(mask: np.ndarray, diagonal: bool = True) -> list[list[tuple[int, int]]]:
    """Connected defect regions by flood fill (8-connected unless diagonal=False), independent of scipy."""
    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    if not diagonal:
        steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    seen = np.zeros(mask.shape, dtype=bool)
    regions = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, region = deque([start]), []
        while queue:
            y, x = queue.popleft()
            region.append((y, x))
            for dy, dx in steps:
                ny, nx = y + dy, x + dx
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        regions.append(region)
    return regions


def brute_aupro(masks, maps, fpr_limit: float = 0.3, diagonal: bool = True) -> float:
    """MVTec AUPRO by looping over every distinct threshold and measuring overlaps and FPR directly."""
    maps = [np.asarray(m, dtype=np.float32) for m in maps]
    masks = [np.asarray(m) != 0 for m in masks]
    regions = [(i, r) for i, mask in enumerate(masks) for r in components(mask, diagonal)]
    n_ok = sum(int(np.sum(~mask)) for mask in masks)
    xs, ys = [0.0], [0.0]
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        overlaps = [np.mean([maps[i][p] >= t for p in region]) for i, region in regions]
        fp = sum(int(np.sum((amap >= t) & ~mask)) for amap, mask in zip(maps, masks, strict=True))
        xs.append(fp / n_ok)
        ys.append(float(np.mean(overlaps)))
    xs.append(1.0)
    ys.append(1.0)
    area = 0.0
    for k in range(1, len(xs)):
        if xs[k] > fpr_limit:
            break
        area += 0.5 * (ys[k] + ys[k - 1]) * (xs[k] - xs[k - 1])
    if fpr_limit not in xs:
        k = bisect_right(xs, fpr_limit)
        y_limit = ys[k - 1] + (ys[k] - ys[k - 1]) * (fpr_limit - xs[k - 1]) / (xs[k] - xs[k - 1])
        area += 0.5 * (ys[k - 1] + y_limit) * (fpr_limit - xs[k - 1])
    return area / fpr_limit


# ---------------------------------------------------------------- data


def random_image_data(seed: int, n: int = 120, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels with both classes and scores that separate them partially; rounded scores create ties."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = rng.normal(size=n) + labels * rng.uniform(0.2, 1.5)
    if decimals is not None:
        scores = np.round(scores, decimals)
    return labels, scores


def random_pixel_data(seed: int, n_images: int = 4, size: int = 10) -> tuple[list, list]:
    """Small masks with several blobs (including diagonal-only contacts), one good image, tied scores."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(n_images):
        mask = np.zeros((size, size), dtype=np.uint8)
        if i < n_images - 1:  # the last image is good
            mask[rng.random((size, size)) < 0.12] = 1
            y, x = rng.integers(0, size - 3, 2)
            mask[y, x] = mask[y + 1, x + 1] = mask[y + 2, x + 2] = 1  # a diagonal chain: one region only with 8-conn
            mask[y, x + 1] = mask[y + 1, x] = 0
        amap = np.round(rng.random((size, size)) + 0.6 * mask, 1).astype(np.float32)
        masks.append(mask)
        maps.append(amap)
    return masks, maps


# ---------------------------------------------------------------- image-level


@pytest.mark.parametrize("decimals", [None, 1, 0], ids=["continuous", "ties-1-decimal", "heavy-ties"])
@pytest.mark.parametrize("seed", range(4))
def test_roc_auc_and_ap_match_sklearn(seed: int, decimals: int | None) -> None:
    labels, scores = random_image_data(seed, decimals=decimals)
    assert roc_auc(labels, scores) == pytest.approx(sklearn_metrics().roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(labels, scores) == pytest.approx(
        sklearn_metrics().average_precision_score(labels, scores), abs=1e-12
    )


def test_tiny_hand_computed_case() -> None:
    labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    # 3 of 4 (positive, negative) pairs are ranked correctly.
    assert roc_auc(labels, scores) == pytest.approx(0.75)
    # Thresholds 0.8 (P=1, R=1/2) and 0.35 (P=2/3, R=1): AP = 1/2 * 1 + 1/2 * 2/3.
    assert average_precision(labels, scores) == pytest.approx(5 / 6)
    # Best F1 at 0.35: TP=2, FP=1 -> 4/5; at 0.8: TP=1 -> 2/3.
    assert f1_max(labels, scores) == (pytest.approx(0.8), 0.35)
    assert fpr_at_tpr(labels, scores, 0.95) == pytest.approx(0.5)
    assert fpr_at_tpr(labels, scores, 0.5) == 0.0


def test_tied_pair_counts_half() -> None:
    # Pairs: (0.9 vs both) = 2, (0.5 vs 0.5 tie) = 0.5, (0.5 vs 0.2) = 1 -> 3.5 / 4.
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == 0.875
    assert roc_auc([0, 1], [0.3, 0.3]) == 0.5


def test_accepts_bool_labels_and_integer_scores() -> None:
    assert roc_auc(np.array([False, True, True]), np.array([1, 3, 2])) == 1.0


@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("seed", range(4))
def test_f1_max_and_fpr_at_tpr_match_brute_force(seed: int, decimals: int | None) -> None:
    labels, scores = random_image_data(seed, n=60, decimals=decimals)
    f1, threshold = f1_max(labels, scores)
    expected_f1, expected_threshold = brute_f1_max(labels, scores)
    assert f1 == pytest.approx(expected_f1, abs=1e-15)
    assert threshold == expected_threshold
    assert threshold in scores  # an actual score, no binning
    for tpr in (0.05, 0.5, 0.9, 0.95, 1.0):
        assert fpr_at_tpr(labels, scores, tpr) == pytest.approx(brute_fpr_at_tpr(labels, scores, tpr), abs=1e-15)


def test_image_metrics_keys_and_consistency() -> None:
    labels, scores = random_image_data(7, decimals=1)
    result = image_metrics(labels, scores)
    assert set(result) == {
        "image_auroc",
        "image_ap",
        "image_f1_max",
        "image_f1_threshold",
        "image_fpr_at_95tpr",
        "n_good",
        "n_anomalous",
    }
    assert result["image_auroc"] == roc_auc(labels, scores)
    assert result["image_ap"] == average_precision(labels, scores)
    assert (result["image_f1_max"], result["image_f1_threshold"]) == f1_max(labels, scores)
    assert result["image_fpr_at_95tpr"] == fpr_at_tpr(labels, scores, 0.95)
    assert (result["n_good"], result["n_anomalous"]) == (int(np.sum(labels == 0)), int(np.sum(labels == 1)))


def test_per_defect_auroc_compares_each_type_with_all_good_images() -> None:
    rng = np.random.default_rng(3)
    types = np.array(["good"] * 20 + ["scratch"] * 8 + ["crack"] * 6)
    labels = (types != "good").astype(int)
    scores = np.round(rng.normal(size=types.size) + 0.8 * (types == "scratch") + 2.0 * (types == "crack"), 1)
    per_defect = image_metrics(labels, scores, defect_types=list(types))["per_defect_auroc"]
    assert set(per_defect) == {"scratch", "crack"}
    for defect in ("scratch", "crack"):
        chosen = (types == "good") | (types == defect)
        assert per_defect[defect] == pytest.approx(sklearn_metrics().roc_auc_score(labels[chosen], scores[chosen]))
    assert per_defect["crack"] > per_defect["scratch"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.one_of(st.integers(-3, 3).map(float), st.floats(-1e6, 1e6, width=32))),
        min_size=1,
        max_size=40,
    )
)
def test_roc_auc_property_matches_sklearn_and_flips(pairs: list[tuple[bool, float]]) -> None:
    pairs = [(False, 0.0), (True, 0.0), *pairs]  # both classes always present
    labels = np.array([p[0] for p in pairs])
    scores = np.array([p[1] for p in pairs])
    auc = roc_auc(labels, scores)
    assert auc == pytest.approx(sklearn_metrics().roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc(labels, -scores) == pytest.approx(1.0 - auc, abs=1e-12)
    assert average_precision(labels, scores) == pytest.approx(
        sklearn_metrics().average_precision_score(labels, scores), abs=1e-12
    )


# ---------------------------------------------------------------- pixel-level


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
@pytest.mark.parametrize("seed", range(3))
def test_aupro_matches_brute_force(seed: int, fpr_limit: float) -> None:
    masks, maps = random_pixel_data(seed)
    assert aupro(masks, maps, fpr_limit) == pytest.approx(brute_aupro(masks, maps, fpr_limit), abs=1e-12)


def test_aupro_limit_on_a_curve_point_and_tied_defect_scores() -> None:
    # 10 good pixels scored 0..9 and one defect pixel: FPR steps of 0.1 hit the limit 0.3 exactly.
    mask = np.zeros((1, 11), dtype=bool)
    mask[0, 10] = True
    amap = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 5.5]], dtype=np.float32)
    # Threshold 5.5 is reached only at FPR 0.4 > 0.3, so PRO stays 0 up to the limit.
    assert aupro([mask], [amap], 0.3) == 0.0
    # Limit 0.5: vertical jump (0.4, 0) -> (0.4, 1), then PRO 1 until 0.5.
    assert aupro([mask], [amap], 0.5) == pytest.approx(0.1 / 0.5)
    # Defect tied with the good pixel scored 6: both enter together, a sloped segment (0.3, 0) -> (0.4, 1).
    amap[0, 10] = 6
    assert aupro([mask], [amap], 0.5) == pytest.approx((0.05 + 0.1) / 0.5)
    assert aupro([mask], [amap], 0.35) == pytest.approx(0.5 * 0.5 * 0.05 / 0.35)  # interpolated at the limit
    for limit in (0.3, 0.35, 0.5):
        assert aupro([mask], [amap], limit) == pytest.approx(brute_aupro([mask], [amap], limit), abs=1e-12)


def test_aupro_counts_diagonal_pixels_as_one_region() -> None:
    diagonal = np.eye(3, dtype=np.uint8)  # one 8-connected region of 3 pixels (three 4-connected ones)
    single = np.zeros((3, 3), dtype=np.uint8)
    single[1, 1] = 1
    map_a = np.zeros((3, 3), dtype=np.float32)
    map_a[0, 0], map_a[1, 1], map_a[2, 2], map_a[0, 2] = 0.9, 0.1, 0.1, 0.5  # (0, 2) is a good pixel
    map_b = single * np.float32(0.1)
    # 14 good pixels. Curve: t=0.9 -> (0, (1/3 + 0) / 2), t=0.5 -> (1/14, 1/6), t=0.1 -> (1/14, 1), t=0 -> (1, 1).
    expected = (1 / 14 * 1 / 6 + (0.3 - 1 / 14) * 1.0) / 0.3
    assert aupro([diagonal, single], [map_a, map_b]) == pytest.approx(expected)
    four_connected = brute_aupro([diagonal, single], [map_a, map_b], diagonal=False)
    assert four_connected == pytest.approx((1 / 14 * 1 / 4 + (0.3 - 1 / 14)) / 0.3)
    assert four_connected != pytest.approx(expected)


def test_perfect_map_gives_one_and_constant_map_gives_half_the_limit() -> None:
    masks, _ = random_pixel_data(1)
    perfect = [m.astype(np.float32) for m in masks]
    assert aupro(masks, perfect) == 1.0
    assert pixel_metrics(masks, perfect)["pixel_auroc"] == 1.0
    # A constant map ties every pixel: the only curve point is (1, 1), so the PRO curve is the diagonal
    # from (0, 0) and its normalised area up to the limit L is (L^2 / 2) / L = L / 2 (0.15 for L = 0.3).
    constant = [np.full(m.shape, 0.7, dtype=np.float32) for m in masks]
    assert aupro(masks, constant) == pytest.approx(0.15)
    assert aupro(masks, constant, fpr_limit=0.1) == pytest.approx(0.05)
    assert pixel_metrics(masks, constant)["pixel_auroc"] == 0.5


@pytest.mark.parametrize("seed", range(3))
def test_pixel_metrics_match_sklearn_and_brute_force(seed: int) -> None:
    masks, maps = random_pixel_data(seed, n_images=5, size=16)
    result = pixel_metrics(masks, maps)
    assert set(result) == {"pixel_auroc", "pixel_f1_max", "pixel_f1_threshold", "aupro"}
    flat_labels = np.concatenate([m.ravel() for m in masks]) != 0
    flat_scores = np.concatenate([m.ravel() for m in maps])
    assert result["pixel_auroc"] == pytest.approx(sklearn_metrics().roc_auc_score(flat_labels, flat_scores), abs=1e-12)
    f1, threshold = brute_f1_max(flat_labels, flat_scores)
    assert result["pixel_f1_max"] == pytest.approx(f1, abs=1e-15)
    assert result["pixel_f1_threshold"] == threshold
    assert result["aupro"] == aupro(masks, maps)


def test_pixel_metrics_accept_stacked_arrays_and_varied_sizes() -> None:
    masks, maps = random_pixel_data(2)
    stacked = pixel_metrics(np.stack(masks), np.stack(maps))
    assert stacked == pixel_metrics(masks, maps)
    big_mask = np.zeros((6, 9), dtype=bool)
    big_mask[2:4, 3:7] = True
    big_map = np.linspace(0, 1, 54, dtype=np.float32).reshape(6, 9)
    mixed_masks, mixed_maps = [*masks, big_mask], [*maps, big_map]
    assert aupro(mixed_masks, mixed_maps) == pytest.approx(brute_aupro(mixed_masks, mixed_maps), abs=1e-12)


def random_tied_pixel_data(seed: int) -> tuple[list, list]:
    """Masks and maps of varied sizes with heavy ties, negative scores and signed zeros (one good image)."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(5):
        shape = tuple(rng.integers(5, 14, 2))
        mask = (rng.random(shape) < 0.15) & (i != 4)
        amap = np.round(rng.normal(size=shape) + 1.2 * mask, int(rng.integers(0, 3))).astype(np.float32)
        amap[rng.random(shape) < 0.1] = -0.0
        masks.append(mask)
        maps.append(amap)
    masks[0][0, 0] = True  # at least one defect pixel
    return masks, maps


@pytest.mark.parametrize("budget", [1, 7, 60, 10**9], ids=["one-pixel", "tiny", "small", "in-ram"])
@pytest.mark.parametrize("seed", range(8))
def test_accumulator_matches_brute_force_in_every_bucket_mode(seed: int, budget: int) -> None:
    masks, maps = random_tied_pixel_data(seed)
    accumulator = PixelAccumulator(budget)
    for mask, amap in zip(masks, maps):
        accumulator.add(mask, amap)
    result = accumulator.result()
    spilled = accumulator._neg.spilled > 0
    accumulator.close()
    assert spilled == (budget < 100), "the multi-bucket path must be exercised by the small budgets"
    flat_labels = np.concatenate([m.ravel() for m in masks])
    flat_scores = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
    assert result["pixel_auroc"] == pytest.approx(sklearn_metrics().roc_auc_score(flat_labels, flat_scores), abs=1e-15)
    f1, threshold = brute_f1_max(flat_labels, flat_scores)
    assert (result["pixel_f1_max"], result["pixel_f1_threshold"]) == (pytest.approx(f1, abs=1e-15), threshold)
    for limit in (0.3, 0.05, 1.0):
        expected = brute_aupro(masks, maps, limit)
        assert pixel_metrics(masks, maps, limit, budget)["aupro"] == pytest.approx(expected, abs=1e-12)


def test_one_histogram_bin_larger_than_the_budget_is_read_in_blocks() -> None:
    # 400 pixels share three values that fall in one histogram bin: a bucket of one bin, four times the budget.
    mask = np.zeros((20, 20), dtype=bool)
    mask[3:6, 4:9] = True
    amap = np.full((20, 20), 1.0, dtype=np.float32)
    amap[::3] = np.float32(1.0001)
    amap[3:5, 4:9] = np.float32(1.0002)
    expected = pixel_metrics([mask], [amap])
    assert pixel_metrics([mask], [amap], budget=100) == expected
    assert expected["aupro"] == pytest.approx(brute_aupro([mask], [amap]), abs=1e-12)


def test_float32_keys_preserve_order_and_merge_signed_zeros() -> None:
    values = np.array([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-45, 2.0, np.inf], dtype=np.float32)
    keys = edgeiad.metrics.pixel.float32_keys(values)
    assert np.all(np.diff(keys.astype(np.int64)) >= 0)
    assert keys[3] == keys[4] and np.all(np.diff(np.delete(keys, 3).astype(np.int64)) > 0)
    back = [edgeiad.metrics.pixel._key_value(k) for k in keys]
    assert back == [float(v) for v in values]


def test_accumulator_cleans_its_spill_folder() -> None:
    masks, maps = random_tied_pixel_data(0)
    with PixelAccumulator(budget=5) as accumulator:
        for mask, amap in zip(masks, maps):
            accumulator.add(mask, amap)
        folder = Path(accumulator._folder.name)
        accumulator.result()
        assert any(folder.iterdir())
    assert not folder.exists()


def test_metrics_import_only_numpy_scipy_and_edgeiad() -> None:
    package = Path(edgeiad.metrics.__file__).parent
    imported = set()
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    # tempfile: the pixel accumulator spills scores to a temporary folder beyond its RAM budget.
    assert imported <= {"__future__", "collections", "tempfile", "typing", "numpy", "scipy", "edgeiad"}, imported


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [
        ([], [], "empty input"),
        ([0, 1, 1], [0.1, 0.2], "length mismatch: 3 labels but 2 scores"),
        ([0, 1], [0.1, float("nan")], "NaN"),
        ([1, 1], [0.1, 0.2], "no good images .*AUROC needs both good and anomalous"),
        ([0, 0], [0.1, 0.2], "no anomalous images .*AUROC needs both good and anomalous"),
        ([0, 2], [0.1, 0.2], "labels must be 0 .* or 1"),
        ([[0, 1]], [[0.1, 0.2]], "must be 1-D"),
        ([0, 1], ["a", "b"], "scores must be numeric"),
    ],
)
def test_image_errors(labels: list, scores: list, match: str) -> None:
    for metric in (roc_auc, average_precision, f1_max, fpr_at_tpr, image_metrics):
        with pytest.raises(DataError, match=match):
            metric(labels, scores)


def test_defect_type_errors() -> None:
    with pytest.raises(DataError, match="length mismatch: 3 labels but 2 defect types"):
        image_metrics([0, 1, 1], [0.1, 0.2, 0.3], defect_types=["good", "crack"])
    with pytest.raises(DataError, match="image 1 has defect type 'good' but label 1"):
        image_metrics([0, 1], [0.1, 0.2], defect_types=["good", "good"])


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_option_errors(bad: float) -> None:
    masks, maps = random_pixel_data(0)
    with pytest.raises(ConfigError, match="fpr_limit must be in"):
        aupro(masks, maps, fpr_limit=bad)
    with pytest.raises(ConfigError, match="fpr_limit must be in"):
        pixel_metrics(masks, maps, fpr_limit=bad)
    with pytest.raises(ConfigError, match="tpr must be in"):
        fpr_at_tpr([0, 1], [0.1, 0.2], tpr=bad)


def _pixel_error_cases() -> list:
    good = np.zeros((4, 4), dtype=bool)
    bad = good.copy()
    bad[1, 1] = True
    amap = np.zeros((4, 4), dtype=np.float32)
    nan_map = amap.copy()
    nan_map[2, 2] = np.nan
    return [
        ([], [], "empty input"),
        ([bad, good], [amap], "length mismatch: 2 masks but 1 maps"),
        ([bad], [np.zeros((4, 5))], r"shape mismatch at image 0: mask \(4, 4\) but map \(4, 5\)"),
        ([bad, good], [amap, nan_map], "map 1 contains NaN"),
        ([good, good], [amap, amap], "no anomalous pixels .*AUROC needs both good and anomalous"),
        ([np.ones((4, 4))], [amap], "no good pixels .*AUROC needs both good and anomalous"),
        ([np.ones((1, 4, 4))], [np.ones((1, 4, 4))], "must be 2-D"),
    ]


@pytest.mark.parametrize(("masks", "maps", "match"), _pixel_error_cases())
def test_pixel_errors(masks: list, maps: list, match: str) -> None:
    for metric in (aupro, pixel_metrics):
        with pytest.raises(DataError, match=match):
            metric(masks, maps)
