"""Backends: ORT/OpenVINO parity, the pinned OpenVINO precision, selection rules, TensorRT, thread safety."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from edgeiad_runtime import BackendFallbackWarning, Detector, available_backends
from edgeiad_runtime.backends import base
from edgeiad_runtime.errors import ArtifactError, ConfigError, MissingExtraError

from .conftest import SIZE, build_model

TRT_SKIP = "TensorRT is not installable on this CPU-only machine; run on a Jetson/x86-CUDA box"


def _same(left, right, atol=0.0):
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        if atol:
            assert a.raw_score == pytest.approx(b.raw_score, abs=atol) and a.score == pytest.approx(b.score, abs=atol)
            np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=atol)
            np.testing.assert_allclose(a.raw_map, b.raw_map, atol=atol)
        else:
            assert a.raw_score == b.raw_score and a.score == b.score and a.is_anomalous == b.is_anomalous
            np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
            np.testing.assert_array_equal(a.mask, b.mask)


def test_available_backends_lists_what_is_installed():
    names = available_backends()
    assert "onnxruntime" in names and "openvino" in names
    assert names == [name for name in ("tensorrt", "openvino", "onnxruntime") if name in names]


@pytest.mark.parametrize("options", [{}, {"batch": 4}, {"stats": "sidecar", "stats_dtype": "fp16"}])
def test_openvino_matches_onnxruntime(artifact_factory, images, options):
    folder = artifact_factory(target="openvino", precision_hint="f32", **options)
    with Detector.load(folder, threads=1) as ov_det, Detector.load(folder, backend="onnxruntime", threads=1) as ort_det:
        assert ov_det.backend_name == "openvino" and ort_det.backend_name == "onnxruntime"
        _same(ov_det.predict_batch(images), ort_det.predict_batch(images), atol=1e-5)


def test_openvino_runs_an_onnx_artifact(onnx_artifact, detector, images):
    with Detector.load(onnx_artifact, backend="openvino", threads=1) as det:
        assert det.backend_info["model"] == "model.onnx"
        _same(det.predict_batch(images), detector.predict_batch(images), atol=1e-5)


@pytest.mark.parametrize(("hint", "effective"), [("f32", "f32"), (None, "f32"), ("bf16", "bf16")])
def test_openvino_precision_hint_is_pinned(artifact_factory, hint, effective):
    import openvino as ov

    if effective == "bf16" and "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        effective = "f32"  # a CPU without bf16 (e.g. AVX2 only) runs the bf16 hint in f32, and must report that
    with Detector.load(artifact_factory(target="openvino", precision_hint=hint), threads=1) as det:
        compiled = det._backend._compiled
        assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == effective
        assert det.backend_info["precision_hint"] == effective
        assert compiled.get_property("PERFORMANCE_HINT") == "LATENCY"
        assert compiled.get_property("INFERENCE_NUM_THREADS") == 1


def test_openvino_artifact_without_openvino_names_the_extra(artifact_factory, monkeypatch):
    folder = artifact_factory(target="openvino", precision_hint="f32")
    real = base.is_installed
    monkeypatch.setattr(base, "is_installed", lambda name: name != "openvino" and real(name))
    with pytest.raises(MissingExtraError, match=r"pip install 'edgeiad-runtime\[openvino\]'"):
        Detector.load(folder)


def test_onnxruntime_needs_an_onnx_model(artifact_factory):
    folder = artifact_factory(target="openvino", precision_hint="f32", keep_onnx=False)
    with pytest.raises(ArtifactError, match="without an ONNX model"):
        Detector.load(folder, backend="onnxruntime")


def test_unknown_backend_device_and_threads(onnx_artifact):
    with pytest.raises(ConfigError, match="unknown backend 'torch'"):
        Detector.load(onnx_artifact, backend="torch")
    with pytest.raises(ConfigError, match="onnxruntime-gpu"):
        Detector.load(onnx_artifact, device="cuda")
    with pytest.raises(ConfigError, match="unknown onnxruntime device"):
        Detector.load(onnx_artifact, device="tpu")
    with pytest.raises(ConfigError, match="threads"):
        Detector.load(onnx_artifact, threads=0)
    with pytest.raises(ConfigError, match="not available"):
        Detector.load(onnx_artifact, backend="openvino", device="NPU7")
    with pytest.raises(ArtifactError, match="no TensorRT engine"):
        Detector.load(onnx_artifact, backend="tensorrt")


@pytest.mark.skipif(base.is_installed("tensorrt"), reason="checks the message shown where TensorRT is absent")
def test_deferred_trt_without_tensorrt_names_extra_and_build_engine(artifact_factory):
    folder = artifact_factory(target="trt", deferred=True)
    with pytest.raises(MissingExtraError) as info:
        Detector.load(folder, backend="tensorrt")
    message = str(info.value)
    assert "pip install 'edgeiad-runtime[tensorrt]'" in message and f"edgeiad build-engine {folder}" in message


def test_deferred_trt_with_tensorrt_points_to_build_engine(artifact_factory, monkeypatch):
    folder = artifact_factory(target="trt", deferred=True)
    monkeypatch.setattr(base, "is_installed", lambda name: True)  # as on an appliance with TensorRT
    with pytest.raises(ArtifactError, match=rf"deferred TensorRT artifact .*`edgeiad build-engine {folder}`"):
        Detector.load(folder, backend="tensorrt")


def test_deferred_trt_auto_falls_back_to_onnxruntime_once(artifact_factory, detector, images):
    folder = artifact_factory(target="trt", deferred=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        det = Detector.load(folder, threads=1)
        results = det.predict_batch(images) + [det.predict(images[0])]
    fallbacks = [w for w in caught if issubclass(w.category, BackendFallbackWarning)]
    assert len(fallbacks) == 1 and "edgeiad build-engine" in str(fallbacks[0].message)
    assert det.backend_name == "onnxruntime"
    _same(results, detector.predict_batch(images) + [detector.predict(images[0])])


@pytest.mark.skipif(base.is_installed("tensorrt"), reason="checks the fallback taken where TensorRT is absent")
def test_built_trt_artifact_without_tensorrt(artifact_factory):
    folder = artifact_factory(target="trt")
    with pytest.warns(BackendFallbackWarning, match="TensorRT is not installed"):
        assert Detector.load(folder, threads=1).backend_name == "onnxruntime"
    with pytest.raises(MissingExtraError, match=r"edgeiad-runtime\[tensorrt\]"):
        Detector.load(folder, backend="tensorrt")
    with pytest.raises(MissingExtraError, match="no ONNX model to fall back to"):
        Detector.load(artifact_factory(target="trt", keep_onnx=False))


def _build_engine(onnx_path, engine_path, max_batch: int) -> None:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes()), [parser.get_error(i) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, 3, SIZE, SIZE), (2, 3, SIZE, SIZE), (max_batch, 3, SIZE, SIZE))
    config.add_optimization_profile(profile)
    engine_path.write_bytes(bytes(builder.build_serialized_network(network, config)))


def test_tensorrt_engine_matches_onnxruntime(fresh_artifact, detector, images):
    trt = pytest.importorskip("tensorrt", reason=TRT_SKIP)
    pytest.importorskip("pycuda.driver", reason=TRT_SKIP)
    from edgeiad_runtime.manifest import load_manifest, write_manifest

    folder = fresh_artifact(target="trt", deferred=True)
    _build_engine(folder / "model.onnx", folder / "model.engine", max_batch=4)
    manifest = load_manifest(folder)
    manifest.update(deferred=False, engine={"trt_version": trt.__version__, "gpu": "test", "build": {}})
    manifest["files"]["model"] = "model.engine"
    manifest["batch"]["max"] = 4
    write_manifest(folder, manifest)
    with Detector.load(folder, backend="tensorrt") as det:
        assert det.backend_name == "tensorrt"
        _same(det.predict_batch(images), detector.predict_batch(images), atol=1e-4)
        serial = [det.predict(image) for image in images]
        with ThreadPoolExecutor(4) as pool:
            _same(list(pool.map(det.predict, images)), serial)


@pytest.mark.parametrize("options", [{}, {"target": "openvino", "precision_hint": "f32"}, {"batch": 4}])
def test_eight_threads_share_one_detector(artifact_factory, images, options):
    with Detector.load(artifact_factory(**options), threads=1) as det:
        work = [images[i % len(images)] for i in range(48)]
        serial = [det.predict(image) for image in work]
        with ThreadPoolExecutor(8) as pool:
            parallel = list(pool.map(det.predict, work))
            batched = list(pool.map(det.predict_batch, [work[i : i + 5] for i in range(0, 48, 5)]))
        _same(parallel, serial)
        _same([r for chunk in batched for r in chunk], serial)


def test_the_fixture_graph_is_valid_for_every_batch_kind():
    for batch in ("batch", 1, 4):
        model = build_model(batch, sidecar=True)
        assert [i.name for i in model.graph.input] == ["image", "mean"]
