"""Detector.predict: input kinds, map sizes, normalisation, batching and parity with a direct ORT run."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from edgeiad_runtime import Detector, Result
from edgeiad_runtime.errors import EdgeiadError
from edgeiad_runtime.postprocess import float32_at_least, normalize, resize_map
from edgeiad_runtime.preprocess import Preprocessing, preprocess, to_rgb_uint8

from .conftest import MEAN, NORMALIZATION, SIZE, THRESHOLDS


def _direct(artifact, image, color_order="BGR"):
    """Reference: preprocess by hand and call onnxruntime on the artifact's model.onnx."""
    rgb = to_rgb_uint8(image, color_order=color_order)
    batch = preprocess(rgb, Preprocessing(SIZE, SIZE))[None]
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    anomaly_map, score = session.run(None, {"image": batch})
    # resize_map is within 1e-6 of cv2.resize (test_resize_decode_parity); the runtime must use exactly it.
    return rgb, batch, resize_map(anomaly_map[0, 0], *image.shape[:2]), float(score[0])


@pytest.mark.parametrize("index", range(6))
def test_predict_matches_direct_onnxruntime(detector, onnx_artifact, images, index):
    image = images[index]
    result = detector.predict(image)
    rgb, batch, raw_map, raw_score = _direct(onnx_artifact, image)
    assert isinstance(result, Result)
    assert result.raw_score == raw_score
    np.testing.assert_array_equal(result.raw_map, raw_map)
    assert result.raw_map.shape == result.anomaly_map.shape == result.mask.shape == image.shape[:2]
    assert result.raw_map.dtype == result.anomaly_map.dtype == np.float32 and result.mask.dtype == bool
    # And both equal the model's formula computed in numpy.
    expected = ((batch - MEAN) ** 2).mean(axis=1)[0]
    np.testing.assert_allclose(raw_score, expected.max(), rtol=1e-5)
    assert set(result.timings) == {"preprocess_ms", "inference_ms", "postprocess_ms"}


def test_normalisation_puts_the_threshold_at_one_half(detector, images):
    for image in images:
        result = detector.predict(image)
        span = NORMALIZATION["image_max"] - NORMALIZATION["image_min"]
        expected = min(max((result.raw_score - THRESHOLDS["image"]) / span + 0.5, 0.0), 1.0)
        assert result.score == pytest.approx(expected, abs=1e-12)
        assert result.is_anomalous == (result.raw_score >= THRESHOLDS["image"])
        assert (result.score >= 0.5) == result.is_anomalous
        np.testing.assert_array_equal(result.mask, result.raw_map >= THRESHOLDS["pixel"])
        pixel_span = NORMALIZATION["pixel_max"] - NORMALIZATION["pixel_min"]
        np.testing.assert_allclose(
            result.anomaly_map, np.clip((result.raw_map - THRESHOLDS["pixel"]) / pixel_span + 0.5, 0, 1), atol=1e-6
        )
        assert result.anomaly_map.min() >= 0.0 and result.anomaly_map.max() <= 1.0


def test_normalize_helpers():
    assert normalize(1.0, 1.0, 0.0, 2.0) == 0.5
    assert normalize(3.0, 1.0, 5.0, 5.0) == 1.0  # zero span falls back to 1.0
    assert normalize(-9.0, 1.0, 0.0, 2.0) == 0.0
    values = np.array([0.0, 1.0, 2.0, 9.0], np.float32)
    np.testing.assert_array_equal(normalize(values, 1.0, 0.0, 2.0), [0.0, 0.5, 1.0, 1.0])
    threshold = 0.1  # not a float32: the mask must still equal the exact float64 comparison
    grid = np.nextafter(np.float32(threshold), np.float32([-1, 1] * 3)).astype(np.float32)
    np.testing.assert_array_equal(grid >= float32_at_least(threshold), grid.astype(np.float64) >= threshold)


def test_without_thresholds_scores_and_masks_are_none(artifact_factory, images):
    with Detector.load(artifact_factory(thresholds=False), threads=1) as det:
        result = det.predict(images[0])
    assert result.score is None and result.is_anomalous is None and result.mask is None
    np.testing.assert_array_equal(result.anomaly_map, result.raw_map)
    assert np.isfinite(result.raw_score)


