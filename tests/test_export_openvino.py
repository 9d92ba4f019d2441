"""OpenVINO export: fp32/fp16 IR parity with onnxruntime, and INT8 that leaves the scoring part in float.

`build_scoring_model` (a torch-free stand-in for an exported PatchCore graph) is shared with test_export_trt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeiad.errors import ConfigError, MissingExtraError
from edgeiad.export.openvino import GraphNode, convert_to_openvino, openvino_precision_hint, partition_scoring

SIZE, BANK, DIM = 32, 24, 16
SCORING_TYPES = {"MatMul", "ReduceMin", "ReduceSum", "Sqrt", "Maximum", "Interpolate", "Pad", "ReduceMax"}


def _const(name: str, value) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value), name=name)


def build_scoring_model(batch: int | str = "batch", sidecar: bool = False, seed: int = 0) -> onnx.ModelProto:
    """Backbone (Conv + ReLU6 twice) then PatchCore-style scoring: kNN via MatMul, ReduceMin, Sqrt, blur, max."""
    rng = np.random.default_rng(seed)
    f32, grid = np.float32, SIZE // 2
    inits = [_const("w1", rng.normal(0, 0.3, (8, 3, 3, 3)).astype(f32)), _const("b1", np.full(8, 0.1, f32))]
    inits += [_const("w2", rng.normal(0, 0.2, (DIM, 8, 3, 3)).astype(f32)), _const("b2", np.full(DIM, 0.1, f32))]
    for name, value in (("zero", 0.0), ("six", 6.0), ("minus2", -2.0)):
        inits.append(_const(name, f32(value)))
    for name, value in (("rows", [0, -1, DIM]), ("grid", [0, 1, grid, grid]), ("last", [-1]), ("axis1", [1])):
        inits.append(_const(name, np.array(value, np.int64)))
    inits += [_const("chw", np.array([1, 2, 3], np.int64)), _const("scales", np.array([1, 1, 2, 2], f32))]
    inits += [
        _const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
        _const("blur", np.full((1, 1, 3, 3), 1 / 9, f32)),
    ]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])]
    if sidecar:
        # Resizable rows, as the exporter declares them for sidecar banks.
        inputs.append(helper.make_tensor_value_info("memory_bank", TensorProto.FLOAT, ["rows", DIM]))
    else:
        inits.append(_const("memory_bank", rng.uniform(0, 3, (BANK, DIM)).astype(f32)))
    node = helper.make_node
    nodes = [
        node("Conv", ["image", "w1", "b1"], ["c1"], name="bb_conv1", pads=[1, 1, 1, 1]),
        node("Clip", ["c1", "zero", "six"], ["r1"], name="bb_relu6_1"),
        node("Conv", ["r1", "w2", "b2"], ["c2"], name="bb_conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        node("Clip", ["c2", "zero", "six"], ["features"], name="bb_relu6_2"),
        node("Transpose", ["features"], ["nhwc"], name="sc_permute", perm=[0, 2, 3, 1]),
        node("Reshape", ["nhwc", "rows"], ["queries"], name="sc_rows"),
        node("Mul", ["queries", "queries"], ["q2"], name="sc_q2"),
        node("ReduceSum", ["q2", "last"], ["qsq"], name="sc_qsq", keepdims=1),
        node("Mul", ["memory_bank", "memory_bank"], ["b2sq"], name="sc_b2"),
        node("ReduceSum", ["b2sq", "axis1"], ["bsq"], name="sc_bsq", keepdims=0),
        node("Transpose", ["memory_bank"], ["bank_t"], name="sc_bank_t", perm=[1, 0]),
        node("MatMul", ["queries", "bank_t"], ["cross"], name="sc_matmul"),
        node("Mul", ["cross", "minus2"], ["cross2"], name="sc_cross2"),
        node("Add", ["qsq", "cross2"], ["partial"], name="sc_add1"),
        node("Add", ["partial", "bsq"], ["squared"], name="sc_add2"),
        node("ReduceMin", ["squared", "last"], ["nearest"], name="sc_min", keepdims=0),
        node("Max", ["nearest", "zero"], ["clamped"], name="sc_clamp"),
        node("Sqrt", ["clamped"], ["distance"], name="sc_sqrt"),
        node("Reshape", ["distance", "grid"], ["patch"], name="sc_grid"),
        node("Resize", ["patch", "", "scales"], ["upsampled"], name="sc_resize", mode="linear"),
        node("Pad", ["upsampled", "pads"], ["padded"], name="sc_pad", mode="reflect"),
        node("Conv", ["padded", "blur"], ["anomaly_map"], name="sc_blur"),
        node("ReduceMax", ["anomaly_map", "chw"], ["pred_score"], name="sc_max", keepdims=0),
    ]
    outputs = [
        helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [batch, 1, SIZE, SIZE]),
        helper.make_tensor_value_info("pred_score", TensorProto.FLOAT, [batch]),
    ]
    graph = helper.make_graph(nodes, "scoring", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="edgeiad-tests")
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def bank(rows: int = BANK) -> np.ndarray:
    """A memory bank to feed the sidecar variant (its rows are resizable)."""
    return np.random.default_rng(3).uniform(0, 3, (rows, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def ov():
    return pytest.importorskip("openvino", reason="the openvino extra is not installed")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    paths = {}
    for name, sidecar in (("baked", False), ("sidecar", True)):
        paths[name] = folder / f"{name}.onnx"
        onnx.save(build_scoring_model(sidecar=sidecar), str(paths[name]))
    return paths


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, (3, 3, SIZE, SIZE)).astype(np.float32)


def _reference(path: Path, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def _run_ir(ov, xml: Path, feeds: dict) -> list[np.ndarray]:
    # The runtime always pins the hint; unpinned, a bf16-capable CPU would silently compute in bf16.
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    compiled = ov.Core().compile_model(ov.Core().read_model(str(xml)), "CPU", config)
    result = compiled(feeds)
    return [result["anomaly_map"], result["pred_score"]]


def test_precision_hint():
    assert [openvino_precision_hint(p) for p in ("fp32", "fp16", "int8")] == ["f32", "f16", "f32"]
    with pytest.raises(ConfigError, match="unknown precision"):
        openvino_precision_hint("bf16")


@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-4), ("fp16", 1e-2)])
def test_fp32_and_fp16_match_onnxruntime(ov, models, images, tmp_path, precision, tolerance):
    info = convert_to_openvino(models["baked"], tmp_path, precision)
    assert info["precision_hint"] == openvino_precision_hint(precision) and info["int8"] is None
    assert info["compress_to_fp16"] is (precision == "fp16") and info["openvino"] == ov.get_version()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]  # no temporary leftovers
    expected = _reference(models["baked"], {"image": images})
    for got, want in zip(_run_ir(ov, tmp_path / "model.xml", {"image": images}), expected):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


def _consumers(op) -> list:
    return [target.get_node() for output in op.outputs() for target in output.get_target_inputs()]


def assert_scoring_unquantized(ov, xml: Path) -> int:
    """No FakeQuantize feeds the distance part: from every FQ, the graph reaches a convolution first."""
    ops = ov.Core().read_model(str(xml)).get_ordered_ops()
    quantizers = [op for op in ops if op.get_type_name() == "FakeQuantize"]
    for op in ops:
        if op.get_type_name() in ("MatMul", "ReduceMin"):
            producers = [port.get_source_output().get_node().get_type_name() for port in op.inputs()]
            assert "FakeQuantize" not in producers, op.get_friendly_name()
    for quantizer in quantizers:
        stack, reached = _consumers(quantizer), set()
        while stack:
            op = stack.pop()
            if op.get_type_name() not in ("Convolution", "GroupConvolution"):  # the backbone continues there
                reached.add(op.get_type_name())
                stack.extend(_consumers(op))
        assert not reached & SCORING_TYPES, (quantizer.get_friendly_name(), reached & SCORING_TYPES)
    return len(quantizers)


@pytest.mark.parametrize("variant", ["baked-graph-split", "sidecar-caller-names"])
def test_int8_quantizes_only_the_backbone(ov, models, images, tmp_path, variant):
    sidecar = variant.startswith("sidecar")
    path = models["sidecar" if sidecar else "baked"]
    graph = onnx.load(str(path)).graph
    names = [node.name for node in graph.node if not node.name.startswith("bb_")] if sidecar else None
    calibration = np.random.default_rng(2).uniform(-1, 1, (6, 3, SIZE, SIZE)).astype(np.float32)
    info = convert_to_openvino(path, tmp_path, "int8", calibration, scoring_nodes=names)
    int8 = info["int8"]
    assert info["precision_hint"] == "f32" and info["compress_to_fp16"] is False
    assert int8["subset_size"] == 6 and int8["scoring_from"] == ("caller" if sidecar else "graph")
    assert assert_scoring_unquantized(ov, tmp_path / "model.xml") == int8["fake_quantize"] > 0
    feeds = {"image": images, **({"memory_bank": bank()} if sidecar else {})}
    got, expected = _run_ir(ov, tmp_path / "model.xml", feeds), _reference(path, feeds)
    np.testing.assert_allclose(got[1], expected[1], rtol=5e-2)  # only the backbone moved
    np.testing.assert_allclose(got[0], expected[0], atol=0.2)


def test_int8_keeps_the_named_float_prefix_out_of_quantization(ov, models, images, tmp_path):
    """The backbone's first blocks stay fp32 on OpenVINO too (BackboneSpec.int8_fp32_blocks): no FakeQuantize
    lies upstream of the prefix's convolution, the convolution after it is quantized, and the scoring part stays
    float."""
    calibration = np.random.default_rng(2).uniform(-1, 1, (6, 3, SIZE, SIZE)).astype(np.float32)
    prefix = ["bb_conv1", "bb_relu6_1"]
    info = convert_to_openvino(models["baked"], tmp_path, "int8", calibration, fp32_nodes=prefix)
    assert info["int8"]["fp32_prefix_ops"] >= 3 and info["int8"]["fake_quantize"] > 0
    ops = ov.Core().read_model(str(tmp_path / "model.xml")).get_ordered_ops()

    def upstream_types(op, seen):
        for port in op.inputs():
            parent = port.get_source_output().get_node()
            if parent.get_friendly_name() not in seen:
                seen.add(parent.get_friendly_name())
                yield parent.get_type_name()
                yield from upstream_types(parent, seen)

    first, second = [op for op in ops if op.get_type_name() == "Convolution"][:2]  # the blur comes after them
    assert "FakeQuantize" not in set(upstream_types(first, set()))
    assert "FakeQuantize" in {port.get_source_output().get_node().get_type_name() for port in second.inputs()}
    assert_scoring_unquantized(ov, tmp_path / "model.xml")
    got, expected = (
        _run_ir(ov, tmp_path / "model.xml", {"image": images}),
        _reference(models["baked"], {"image": images}),
    )
    np.testing.assert_allclose(got[1], expected[1], rtol=5e-2)
    with pytest.raises(ConfigError, match="not found"):
        convert_to_openvino(models["baked"], tmp_path / "x", "int8", calibration, fp32_nodes=["no_such_node"])


def test_without_the_ignored_scope_nncf_would_quantize_the_distance(ov, models):
    nncf = pytest.importorskip("nncf")
    from edgeiad.export.openvino import quantized_scoring_inputs, scoring_ops

    model = ov.convert_model(str(models["baked"]))
    scoring = scoring_ops(model)
    assert {"sc_matmul", "sc_min", "sc_sqrt", "anomaly_map", "pred_score"} <= scoring  # blur, max renamed
    assert not {"bb_conv1", "bb_relu6_1"} & scoring
    calibration = np.zeros((2, 3, SIZE, SIZE), np.float32)
    quantized = nncf.quantize(model, nncf.Dataset([{"image": c[None]} for c in calibration]), subset_size=2)
    # What the ignored scope prevents: the features entering the distance and the distance itself get quantized.
    assert {"sc_permute", "sc_qsq", "sc_sqrt"} <= set(quantized_scoring_inputs(quantized, scoring))


def test_int8_errors(ov, models, tmp_path, monkeypatch):
    calibration = np.zeros((2, 3, SIZE, SIZE), np.float32)
    with pytest.raises(ConfigError, match="calibration"):
        convert_to_openvino(models["baked"], tmp_path, "int8")
    with pytest.raises(ConfigError, match="not found"):
        convert_to_openvino(models["baked"], tmp_path, "int8", calibration, scoring_nodes=["no_such_node"])
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'edgeiad\[openvino\]'"):
        convert_to_openvino(models["baked"], tmp_path, "int8", calibration)
    assert not list(tmp_path.iterdir())  # nothing written on failure


def test_partition_scoring():
    def node(name, kind, inputs, outputs):
        return GraphNode(name, kind, tuple(inputs), tuple(outputs))

    nodes = [
        node("conv1", "conv", ["image"], ["a"]),
        node("relu", "other", ["a"], ["b"]),
        node("conv2/WithoutBiases", "conv", ["b"], ["c0"]),  # a converter's unnamed half of a Conv
        node("conv2", "other", ["c0"], ["c"]),
        node("pool", "other", ["c"], ["d"]),
        node("matmul", "matmul", ["d", "bank"], ["e"]),
        node("blur", "conv", ["e"], ["f"]),
        node("max", "other", ["f"], ["score"]),
    ]
    assert partition_scoring(nodes, {"matmul"}) == {"conv2", "pool", "matmul", "blur", "max"}
    with pytest.raises(ConfigError, match="cannot locate the scoring part"):
        partition_scoring(nodes, set())
