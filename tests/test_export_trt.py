"""TensorRT export: TensorRT-free ONNX checks, deferred artifacts, and the builder's TensorRT 10 calls.

The builder runs against a stand-in for the tensorrt builder API whose "engines" the runtime's fake TensorRT
backend executes with onnxruntime; the real-TensorRT test skips without TensorRT (run it on a CUDA box).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeiad_runtime import Detector
from edgeiad_runtime.backends import base
from edgeiad_runtime.manifest import load_manifest, write_manifest
from edgeiad_runtime.safetensors_io import save_file
from onnx import TensorProto, helper, numpy_helper

from edgeiad.errors import ArtifactError, ConfigError, MissingExtraError
from edgeiad.export import tensorrt as trt_export
from edgeiad.export import trt_check
from edgeiad.export.targets import TARGETS
from edgeiad.export.trt_check import SUPPORTED_OPS, Finding, check_onnx_for_tensorrt, format_findings

from .runtime.conftest import build_artifact
from .runtime.test_tensorrt_fake import MAGIC, _fake_pycuda, _fake_tensorrt
from .test_export_openvino import BANK, DIM, SIZE, build_scoring_model

DYNAMIC = {"mode": "dynamic", "size": None, "max": 4}
SHAPE = (3, SIZE, SIZE)
NO_TRT = "TensorRT is not installable on this CPU-only machine; run on a Jetson/x86-CUDA box"


def _graph(nodes, inputs, outputs, inits=(), opset=18) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "t", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


_v = lambda name, shape, elem=TensorProto.FLOAT: helper.make_tensor_value_info(name, elem, shape)  # noqa: E731
_i64 = lambda name, values: numpy_helper.from_array(np.array(values, np.int64), name=name)  # noqa: E731


def _one(op, inputs, out_shape, in_shape, inits=(), opset=18, elem=TensorProto.FLOAT, names=("x", "y"), **attrs):
    """A one-node graph: `op` named 'n' reading input 'x' (+ initializers), writing 'y'."""
    x, y = names
    node = helper.make_node(op, [x, *[t.name for t in inits]] if inputs is None else inputs, [y], name="n", **attrs)
    return _graph([node], [_v(x, in_shape, elem)], [_v(y, out_shape, elem)], inits, opset)


def _topk(k: int):
    node = helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="n", axis=-1, largest=0)
    outputs = [_v("values", [1, k]), _v("indices", [1, k], TensorProto.INT64)]
    return _graph([node], [_v("x", [1, 8000])], outputs, [_i64("k", [k])])


def _custom():
    model = _one("FancyOp", ["x"], [4], [4])
    model.graph.node[0].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return model


STRING = {"elem": TensorProto.STRING}
BIG, MAX16 = [2**16, 2**16], {**DYNAMIC, "max": 16}
_big_image = lambda: _one("Relu", ["image"], ["b", 3, 8192, 8192], ["b", 3, 8192, 8192], names=("image", "y"))  # noqa: E731
_expand = lambda shape: _one("Expand", None, shape, [1, 1], [_i64("s", shape)])  # noqa: E731
_int64 = lambda value: _one("Add", None, [2], [2], [_i64("c", [1, value])], elem=TensorProto.INT64)  # noqa: E731
_pad = lambda mode: _one("Pad", None, [1, 1, 6, 6], [1, 1, 4, 4], [_i64("p", [0, 0, 1, 1] * 2)], 19, mode=mode)  # noqa: E731
_slice = lambda: _one("Slice", None, [4, 5], [4, 6], [_i64(n, [v]) for n, v in (("a", 1), ("b", 2**63 - 1), ("c", 1))])  # noqa: E731
CASES = {  # model factory, declared batch, declared shapes, expected error codes
    "clean-static": (lambda: build_scoring_model(batch=2), None, None, []),
    "dynamic-batch-undeclared": (build_scoring_model, None, None, ["batch-profile-missing"]),
    "dynamic-batch-declared": (build_scoring_model, DYNAMIC, None, []),
    "static-onnx-dynamic-declared": (lambda: build_scoring_model(batch=2), DYNAMIC, None, ["batch-mismatch"]),
    "sidecar-rows-undeclared": (lambda: build_scoring_model(sidecar=True), DYNAMIC, None, ["dynamic-dim"]),
    "sidecar-rows-declared": (lambda: build_scoring_model(sidecar=True), DYNAMIC, {"memory_bank": (BANK, DIM)}, []),
    "dynamic-height": (lambda: _one("Relu", ["x"], [1, 3, "h", 8], [1, 3, "h", 8]), None, None, ["dynamic-dim"]),
    "string-normalizer": (lambda: _one("StringNormalizer", ["x"], [4], [4], **STRING), None, None, ["op-unsupported"]),
    "custom-domain": (_custom, None, None, ["custom-op"]),
    "topk-3840": (lambda: _topk(3840), None, None, []),
    "topk-5000": (lambda: _topk(5000), None, None, ["topk-k-too-large"]),
    "expand-2^32": (lambda: _expand(BIG), None, None, ["tensor-too-large"]),
    "expand-under-2^31": (lambda: _expand([2**15, 2**16 - 1]), None, None, []),
    "batch-max-1": (_big_image, {**DYNAMIC, "max": 1}, None, []),
    "batch-max-16": (_big_image, MAX16, None, ["tensor-too-large", "tensor-too-large"]),  # input and output
    "int64-fits": (lambda: _int64(7), None, None, []),
    "int64-overflow": (lambda: _int64(2**40), None, None, ["int64-out-of-range"]),
    "slice-to-end": (_slice, None, None, []),
    "pad-reflect": (lambda: _pad("reflect"), None, None, []),
    "pad-wrap": (lambda: _pad("wrap"), None, None, []),
}
MESSAGES = {  # what the report says, for a few cases
    "dynamic-batch-declared": "optimization profile min/opt/max 1/4/4",
    "string-normalizer": "node 'n' (StringNormalizer): StringNormalizer is not supported",
    "topk-5000": "K=5000 exceeds TensorRT's TopK limit of 3840",
    "expand-2^32": "'y' from node 'n' (Expand) has shape [65536, 65536] (4,294,967,296 elements",
    "int64-fits": "WARNING [int64-constants]",
    "int64-overflow": f"INT64 constant 'c' holds {2**40}, which does not fit in int32",
    "custom-domain": "register a TensorRT plugin for FancyOp",
    "pad-wrap": "WARNING [pad-mode] node 'n' (Pad): Pad mode 'wrap'",  # imported since TensorRT 10.0
}


@pytest.mark.parametrize("case", CASES)
def test_check_onnx_for_tensorrt(tmp_path, case):
    factory, batch, shapes, expected = CASES[case]
    onnx.save(factory(), str(tmp_path / "model.onnx"))
    findings = check_onnx_for_tensorrt(tmp_path / "model.onnx", batch, shapes)
    assert [f.code for f in findings if f.level == "error"] == expected, format_findings(findings)
    assert findings[0].code == "opset" and findings[0].level == "info"
    report = format_findings(findings)
    assert report.splitlines()[-1].startswith(f"{len(expected)} error" if expected else "OK for TensorRT 10")
    assert MESSAGES.get(case, "") in report


def test_runtime_axes_and_external_data(tmp_path):
    nodes = [
        helper.make_node("Shape", ["x"], ["dims"], name="shape"),
        helper.make_node("Slice", ["dims", "zero", "one"], ["axis"], name="pick"),
        helper.make_node("ReduceMax", ["x", "axis"], ["y"], name="reduce", keepdims=1),
    ]
    model = _graph(nodes, [_v("x", [2, 1024])], [_v("y", None)], [_i64("zero", [0]), _i64("one", [1])])
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(4096, np.float32), name="weights"))
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="ext.onnx.data", size_threshold=1024)
    codes = {f.code: f.level for f in check_onnx_for_tensorrt(path)}
    assert codes["axes-not-constant"] == "error" and codes["external-data"] == "info"


def test_allow_list_formatting_batch_profile_and_deferred_settings():
    contract = "Conv Clip Add AveragePool Resize Concat MatMul ReduceMin ReduceSum ReduceMax Sqrt Pad Gather"
    assert set(contract.split()) <= SUPPORTED_OPS
    assert not {"StringNormalizer", "MatMulInteger", "ConvInteger", "Unique", "SequenceAt"} & SUPPORTED_OPS
    lines = format_findings([Finding("error", "x", "broken", "change it"), Finding("warning", "y", "odd")]).splitlines()
    assert lines == ["ERROR   [x] broken → change it", "WARNING [y] odd", lines[-1]]
    assert lines[-1].startswith("1 error, 1 warning: ") and format_findings([]) == "OK for TensorRT 10 (0 warnings)"
    assert trt_check.batch_profile({"mode": "static", "size": 3}) == (3, 3, 3)
    assert trt_check.batch_profile(DYNAMIC) == (1, 4, 4) and trt_check.batch_profile({**DYNAMIC, "opt": 2}) == (1, 2, 4)
    for bad in ({"mode": "dynamic", "max": None}, {**DYNAMIC, "opt": 9}, {"mode": "static", "size": 0}):
        with pytest.raises(ConfigError):
            trt_check.batch_profile(bad)
    settings = trt_export.deferred_build_settings("fp16", DYNAMIC, (3, 64, 64), {"memory_bank": (10, 4)})
    assert settings["input_shape"] == [3, 64, 64] and settings["sidecar_shapes"] == {"memory_bank": [10, 4]}
    assert (settings["precision"], settings["batch"], settings["workspace_mb"]) == ("fp16", DYNAMIC, 2048)
    with pytest.raises(ConfigError, match="unknown precision"):
        trt_export.deferred_build_settings("int4", DYNAMIC, (3, 64, 64), None)


# ---------------------------------------------------------------- deferred artifacts


_snapshot = lambda folder: {p.name: p.read_bytes() for p in sorted(folder.iterdir())}  # noqa: E731


@pytest.fixture
def deferred(tmp_path):
    """Factory: a deferred trt artifact of the scoring model with the build settings the exporter records."""

    def make(precision: str = "fp32") -> Path:
        folder = build_artifact(tmp_path / "artifact", target="trt", deferred=True, batch_max=4)
        onnx.save(build_scoring_model(), str(folder / "model.onnx"))
        manifest = load_manifest(folder, verify=False)
        manifest["engine"] = {"trt_version": None, "gpu": None}
        manifest["engine"]["build"] = trt_export.deferred_build_settings(precision, manifest["batch"], SHAPE, None)
        write_manifest(folder, manifest)
        return folder

    return make


def test_check_artifact(deferred, tmp_path):
    findings = trt_check.check_artifact_for_tensorrt(deferred())
    assert not [f for f in findings if f.level == "error"], format_findings(findings)
    plain = build_artifact(tmp_path / "plain", target="onnx", batch_max=None)
    codes = {f.code: f.level for f in trt_check.check_artifact_for_tensorrt(plain)}
    assert codes["batch-max-missing"] == codes["batch-profile-invalid"] == "error"
    assert codes["target-not-trt"] == "warning"


def test_build_without_tensorrt_leaves_the_artifact_untouched(deferred, monkeypatch):
    folder = deferred()
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # the import fails even where TensorRT is installed
    before = _snapshot(folder)
    assert not trt_export.tensorrt_available()
    with pytest.raises(MissingExtraError) as caught:
        trt_export.build_engine_for_artifact(folder, timing_cache=folder.parent / "timing.cache")
    assert str(caught.value) == trt_export.MISSING
    assert trt_export.MISSING.startswith("TensorRT is not installed: run pip install 'edgeiad[tensorrt]' on the device")
    assert trt_export.MISSING.endswith("that will run the engine (engines are device-specific)")
    assert _snapshot(folder) == before and not (folder.parent / "timing.cache").exists()


# ---------------------------------------------------------------- builder, against a TensorRT 10 stand-in

_KINDS = {"MatMul": "MATRIX_MULTIPLY", "Conv": "CONVOLUTION", "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DQ"}


class _Items(types.SimpleNamespace):
    """Network and layer stand-in: list-backed num_* / get_* accessors as in TensorRT's Python API."""

    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))
    num_layers = property(lambda self: len(self.layers))
    get_input = lambda self, i: self.inputs[i]  # noqa: E731
    get_output = lambda self, i: self.outputs[i]  # noqa: E731
    get_layer = lambda self, i: self.layers[i]  # noqa: E731
    set_output_type = lambda self, i, dtype: self.output_types.__setitem__(i, dtype)  # noqa: E731


