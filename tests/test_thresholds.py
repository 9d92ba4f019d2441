"""Threshold estimators, inference metrics, the validation split, categories, `edgeiad threshold` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeiad.engine import Scored
from edgeiad.errors import ConfigError, DataError
from edgeiad.metrics.inference import image_inference_metrics, pixel_inference_metrics
from edgeiad.metrics.thresholds import IMAGE_METHODS, METHODS, image_threshold, pixel_threshold
from edgeiad.thresholding import derived_category, load_categories, split_validation, study

from .test_cli import assert_one_line_error, run_cli


def _brute_best(labels, scores, objective):
    """Best objective over every threshold that changes a decision (each distinct score)."""
    return max(objective(image_inference_metrics(labels, scores, t)) for t in np.unique(scores))


def _youden(m):
    return m["recall"] - m["fpr"]


@pytest.mark.parametrize("seed", range(5))
def test_image_f1_and_youden_reach_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    labels = np.array([0] * 30 + [1] * 12)
    scores = np.concatenate([rng.normal(0, 1, 30), rng.normal(1.5, 1, 12)])
    for method, objective in (("f1", lambda m: m["f1"] or 0.0), ("youden", _youden)):
        value = image_threshold(method, labels, scores)
        assert objective(image_inference_metrics(labels, scores, value)) == pytest.approx(
            _brute_best(labels, scores, objective)
        )
        assert value not in scores  # halfway between two scores: drift cannot flip a validation image


def test_image_threshold_hand_computed_case():
    labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    # F1 peaks at t = 0.35 (tp 2, fp 1): the threshold sits halfway to the next score down, 0.1.
    assert image_threshold("f1", labels, scores) == pytest.approx(0.225)
    good = np.arange(100, dtype=float)
    assert image_threshold("fpr", np.zeros(100), good, target_fpr=0.05) == pytest.approx(94.5)
    assert image_threshold("fpr", np.zeros(100), good, target_fpr=0.0) > 99
    assert image_threshold("good-only", np.zeros(100), good, sigmas=2) == pytest.approx(good.mean() + 2 * good.std())


def test_estimators_refuse_what_they_cannot_do():
    with pytest.raises(ConfigError, match="iou"):
        image_threshold("iou", [0, 1], [0.0, 1.0])
    with pytest.raises(DataError, match="good-only"):
        image_threshold("f1", [0, 0], [0.0, 1.0])
    with pytest.raises(ConfigError, match="target-fpr"):
        image_threshold("fpr", [0, 1], [0.0, 1.0], target_fpr=1.5)
    with pytest.raises(DataError, match="good-only"):
        pixel_threshold("iou", [np.zeros((4, 4))], [np.zeros((4, 4), bool)])


def _pixel_case(seed=0, separable=False):
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(6):
        mask = np.zeros((16, 16), bool)
        if i % 2:
            y, x = rng.integers(0, 10, 2)
            mask[y : y + 5, x : x + rng.integers(2, 6)] = True
        noise = rng.normal(0, 0.1 if separable else 0.6, mask.shape)
        maps.append((mask * 1.0 + noise).astype(np.float32))
        masks.append(mask)
    return maps, masks


def test_pixel_iou_threshold_segments_a_separable_case_perfectly():
    maps, masks = _pixel_case(separable=True)
    value = pixel_threshold("iou", maps, masks)
    metrics = pixel_inference_metrics(maps, masks, value)
    assert metrics["mean_iou"] == 1.0 and metrics["region_recall"] == 1.0 and metrics["good_images_flagged"] == 0.0


@pytest.mark.parametrize("method,key", [("iou", "mean_iou"), ("f1", "dice")])
def test_pixel_thresholds_are_optimal_among_the_quantile_candidates(method, key):
    maps, masks = _pixel_case(seed=3)
    value = pixel_threshold(method, maps, masks)
    best = pixel_inference_metrics(maps, masks, value)[key]
    grid = np.quantile(np.concatenate([m.ravel() for m in maps]), np.linspace(0, 1, 101))
    assert all(pixel_inference_metrics(maps, masks, t)[key] <= best + 1e-9 for t in grid)


def test_pixel_fpr_and_good_only_use_good_images_only():
    maps, masks = _pixel_case(seed=1)
    good = np.concatenate([m.ravel() for m, k in zip(maps, masks) if not k.any()])
    value = pixel_threshold("fpr", maps, masks, target_fpr=0.02)
    assert np.mean(good >= value) <= 0.02
    assert pixel_threshold("good-only", maps, masks, sigmas=3) == pytest.approx(good.mean() + 3 * good.std(), rel=1e-5)


def test_inference_metrics_hand_computed():
    metrics = image_inference_metrics([0, 0, 1, 1, 1], [0.1, 0.6, 0.7, 0.2, 0.9], 0.5)
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]) == (2, 1, 1, 1)
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(0.6) and metrics["fpr"] == pytest.approx(0.5)
    mask = np.zeros((8, 8), bool)
    mask[0:2, 0:2] = True  # region 1, hit
    mask[5:7, 5:7] = True  # region 2, missed
    amap = np.zeros((8, 8), np.float32)
    amap[0:2, 0:3] = 1.0  # 4 true positives, 2 false positives
    pixel = pixel_inference_metrics([amap, np.zeros((8, 8), np.float32)], [mask, np.zeros((8, 8), bool)], 0.5)
    assert pixel["iou"] == pytest.approx(4 / 10) and pixel["dice"] == pytest.approx(8 / 14)
    assert pixel["region_recall"] == 0.5 and pixel["good_images_flagged"] == 0.0
    assert derived_category(mask) == "combined" and derived_category(mask[:4]) == "single-region"


def test_split_takes_per_type_counts_and_as_many_good_images():
    labels = [0] * 20 + [1] * 10 + [1] * 3
    types = ["good"] * 20 + ["crack"] * 10 + ["hole"] * 3
    val, rest = split_validation(labels, types, per_type=5, seed=1)
    assert set(val).isdisjoint(rest) and sorted(val + rest) == list(range(33))
    picked = [types[i] for i in val]
    assert picked.count("crack") == 5 and picked.count("hole") == 1  # at most half of a small type
    assert picked.count("good") == 6
    assert split_validation(labels, types, per_type=5, seed=1) == (val, rest)
    with pytest.raises(ConfigError, match="val-anomalous"):
        split_validation(labels, types, per_type=-1)


def _scored(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.array([0] * 12 + [1] * 12)
    maps, masks = [], []
    for label in labels:
        mask = np.zeros((16, 16), bool)
        if label:
            mask[4:9, 4:9] = True
        maps.append((mask * 1.0 + rng.normal(0, 0.3, mask.shape)).astype(np.float32))
        masks.append(mask)
    scores = np.array([m.max() for m in maps], dtype=np.float32)
    defect_types = ["good"] * 12 + ["a"] * 6 + ["b"] * 6
    return Scored(scores, labels, defect_types, maps=maps, masks=masks)


def test_study_fits_every_method_on_validation_and_reports_the_rest():
    scored = _scored()
    paths = [f"img{i}.png" for i in range(24)]
    result = study(scored, paths, val_anomalous=2, categories={12: {"category": "surface", "background": "no"}})
    assert set(result["ablation"]["image"]) == set(IMAGE_METHODS)
    assert set(result["ablation"]["pixel"]) == set(METHODS)
    assert result["image"]["method"] == "f1" and result["pixel"]["method"] == "iou"
    assert result["threshold_free"]["pixel_eval"] == "original"  # the masks given are the ground truth
    assert result["split"]["validation"] == {"good": 4, "anomalous": 4}
    assert result["split"]["test"] == {"good": 8, "anomalous": 8}
    assert len(result["split"]["validation_paths"]) == 8
    entry = result["ablation"]["pixel"]["iou"]
    assert entry["test"]["mean_iou"] > 0.5 and set(entry["per_group"]["defect_type"]) == {"a", "b"}
    assert "threshold_free" in result and result["threshold_free"]["image_auroc"] > 0.9
    norm = result["normalization"]
    assert norm["image_min"] <= result["image"]["value"] <= norm["image_max"]


def test_study_without_anomalous_validation_falls_back_to_good_only():
    scored = _scored()
    result = study(scored, [str(i) for i in range(24)], val_anomalous=0, train_scores=np.linspace(0, 1, 10))
    assert result["image"]["method"] == "good-only" and result["pixel"]["method"] == "good-only"
    assert any("good-only" in note for note in result["notes"])


def test_categories_csv_is_read_and_bad_rows_are_named(tmp_path):
    (tmp_path / "test/a").mkdir(parents=True)
    paths = [str(tmp_path / "test/a/000.png"), str(tmp_path / "test/a/001.png")]
    good = tmp_path / "categories.csv"
    good.write_text("path,category,background\ntest/a/001.png,Surface,yes\n")
    assert load_categories(None, paths, str(tmp_path)) == {1: {"category": "surface", "background": "yes"}}
    bad = tmp_path / "bad.csv"
    bad.write_text("path,category\ntest/a/000.png,scratchy\n")
    with pytest.raises(DataError, match="line 2.*scratchy"):
        load_categories(bad, paths, str(tmp_path))


def test_threshold_command_on_a_run_writes_the_ablation(trained_runs, capsys):
    run = trained_runs["padim"]
    code, out, _ = run_cli(["threshold", run, "--method", "all", "--val-anomalous", "2"], capsys)
    assert code == 0 and "pixel thresholds" in out
    result = json.loads((run / "thresholds.json").read_text())
    assert set(result["ablation"]["pixel"]) == set(METHODS)
    assert "| iou (chosen) | validation |" in (run / "thresholds.md").read_text()
    assert "<table>" in (run / "thresholds.html").read_text()


def test_threshold_set_rewrites_the_manifest_and_the_runtime_uses_it(trained_runs, tmp_path, capsys):
    from edgeiad_runtime import Detector

    from edgeiad.export import export_run

    artifact = export_run(trained_runs["padim"], out=tmp_path / "art")
    code, _, _ = run_cli(["threshold", artifact, "--set", "0.42", "--set-pixel", "0.5"], capsys)
    assert code == 0
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["thresholds"]["image"] == 0.42 and "by hand" in manifest["thresholds"]["method"]
    with Detector.load(artifact, threads=1) as detector:  # hashes still verify
        result = detector.predict(np.full((64, 64, 3), 128, np.uint8))
        assert result.is_anomalous == (result.raw_score >= 0.42)
    code, _, err = run_cli(["threshold", trained_runs["padim"], "--set", "0.4"], capsys)
    assert_one_line_error(code, err, "needs an artifact folder")


def test_refit_on_the_exported_model_agrees_with_the_runtime_on_every_test_image(
    trained_runs, synthetic_mvtec, tmp_path
):
    from edgeiad_runtime import Detector

    from edgeiad.calibration import threshold_artifact
    from edgeiad.data import load_dataset
    from edgeiad.export import export_run

    artifact = export_run(trained_runs["patchcore"], out=tmp_path / "art", precision="int8")
    result = threshold_artifact(artifact, {"val_anomalous": 2}, progress=False)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["thresholds"]["image"] == result["image"]["value"]
    assert "exported onnx/int8" in manifest["thresholds"]["method"]
    test = load_dataset(synthetic_mvtec).test
    with Detector.load(artifact, threads=1) as detector:
        results = detector.predict_batch([s.path for s in test])
    exported_scores = np.array([r.raw_score for r in results])
    assert [r.is_anomalous for r in results] == (exported_scores >= result["image"]["value"]).tolist()
    expected = [m["tp"] + m["fp"] for m in (result["ablation"]["image"]["f1"][s] for s in ("validation", "test"))]
    assert sum(r.is_anomalous for r in results) == sum(expected)
