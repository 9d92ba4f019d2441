"""The TensorRT backend's buffer/shape/stream logic, run against minimal stand-ins for tensorrt and pycuda.

The real engine test in test_backends.py needs a GPU; these fakes implement just the TensorRT 10 and pycuda
calls the backend makes (executing the ONNX model with onnxruntime), so the data flow is checked everywhere.
"""

from __future__ import annotations

import itertools
import sys
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
from edgeiad_runtime import Detector
from edgeiad_runtime.backends import base
from edgeiad_runtime.errors import ArtifactError
from edgeiad_runtime.manifest import load_manifest, write_manifest

MAGIC = b"FAKE-TRT-ENGINE\n"
_memory: dict[int, np.ndarray] = {}
_pointers = itertools.count(4096)


class _Allocation:
    def __init__(self, nbytes: int) -> None:
        self.pointer = next(_pointers)
        _memory[self.pointer] = np.zeros(nbytes, np.uint8)

    def __int__(self) -> int:
        return self.pointer

    def free(self) -> None:
        del _memory[self.pointer]


def _bytes_of(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _fake_pycuda() -> types.ModuleType:
    driver = types.ModuleType("pycuda.driver")
    context = types.SimpleNamespace(push=lambda: None, detach=lambda: None)
    driver.init = lambda: None
    driver.Device = lambda index: types.SimpleNamespace(retain_primary_context=lambda: context)
    driver.Context = types.SimpleNamespace(pop=lambda: None)
    driver.pagelocked_empty = lambda count, dtype: np.empty(count, dtype)
    driver.mem_alloc = _Allocation
    driver.Stream = lambda: types.SimpleNamespace(handle=next(_pointers), synchronize=lambda: None)

    def htod(device, host, stream=None):
        raw = _bytes_of(host)
        _memory[int(device)][: raw.size] = raw

    def dtoh(host, device, stream=None):
        raw = host.reshape(-1).view(np.uint8)
        raw[:] = _memory[int(device)][: raw.size]

    driver.memcpy_htod = driver.memcpy_htod_async = htod
    driver.memcpy_dtoh_async = dtoh
    return driver


class _Engine:
    def __init__(self, onnx_bytes: bytes, max_batch: int) -> None:
        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.io = {node.name: node for node in self.session.get_inputs() + self.session.get_outputs()}
        self.inputs = [node.name for node in self.session.get_inputs()]
        self.num_io_tensors = len(self.io)
        self.max_batch = max_batch

    def get_tensor_name(self, index):
        return list(self.io)[index]

    def get_tensor_mode(self, name):
        return "INPUT" if name in self.inputs else "OUTPUT"

    def get_tensor_dtype(self, name):
        return np.float16 if self.io[name].type == "tensor(float16)" else np.float32

    def get_tensor_shape(self, name):
        return tuple(-1 if isinstance(d, str) else d for d in self.io[name].shape)

    def get_tensor_profile_shape(self, name, profile):
        shape = self.get_tensor_shape(name)
        return [(1, *shape[1:]), (1, *shape[1:]), (self.max_batch, *shape[1:])]

    def create_execution_context(self):
        return _Context(self)


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)

    def set_tensor_address(self, name, pointer):
        self.addresses[name] = pointer

    def get_tensor_shape(self, name):
        shape = self.engine.get_tensor_shape(name)
        return (self.shapes.get("image", shape)[0], *shape[1:]) if shape and shape[0] == -1 else shape

    def execute_async_v3(self, stream_handle):
        feeds = {}
        for name in self.engine.inputs:
            shape, dtype = self.get_tensor_shape(name), np.dtype(self.engine.get_tensor_dtype(name))
            count = int(np.prod(shape)) * dtype.itemsize
            feeds[name] = _memory[self.addresses[name]][:count].view(dtype).reshape(shape)
        outputs = ["anomaly_map", "pred_score"]
        for name, value in zip(outputs, self.engine.session.run(outputs, feeds), strict=True):
            raw = _bytes_of(value.astype(np.float32))
            _memory[self.addresses[name]][: raw.size] = raw
        return True


def _fake_tensorrt() -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.0.fake"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.nptype = lambda dtype: dtype

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            if not blob.startswith(MAGIC):
                return None
            max_batch, onnx_bytes = blob[len(MAGIC) :].split(b"\n", 1)
            return _Engine(onnx_bytes, int(max_batch))

    trt.Runtime = Runtime
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = _fake_pycuda()
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt())
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", pycuda.driver)
    monkeypatch.setattr(base, "is_installed", lambda name: True)


def _engine_artifact(fresh_artifact, max_batch: int = 4, engine: bytes | None = None, **options):
    folder = fresh_artifact(target="trt", deferred=True, **options)
    onnx_bytes = (folder / "model.onnx").read_bytes()
    (folder / "model.engine").write_bytes(engine if engine is not None else MAGIC + b"%d\n" % max_batch + onnx_bytes)
    manifest = load_manifest(folder, verify=False)
    manifest.update(deferred=False, engine={"trt_version": "10.0.fake", "gpu": "none", "build": {}})
    manifest["files"]["model"] = "model.engine"
    write_manifest(folder, manifest)
    return folder


def _same(left, right):
    for a, b in zip(left, right, strict=True):
        assert a.raw_score == b.raw_score
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)


@pytest.mark.parametrize("options", [{}, {"stats": "sidecar", "stats_dtype": "fp16"}, {"batch": 2}])
def test_tensorrt_backend_data_flow(fake_trt, fresh_artifact, detector, images, options):
    folder = _engine_artifact(fresh_artifact, **options)
    with Detector.load(folder, threads=1) as det:  # auto prefers TensorRT for a built engine
        assert det.backend_name == "tensorrt" and det.backend_info["tensorrt"] == "10.0.fake"
        assert det._backend.max_batch == options.get("batch", 4)
        seen = []
        run = det._backend.run
        det._backend.run = lambda feeds: (seen.append(len(feeds["image"])), run(feeds))[1]
        _same(det.predict_batch(images), detector.predict_batch(images))
        assert seen == ([2, 2, 2] if options.get("batch") == 2 else [4, 2])  # chunks never exceed the profile max
        with ThreadPoolExecutor(8) as pool:
            _same(list(pool.map(det.predict, images * 4)), [detector.predict(image) for image in images * 4])
        live = len(_memory)
    assert len(_memory) < live  # close() freed the device buffers


def test_tensorrt_engine_that_does_not_deserialize(fake_trt, fresh_artifact):
    folder = _engine_artifact(fresh_artifact, engine=b"built for another GPU")
    with pytest.raises(
        ArtifactError, match=r"cannot deserialize .*built with TensorRT 10\.0\.fake.*edgeiad build-engine"
    ):
        Detector.load(folder, backend="tensorrt")