class _Parser:
    """OnnxParser stand-in: one layer per supported node, one error per unsupported one."""

    def __init__(self, network, logger) -> None:
        self.network, self.errors = network, []

    def parse_from_file(self, path: str) -> bool:
        graph = onnx.shape_inference.infer_shapes(onnx.load(path)).graph
        self.network.onnx_bytes, tensors = Path(path).read_bytes(), {}
        for info in [*graph.input, *graph.value_info, *graph.output]:
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in info.type.tensor_type.shape.dim)
            dtype = {TensorProto.FLOAT: "float32"}.get(info.type.tensor_type.elem_type, "int")
            tensors[info.name] = types.SimpleNamespace(name=info.name, shape=dims, dtype=dtype)
        initializers = {t.name for t in graph.initializer}
        self.network.inputs = [tensors[v.name] for v in graph.input if v.name not in initializers]
        for n in graph.node:
            io = {"inputs": [tensors.get(t) for t in n.input], "outputs": [tensors[t] for t in n.output]}
            layer = _Items(name=n.name, type=_KINDS.get(n.op_type), precision=None, output_types={}, **io)
            self.network.layers.append(layer)
            if n.op_type not in SUPPORTED_OPS:
                desc = types.SimpleNamespace(node_name=lambda n=n: n.name, node_operator=lambda n=n: n.op_type)
                self.errors.append(types.SimpleNamespace(**vars(desc), desc=lambda: "No importer"))
        self.num_errors = len(self.errors)
        return not self.errors

    def get_error(self, index: int):
        return self.errors[index]


