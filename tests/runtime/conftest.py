"""Tiny torch-free artifacts honouring the edgeiad graph contract, built with onnx.helper for the runtime tests."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # keep ORT/OpenVINO from oversubscribing small CI runners

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pytest  # noqa: E402
from edgeiad_runtime.manifest import write_manifest  # noqa: E402
from edgeiad_runtime.preprocess import Preprocessing  # noqa: E402
from edgeiad_runtime.safetensors_io import save_file  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SIZE = 32
# fp16-exact values, so baked, fp32-sidecar and fp16-sidecar artifacts compute identical maps.
MEAN = np.array([0.125, -0.25, 0.375], dtype=np.float32).reshape(1, 3, 1, 1)
THRESHOLDS = {"image": 1.0, "pixel": 0.5, "method": "f1_adaptive"}
NORMALIZATION = {"method": "minmax_threshold", "image_min": 0.0, "image_max": 2.0, "pixel_min": 0.0, "pixel_max": 2.5}
_ONNX_TYPES = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


def build_model(batch: int | str, sidecar: bool, stats_input_dtype: type = np.float32) -> onnx.ModelProto:
    """anomaly_map = mean over channels of (image - mean)^2; pred_score = its max over (1, 2, 3)."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])
    outputs = [
        helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [batch, 1, SIZE, SIZE]),
        helper.make_tensor_value_info("pred_score", TensorProto.FLOAT, [batch]),
    ]
    inputs, initializers, nodes = [image], [], []
    if sidecar:
        inputs.append(helper.make_tensor_value_info("mean", _ONNX_TYPES[stats_input_dtype], [1, 3, 1, 1]))
        nodes.append(helper.make_node("Cast", ["mean"], ["mean32"], to=TensorProto.FLOAT))
    else:
        initializers.append(numpy_helper.from_array(MEAN, name="mean32"))
    nodes += [
        helper.make_node("Sub", ["image", "mean32"], ["diff"]),
        helper.make_node("Mul", ["diff", "diff"], ["squared"]),
        # Opset 17 ReduceMean/ReduceMax still take axes as attributes (inputs only from opset 18).
        helper.make_node("ReduceMean", ["squared"], ["anomaly_map"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", ["anomaly_map"], ["pred_score"], axes=[1, 2, 3], keepdims=0),
    ]
    graph = helper.make_graph(nodes, "tiny_contract", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeiad-tests")
    model.ir_version = 8  # readable by every onnxruntime/OpenVINO the runtime supports
    onnx.checker.check_model(model, full_check=True)
    return model


def build_artifact(
    folder: Path,
    *,
    target: str = "onnx",
    batch: int | str = "batch",
    batch_max: int | None = None,
    stats: str = "baked",
    stats_dtype: str = "fp32",
    stats_input_dtype: type = np.float32,
    thresholds: bool = True,
    precision_hint: str | None = None,
    keep_onnx: bool = True,
    deferred: bool = False,
    channel_order: str = "RGB",
) -> Path:
    """Write a complete artifact folder (model files, optional stats, manifest.json) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(batch, stats == "sidecar", stats_input_dtype)
    onnx.save(model, str(folder / "model.onnx"))
    files = {"model": "model.onnx", "onnx": "model.onnx", "stats": None}
    if target == "openvino":
        import openvino as ov

        ov.save_model(ov.convert_model(str(folder / "model.onnx")), str(folder / "model.xml"), compress_to_fp16=False)
        files["model"] = "model.xml"
    elif target == "trt" and not deferred:
        (folder / "model.engine").write_bytes(b"not a real engine: only TensorRT-less selection tests use this")
        files["model"] = "model.engine"
    if not keep_onnx:
        (folder / "model.onnx").unlink()
        files["onnx"] = None
    if stats == "sidecar":
        value = MEAN.astype(np.float16 if stats_dtype == "fp16" else np.float32)
        save_file({"mean": value}, folder / "stats.safetensors", metadata={"model": "tiny"})
        files["stats"] = "stats.safetensors"
    manifest = make_manifest(
        target, batch, batch_max, stats, stats_dtype, files, thresholds, precision_hint, deferred, channel_order
    )
    write_manifest(folder, manifest)
    return folder


def make_manifest(
    target: str,
    batch: int | str,
    batch_max: int | None,
    stats: str,
    stats_dtype: str,
    files: dict,
    thresholds: bool,
    precision_hint: str | None,
    deferred: bool,
    channel_order: str,
) -> dict:
    """A schema-1 manifest for the tiny model (sha256 is filled by write_manifest)."""
    spec = Preprocessing(height=SIZE, width=SIZE, channel_order=channel_order)
    dynamic = batch == "batch"
    return {
        "schema_version": 1,
        "format": "edgeiad-artifact",
        "model": {"name": "tiny", "config": {"kind": "squared-distance-to-mean"}},
        "target": target,
        "precision": "fp32",
        "precision_hint": precision_hint,
        "files": files,
        "deferred": deferred,
        "inputs": {"image": {"shape": [batch, 3, SIZE, SIZE], "dtype": "float32"}},
        "outputs": {"anomaly_map": {"shape": [batch, 1, SIZE, SIZE]}, "pred_score": {"shape": [batch]}},
        "batch": {"mode": "dynamic" if dynamic else "static", "size": None if dynamic else batch, "max": batch_max},
        "preprocessing": spec.to_dict(),
        "stats": {
            "mode": stats,
            "file": files["stats"],
            "tensors": ["mean"] if stats == "sidecar" else [],
            "dtype": stats_dtype,
        },
        "thresholds": dict(THRESHOLDS) if thresholds else {"image": None, "pixel": None, "method": None},
        "normalization": dict(NORMALIZATION)
        if thresholds
        else {"method": "none", **dict.fromkeys(("image_min", "image_max", "pixel_min", "pixel_max"))},
        "versions": {"edgeiad": "0.1.0", "onnx": onnx.__version__},
        "parity": None,
        "data": None,
        "created": "2025-01-01T00:00:00+00:00",
        "engine": None,
    }


@pytest.fixture(scope="session")
def artifact_factory(tmp_path_factory):
    """Build (and cache per option set) read-only artifacts shared by the whole session."""
    cache: dict[tuple, Path] = {}

    def make(**options) -> Path:
        key = tuple(sorted(options.items(), key=lambda item: item[0]))
        if key not in cache:
            cache[key] = build_artifact(tmp_path_factory.mktemp("artifact"), **options)
        return cache[key]

    return make


@pytest.fixture
def fresh_artifact(tmp_path):
    """Build a private artifact a test may tamper with."""

    def make(**options) -> Path:
        return build_artifact(tmp_path / "artifact", **options)

    return make


@pytest.fixture(scope="session")
def onnx_artifact(artifact_factory) -> Path:
    return artifact_factory()


@pytest.fixture(scope="session")
def detector(onnx_artifact):
    from edgeiad_runtime import Detector

    with Detector.load(onnx_artifact, threads=1) as det:
        yield det


@pytest.fixture(scope="session")
def images() -> list[np.ndarray]:
    """A few deterministic frames of different sizes and kinds."""
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
        rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        rng.integers(0, 256, (20, 70), dtype=np.uint8),
        rng.integers(0, 65536, (33, 17, 3), dtype=np.uint16),
        rng.random((40, 40, 3), dtype=np.float32),
        rng.integers(0, 256, (64, 48, 1), dtype=np.uint8),
    ]