def test_color_orders_gray_float_and_paths(detector, images, tmp_path):
    bgr = images[0]
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    by_bgr = detector.predict(bgr)
    assert detector.default_color_order == "BGR"
    assert detector.predict(rgb, color_order="RGB").raw_score == by_bgr.raw_score
    assert detector.predict(bgr, color_order="bgr").raw_score == by_bgr.raw_score
    assert detector.predict(bgr, color_order="RGB").raw_score != by_bgr.raw_score
    cv2.imwrite(str(tmp_path / "frame.png"), bgr)
    from_path = detector.predict(tmp_path / "frame.png")
    assert (
        from_path.raw_score == by_bgr.raw_score and detector.predict(str(tmp_path / "frame.png")).score == by_bgr.score
    )
    gray = images[2]
    assert detector.predict(gray).raw_score == detector.predict(np.stack([gray] * 3, axis=-1)).raw_score
    as_float = detector.predict(bgr.astype(np.float32) / 255.0)
    assert as_float.raw_score == by_bgr.raw_score
    flipped = detector.predict(bgr[:, ::-1])  # a negative-stride view is accepted
    assert flipped.raw_map.shape == bgr.shape[:2]


def test_bgr_trained_model_gets_bgr_input(artifact_factory, images):
    with Detector.load(artifact_factory(channel_order="BGR"), threads=1) as det:
        swapped = det.predict(images[0], color_order="RGB")
    with Detector.load(artifact_factory(), threads=1) as det:
        assert det.predict(images[0], color_order="BGR").raw_score == swapped.raw_score


def _assert_same_results(left: list[Result], right: list[Result]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert a.raw_score == b.raw_score and a.score == b.score and a.is_anomalous == b.is_anomalous
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
        np.testing.assert_array_equal(a.mask, b.mask)


def _record_batches(det: Detector) -> list[int]:
    seen: list[int] = []
    run = det._backend.run
    det._backend.run = lambda feeds: (seen.append(feeds["image"].shape[0]), run(feeds))[1]
    return seen


@pytest.mark.parametrize(
    ("options", "chunks"),
    [
        ({"batch": 1}, [1] * 6),
        ({"batch": 4}, [4, 4]),
        ({"batch": "batch"}, [6]),
        ({"batch": "batch", "batch_max": 4}, [4, 2]),
    ],
)
def test_batching_equals_single_predictions(artifact_factory, detector, images, options, chunks):
    with Detector.load(artifact_factory(**options), threads=1) as det:
        seen = _record_batches(det)
        batch = det.predict_batch(images)
        assert seen == chunks  # static batches pad the last chunk by repetition, dynamic ones chunk by max
        singles = [det.predict(image) for image in images]
    _assert_same_results(batch, singles)
    _assert_same_results(batch, [detector.predict(image) for image in images])


def test_predict_batch_accepts_a_4d_stack_and_tuples(detector, images):
    stack = np.stack([images[0], images[0][::-1].copy()])
    _assert_same_results(detector.predict_batch(stack), [detector.predict(frame) for frame in stack])
    _assert_same_results(detector.predict_batch((images[1],)), [detector.predict(images[1])])
    assert detector.predict_batch([]) == []


@pytest.mark.parametrize(
    "options",
    [
        {"stats": "sidecar"},
        {"stats": "sidecar", "stats_dtype": "fp16"},
        {"stats": "sidecar", "stats_input_dtype": np.float16},
        {"stats": "sidecar", "stats_dtype": "fp16", "stats_input_dtype": np.float16},
    ],
)
def test_sidecar_stats_equal_baked(artifact_factory, detector, images, options):
    with Detector.load(artifact_factory(**options), threads=1) as det:
        _assert_same_results(det.predict_batch(images), detector.predict_batch(images))


def test_large_frame_is_accepted(detector):
    frame = np.full((10000, 10000), 200, dtype=np.uint8)  # 10k x 10k works: maps come back at full size
    result = detector.predict(frame)
    assert result.anomaly_map.shape == (10000, 10000) and np.isfinite(result.raw_score)


def test_properties_and_close(onnx_artifact, images):
    det = Detector.load(onnx_artifact, threads=1)
    assert det.input_size == (SIZE, SIZE) and det.backend_name == "onnxruntime"
    assert det.backend_info["intra_op_num_threads"] == 1
    manifest = det.manifest
    manifest["target"] = "changed"
    assert det.manifest["target"] == "onnx"  # callers get a copy
    assert "onnxruntime" in repr(det)
    det.close()
    det.close()
    assert "closed" in repr(det)
    with pytest.raises(EdgeiadError, match="closed"):
        det.predict(images[0])