class _Config:
    """BuilderConfig stand-in: TF32 on by default, as on Ampere+."""

    def __init__(self) -> None:
        self.flags, self.profiles, self.cache, self.pool = {"TF32"}, [], None, None
        self.set_flag, self.clear_flag, self.get_timing_cache = self.flags.add, self.flags.discard, lambda: self.cache
        self.set_memory_pool_limit = lambda pool, size: setattr(self, "pool", (pool, size))
        self.add_optimization_profile = lambda profile: self.profiles.append(profile) or len(self.profiles) - 1

    def create_timing_cache(self, blob: bytes):
        return types.SimpleNamespace(blob=blob, serialize=lambda: b"timings:" + blob.removeprefix(b"timings:") + b".")

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        self.cache = cache if cache.blob.startswith(b"timings:") or not cache.blob else self.cache
        return self.cache is cache  # a cache from another GPU / TensorRT is refused


class _Builder:
    platform_has_fast_fp16 = True
    create_network = lambda self, flags: _Items(flags=flags, inputs=[], layers=[])  # noqa: E731
    create_builder_config = lambda self: _Config()  # noqa: E731

    def __init__(self, logger) -> None:
        self.trt = sys.modules["tensorrt"]

    def create_optimization_profile(self):
        profile = types.SimpleNamespace(shapes={})
        profile.set_shape = lambda name, *shapes: profile.shapes.__setitem__(name, tuple(map(tuple, shapes)))
        return profile

    def build_serialized_network(self, network, config):
        self.trt.builds.append((network, config))
        image = next((p.shapes["image"] for p in config.profiles if "image" in p.shapes), None)
        high = image[2][0] if image else network.inputs[0].shape[0]
        return None if self.trt.fail else MAGIC + b"%d\n" % high + network.onnx_bytes


