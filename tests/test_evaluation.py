"""Evaluation at the ground truth's resolution, and score files that read back exactly."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from edgeiad_runtime.postprocess import resize_map

from edgeiad.data import Sample
from edgeiad.engine import compute_metrics, score_with, write_scores_csv
from edgeiad.metrics import pixel_metrics

from .test_metrics import brute_aupro, sklearn_metrics

MODEL = 8  # model input size of the fake model: maps are 8x8, images and masks are not


def _parts(tmp_path, count: int = 6) -> list[Sample]:
    """Images of 21x34 pixels (one good, the rest with a small rectangle masked)."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        image = rng.integers(0, 255, (21, 34, 3), dtype=np.uint8)
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), image)
        if i == 0:
            samples.append(Sample(str(path), 0, "good"))
            continue
        mask = np.zeros((21, 34), np.uint8)
        y, x = rng.integers(0, 15, 2)
        mask[y : y + 3, x : x + 1 + i] = 255
        mask_path = tmp_path / f"{i}_mask.png"
        cv2.imwrite(str(mask_path), mask)
        samples.append(Sample(str(path), 1, "scratch", str(mask_path)))
    return samples


def _fake_infer(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps at the model's size made from the input itself, so they differ per image; ties from rounding."""
    maps = np.round(batch.mean(axis=1)[:, ::4, ::4][:, :MODEL, :MODEL], 1).astype(np.float32)
    return maps, maps.max(axis=(1, 2))


def _preprocessing():
    from edgeiad_runtime.preprocess import Preprocessing

    return Preprocessing(height=MODEL * 4, width=MODEL * 4)


def test_pixel_metrics_upsample_each_map_to_its_masks_size(tmp_path) -> None:
    samples = _parts(tmp_path)
    scored = score_with(_fake_infer, samples, _preprocessing(), with_masks=True, batch_size=4)
    assert scored.maps[0].shape == (MODEL, MODEL) and scored.sizes[0] == (21, 34)
    metrics = compute_metrics(scored)
    truths = [np.zeros((21, 34), bool)] + [cv2.imread(s.mask_path, cv2.IMREAD_GRAYSCALE) > 0 for s in samples[1:]]
    maps = [resize_map(m, 21, 34) for m in scored.maps]
    labels = np.concatenate([t.ravel() for t in truths])
    scores = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
    assert metrics["pixel_eval"] == "original"
    assert metrics["pixel_auroc"] == pytest.approx(sklearn_metrics().roc_auc_score(labels, scores), abs=1e-15)
    assert metrics["aupro"] == pytest.approx(brute_aupro(truths, maps), abs=1e-12)
    fast = compute_metrics(scored, pixel_eval="fast")
    assert fast["pixel_eval"] == f"fast-{MODEL}x{MODEL}"
    assert fast["pixel_auroc"] == pixel_metrics(scored.masks, scored.maps)["pixel_auroc"] != metrics["pixel_auroc"]


def test_scores_csv_round_trips_exactly_with_plain_line_ends(tmp_path) -> None:
    samples = _parts(tmp_path, count=4)
    scores = np.array([0.1, 1 / 3, 123456.789, np.nextafter(np.float32(2), np.float32(3))], dtype=np.float32)
    path = tmp_path / "scores.csv"
    write_scores_csv(path, samples, scores, validation={samples[1].path})
    raw = path.read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["score"]) for row in rows] == [float(s) for s in scores]
    assert [row["split"] for row in rows] == ["test", "validation", "test", "test"]