@pytest.fixture
def fake_trt(monkeypatch):
    """tensorrt (builder + the runtime's fake engine) and pycuda stand-ins; `.builds` lists what was built."""
    trt = _fake_tensorrt()
    trt.__version__, trt.float32, trt.builds, trt.fail = "10.3.fake", "float32", [], False
    trt.Builder, trt.OnnxParser = _Builder, _Parser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(**{f: f for f in ("FP16", "INT8", "TF32", "OBEY_PRECISION_CONSTRAINTS")})
    trt.LayerType = types.SimpleNamespace(EINSUM="EINSUM", DEQUANTIZE="DQ", **{v: v for v in _KINDS.values()})
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = _fake_pycuda()
    for name, module in (("tensorrt", trt), ("pycuda", pycuda), ("pycuda.driver", pycuda.driver)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(base, "is_installed", lambda name: True)
    return trt


_pinned = lambda network: {layer.name for layer in network.layers if layer.precision == "float32"}  # noqa: E731


def test_build_engine_for_deferred_artifact(fake_trt, deferred, tmp_path):
    folder, cache = deferred(), tmp_path / "timing.cache"
    fake_trt.fail, before = True, _snapshot(folder)
    with pytest.raises(ArtifactError, match="could not build model.onnx"):
        trt_export.build_engine_for_artifact(folder, timing_cache=cache)
    assert _snapshot(folder) == before  # a failed build changes nothing
    fake_trt.fail, fake_trt.builds[:] = False, []
    engine = trt_export.build_engine_for_artifact(folder, timing_cache=cache)
    assert engine == folder / "model.engine" and engine.read_bytes().startswith(MAGIC + b"4\n")
    manifest = load_manifest(folder)  # verifies every hash, the new engine's included
    assert manifest["deferred"] is False and manifest["files"]["model"] == "model.engine"
    assert manifest["files"]["onnx"] == "model.onnx" and manifest["versions"]["tensorrt"] == "10.3.fake"
    built = manifest["engine"]
    assert (built["trt_version"], built["gpu"], built["build"]["mode"]) == ("10.3.fake", "unknown", "fp32")
    assert built["build"]["timing_cache"] == {"path": str(cache), "loaded": False}
    assert cache.read_bytes() == b"timings:."
    network, config = fake_trt.builds[-1]
    assert config.profiles[0].shapes["image"] == ((1, *SHAPE), (4, *SHAPE), (4, *SHAPE))
    assert config.flags == set() and config.pool == ("WORKSPACE", 2048 << 20)  # TF32 cleared
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert trt_export.build_engine_for_artifact(folder) == engine and len(fake_trt.builds) == 1  # built: nothing to do
    trt_export.build_engine_for_artifact(folder, timing_cache=cache, force=True)
    assert load_manifest(folder)["engine"]["build"]["timing_cache"]["loaded"] is True
    frames = [np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8) for i in range(5)]
    with Detector.load(folder, threads=1) as trt_det, Detector.load(folder, backend="onnxruntime") as ort_det:
        assert trt_det.backend_name == "tensorrt"
        for got, want in zip(trt_det.predict_batch(frames), ort_det.predict_batch(frames)):
            np.testing.assert_allclose(got.anomaly_map, want.anomaly_map, rtol=1e-6)


def test_build_engine_rechecks_parity_on_the_stored_images(fake_trt, deferred, monkeypatch):
    folder = deferred()
    frames = np.random.default_rng(3).integers(0, 256, (3, *SHAPE[1:], 3), dtype=np.uint8)
    save_file({"images": frames}, folder / trt_export.PARITY_IMAGES_FILE)
    manifest = load_manifest(folder, verify=False)
    write_manifest(folder, manifest)
    trt_export.build_engine_for_artifact(folder)
    parity = load_manifest(folder)["engine"]["parity"]
    assert parity["source"] == "stored" and parity["images"] == 3 and parity["passed"] is True
    assert parity["max_rel_map_error"] <= 1e-6 and parity["decisions_changed"] == 0
    monkeypatch.setitem(TARGETS["trt"].map_tolerance, "fp32", -1.0)  # nothing passes: the engine must go
    with pytest.raises(ArtifactError, match=r"engine differs from the ONNX .* deferred again"):
        trt_export.build_engine_for_artifact(folder, force=True)
    after = load_manifest(folder)  # still a valid, verified artifact: deferred, no engine
    assert after["deferred"] is True and after["files"]["model"] == "model.onnx"
    assert not (folder / "model.engine").exists()


def test_parser_errors_name_the_node(fake_trt, tmp_path):
    model = _one("StringNormalizer", ["x"], [4], [4], **STRING)
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ArtifactError, match=r"node n \(StringNormalizer\): No importer"):
        trt_export.build_engine(tmp_path / "bad.onnx", tmp_path / "bad.engine", "fp32", DYNAMIC, SHAPE)
    assert not list(tmp_path.glob("*.engine"))


def test_fp16_pins_the_scoring_layers_to_fp32(fake_trt, deferred):
    folder = deferred("fp16")
    trt_export.build_engine_for_artifact(folder)
    network, config = fake_trt.builds[-1]
    assert config.flags == {"FP16", "OBEY_PRECISION_CONSTRAINTS"}
    pinned = _pinned(network)
    assert {"sc_matmul", "sc_min", "sc_sqrt", "sc_resize", "sc_blur", "sc_max", "bb_relu6_2"} <= pinned
    assert not pinned & {"bb_conv1", "bb_relu6_1", "bb_conv2"}  # the backbone may run in fp16
    assert all(layer.output_types == {0: "float32"} for layer in network.layers if layer.name in pinned)
    assert load_manifest(folder)["engine"]["build"]["scoring_fp32_layers"] == len(pinned)


def _quantize_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """Put a Q/DQ pair on the image, as a backbone-quantized (explicit INT8) ONNX has."""
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["dq" if name == "image" else name for name in node.input]
    graph.node.insert(0, helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq_image"))
    graph.node.insert(0, helper.make_node("QuantizeLinear", ["image", "s", "z"], ["q"], name="q_image"))
    graph.initializer.extend([numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.int8(0), "z")])
    return model


def test_int8_explicit_qdq_strongly_typed_and_calibration(fake_trt, tmp_path):
    plain, qdq, engine = tmp_path / "plain.onnx", tmp_path / "qdq.onnx", tmp_path / "m.engine"
    onnx.save(build_scoring_model(), str(plain))
    with pytest.raises(ConfigError, match="calibration"):
        trt_export.build_engine(plain, engine, "int8", DYNAMIC, SHAPE)
    onnx.save(_quantize_input(build_scoring_model()), str(qdq))
    info = trt_export.build_engine(qdq, engine, "int8", DYNAMIC, SHAPE)
    assert info["build"]["mode"] == "int8 explicit (Q/DQ)" and fake_trt.builds[-1][1].flags == {"INT8"}
    strong = trt_export.build_engine(qdq, engine, "int8", DYNAMIC, SHAPE, strongly_typed=True)
    network, config = fake_trt.builds[-1]
    assert network.flags == 1 << 5 and config.flags == set() and strong["build"]["strongly_typed"] is True


def test_static_batch_and_sidecar_shapes(fake_trt, tmp_path):
    model, engine, static = tmp_path / "m.onnx", tmp_path / "m.engine", {"mode": "static", "size": 2, "max": 2}
    onnx.save(build_scoring_model(batch=2, sidecar=True), str(model))
    with pytest.raises(ConfigError, match="fixed at 2"):
        trt_export.build_engine(model, engine, "fp32", DYNAMIC, SHAPE)
    with pytest.raises(ConfigError, match="sidecar_shapes"):
        trt_export.build_engine(model, engine, "fp32", static, SHAPE)
    info = trt_export.build_engine(model, engine, "fp16", static, SHAPE, sidecar_shapes={"memory_bank": (BANK, DIM)})
    network, config = fake_trt.builds[-1]
    assert [p.shapes for p in config.profiles] == [{"memory_bank": ((BANK, DIM),) * 3}]  # the image is static
    assert {"sc_b2", "sc_bsq", "sc_bank_t", "sc_matmul"} <= _pinned(network)  # consumers of the sidecar bank
    assert info["build"]["sidecar_shapes"] == {"memory_bank": [BANK, DIM]} and info["build"]["batch"] == static


# ---------------------------------------------------------------- real TensorRT (GPU machines only)


@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-3), ("fp16", 3e-2)])
def test_real_tensorrt_engine_matches_onnxruntime(deferred, tmp_path, precision, tolerance):
    pytest.importorskip("tensorrt", reason=NO_TRT)
    pytest.importorskip("pycuda.driver", reason=NO_TRT)
    folder = deferred(precision)
    trt_export.build_engine_for_artifact(folder, timing_cache=tmp_path / "timing.cache")
    assert load_manifest(folder)["engine"]["trt_version"].startswith("10.")
    frames = [np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8) for i in range(6)]
    with Detector.load(folder, backend="tensorrt") as trt_det, Detector.load(folder, backend="onnxruntime") as ort_det:
        for got, want in zip(trt_det.predict_batch(frames), ort_det.predict_batch(frames)):
            np.testing.assert_allclose(got.raw_score, want.raw_score, rtol=tolerance, atol=tolerance)
