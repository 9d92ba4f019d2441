"""ONNX → OpenVINO IR (fp32, fp16 weights, or NNCF INT8 of the backbone [and search]) and the scoring/backbone split.

The split is shared with the TensorRT builder: every node that does not feed a backbone convolution is
"scoring" (kNN / Mahalanobis distance, upsampling, blur, max) and must stay in float, because quantizing
the distance part collapses image AUROC to 0.5 (measured on PatchCore and PaDiM).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, ConfigError, require
from ..quiet import silenced

PRECISIONS = ("fp32", "fp16", "int8")
EXTRA = "openvino"
INPUT_NAME = "image"
_HINTS = {"fp32": "f32", "fp16": "f16", "int8": "f32"}
_OV_MATMUL = {"MatMul", "Einsum"}
_OV_CONV = {"Convolution", "GroupConvolution"}


@dataclass(frozen=True)
class GraphNode:
    """A framework-neutral graph node: kind is 'matmul', 'conv' or 'other'; tensors are unique ids."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def partition_scoring(nodes: list[GraphNode], seeds: Iterable[str]) -> set[str]:
    """Names of the scoring nodes: everything except the backbone convolutions and their ancestors.

    `seeds` are nodes known to be scoring (the distance MatMul, consumers of statistics inputs, or the
    nodes a caller named); everything downstream of them is scoring too. Working backwards from the
    remaining convolutions (rather than forwards from the seeds) also catches helper nodes a converter
    invents without names, e.g. OpenVINO's Convolution/WithoutBiases of the blur.
    """
    seeds = set(seeds)
    if not seeds:
        raise ConfigError(
            "cannot locate the scoring part of the graph (no MatMul/Einsum and no statistics input): "
            "pass the scoring node names explicitly"
        )
    by_name = {node.name: node for node in nodes}
    producer = {tensor: node for node in nodes for tensor in node.outputs}
    consumers: dict[str, list[GraphNode]] = defaultdict(list)
    for node in nodes:
        for tensor in node.inputs:
            consumers[tensor].append(node)
    downstream = _closure([by_name[name] for name in seeds if name in by_name], lambda n: _next(n, consumers))
    convs = [node for node in nodes if node.kind == "conv" and node.name not in downstream]
    backbone = _closure(convs, lambda n: [producer[t] for t in n.inputs if t in producer])
    return {node.name for node in nodes} - backbone


def _next(node: GraphNode, consumers: dict[str, list[GraphNode]]) -> list[GraphNode]:
    return [after for tensor in node.outputs for after in consumers.get(tensor, ())]


def _closure(start: list[GraphNode], step) -> set[str]:
    seen, stack = set(), list(start)
    while stack:
        node = stack.pop()
        if node.name not in seen:
            seen.add(node.name)
            stack.extend(step(node))
    return seen


def default_seeds(nodes: list[GraphNode], stats_inputs: set[str]) -> set[str]:
    """The distance part's entry points: MatMul-like nodes and every consumer of a statistics input."""
    return {node.name for node in nodes if node.kind == "matmul" or stats_inputs & set(node.inputs)}


def openvino_precision_hint(precision: str) -> str:
    """INFERENCE_PRECISION_HINT for an artifact precision: 'f16' for fp16, else 'f32' (never the bf16 default)."""
    if precision not in _HINTS:
        raise ConfigError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return _HINTS[precision]


def convert_to_openvino(
    onnx_path: Path,
    out_dir: Path,
    precision: str,
    calibration: np.ndarray | None = None,
    scoring_nodes: list[str] | None = None,
    stats: dict[str, np.ndarray] | None = None,
    fp32_nodes: list[str] | None = None,
    int8_scoring_nodes: list[str] | None = None,
    int8_backbone: bool = True,
) -> dict:
    """Write out_dir/model.xml + model.bin from an ONNX file; INT8 quantizes the backbone (and the scoring MatMuls
    named in `int8_scoring_nodes`: PatchCore's lifted search, models/patchcore/lifted.py); `int8_backbone=False`
    quantizes those MatMuls alone.

    `scoring_nodes` are ONNX node (or output tensor) names of the scoring part; without them the split is
    found from the graph (see partition_scoring). `stats` feeds sidecar inputs during calibration; zeros
    of the declared shape are used otherwise, which is harmless because nothing downstream is measured.
    `fp32_nodes` name the backbone's first nodes that INT8 keeps in float (BackboneSpec.int8_fp32_blocks); they,
    and everything they are computed from, join NNCF's ignored scope.
    """
    hint = openvino_precision_hint(precision)
    ov = require("openvino", EXTRA)
    nncf = require("nncf", EXTRA) if precision == "int8" else None
    if precision == "int8" and (calibration is None or len(calibration) == 0):
        raise ConfigError("OpenVINO INT8 needs calibration images (an N×3×H×W float32 array); export fp32 or fp16")
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:  # OpenVINO raises bare RuntimeError/OpConversionFailure subclasses
        raise ArtifactError(f"OpenVINO cannot convert {onnx_path} ({exc})") from None
    int8 = None
    if nncf is not None:
        seeds = _seeds_from_onnx(onnx_path, scoring_nodes) if scoring_nodes is not None else None
        prefix = _seeds_from_onnx(onnx_path, fp32_nodes) if fp32_nodes else set()
        search = _seeds_from_onnx(onnx_path, int8_scoring_nodes) if int8_scoring_nodes else set()
        model, int8 = quantize_backbone(
            model, np.asarray(calibration, np.float32), seeds, stats, prefix, search, int8_backbone
        )
    _save_atomic(ov, model, Path(out_dir), compress_to_fp16=(precision == "fp16"))
    return {
        "precision_hint": hint,
        "openvino": ov.get_version(),
        "compress_to_fp16": precision == "fp16",
        "int8": int8,
    }


def _save_atomic(ov, model, out_dir: Path, compress_to_fp16: bool) -> None:
    # Save into a hidden temporary folder first, so a failed save never leaves a half-written IR pair.
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".openvino.") as scratch:
        ov.save_model(model, str(Path(scratch) / "model.xml"), compress_to_fp16=compress_to_fp16)
        os.replace(Path(scratch) / "model.bin", out_dir / "model.bin")
        os.replace(Path(scratch) / "model.xml", out_dir / "model.xml")


def _seeds_from_onnx(onnx_path: Path, names: list[str]) -> set[str]:
    """ONNX output tensor names of the named scoring nodes (OpenVINO keeps tensor names, not node names)."""
    onnx = require("onnx", "train")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    outputs = {node.name: list(node.output) for node in graph.node if node.name}
    tensors = {tensor for node in graph.node for tensor in node.output}
    unknown = [name for name in names if name not in outputs and name not in tensors]
    if unknown:
        raise ConfigError(f"scoring nodes not found in {onnx_path.name}: {unknown[:5]} (pass ONNX node names)")
    return {tensor for name in names for tensor in outputs.get(name, [name])}


def openvino_graph(model) -> tuple[list[GraphNode], set[str], dict[str, set[str]]]:
    """The OpenVINO model as GraphNodes keyed by friendly name (NNCF's node names), plus stats inputs.

    Also returns each node's output tensor names, which are the ONNX tensor names the model came from.
    """
    nodes, names = [], {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        inputs = tuple(_tensor_id(port.get_source_output()) for port in op.inputs())
        outputs = tuple(_tensor_id(port) for port in op.outputs())
        group = "matmul" if kind in _OV_MATMUL else "conv" if kind in _OV_CONV else "other"
        nodes.append(GraphNode(op.get_friendly_name(), group, inputs, outputs))
        names[op.get_friendly_name()] = {name for port in op.outputs() for name in port.get_names()}
    stats_inputs = {
        _tensor_id(param.output(0)) for param in model.get_parameters() if INPUT_NAME not in param.output(0).get_names()
    }
    return nodes, stats_inputs, names


def _tensor_id(port) -> str:
    # Internal node names are unique where friendly names and tensor names need not be.
    return f"{port.get_node().get_name()}:{port.get_index()}"


def scoring_ops(model, seed_tensors: set[str] | None = None) -> set[str]:
    """Friendly names of the OpenVINO ops that make up the scoring part (to be left unquantized)."""
    nodes, stats_inputs, names = openvino_graph(model)
    if seed_tensors is None:
        seeds = default_seeds(nodes, stats_inputs)
    else:
        seeds = {name for name, tensors in names.items() if tensors & seed_tensors}
        if not seeds:
            raise ConfigError("none of the given scoring nodes exists in the OpenVINO model: cannot keep it in float")
    return partition_scoring(nodes, seeds)


def prefix_ops(model, tensors: set[str]) -> set[str]:
    """Friendly names of the OpenVINO ops that produce one of these ONNX tensors, and of every op upstream of them.

    Matching by tensor name alone would miss ops the conversion split off without a name (a Conv's bias Add
    carries the ONNX output; the Convolution before it does not), so the walk goes up the graph from the matches.
    """
    nodes, _stats, names = openvino_graph(model)
    seeds = {name for name, produced in names.items() if produced & tensors}
    if tensors and not seeds:
        raise ConfigError("none of the float prefix's nodes exists in the OpenVINO model: cannot keep it in float")
    producer = {tensor: node for node in nodes for tensor in node.outputs}
    by_name = {node.name: node for node in nodes}
    found, stack = set(seeds), list(seeds)
    while stack:
        for tensor in by_name[stack.pop()].inputs:
            parent = producer.get(tensor)
            if parent is not None and parent.name not in found:
                found.add(parent.name)
                stack.append(parent.name)
    return found


def quantize_backbone(
    model,
    calibration: np.ndarray,
    seed_tensors: set[str] | None = None,
    stats: dict[str, np.ndarray] | None = None,
    fp32_tensors: set[str] = frozenset(),
    search_tensors: set[str] = frozenset(),
    backbone: bool = True,
) -> tuple[object, dict]:
    """NNCF post-training INT8 with the scoring part, and the float prefix that produces `fp32_tensors`, in the
    ignored scope; the MatMuls that produce `search_tensors` (the lifted search's cross terms) are taken out of
    it and quantized; `backbone=False` leaves every other op in the ignored scope. Returns (model, facts)."""
    nncf = require("nncf", EXTRA)
    search = matmul_ops(model, set(search_tensors))
    if backbone:
        prefix = prefix_ops(model, set(fp32_tensors))
        ignored = (scoring_ops(model, seed_tensors) - search) | prefix
    elif search:
        prefix, ignored = set(), {op.get_friendly_name() for op in model.get_ops()} - search
    else:
        raise ConfigError("OpenVINO INT8 with the backbone in float needs search MatMuls to quantize")
    items = _calibration_items(model, calibration, stats or {})
    quiet, level = logging.getLogger("nncf"), logging.getLogger("nncf").level
    quiet.setLevel(logging.WARNING)  # NNCF logs every ignored node at INFO: noise in the export output
    try:
        with silenced():  # NNCF draws its own progress bars on stdout
            quantized = nncf.quantize(
                model,
                nncf.Dataset(items),
                preset=nncf.QuantizationPreset.PERFORMANCE,
                subset_size=len(items),
                # validate=False: some listed ops (shape helpers, constants) are not quantizable; NNCF would refuse.
                ignored_scope=nncf.IgnoredScope(names=sorted(ignored), validate=False),
            )
    finally:
        quiet.setLevel(level)
    leaks = quantized_scoring_inputs(quantized, ignored)
    if leaks:
        raise ArtifactError(f"NNCF quantized inputs of the scoring part ({leaks[:3]}): refusing an INT8 IR")
    return quantized, {
        "method": f"nncf post-training, preset performance, {_scope(backbone, bool(search))}",
        "search_matmuls": len(search),
        "nncf": nncf.__version__,
        "calibration_images": int(len(calibration)),
        "subset_size": len(items),
        "ignored_ops": len(ignored),
        "fp32_prefix_ops": len(prefix),
        "fake_quantize": sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops()),
        "scoring_from": "caller" if seed_tensors is not None else "graph",
    }


def _scope(backbone: bool, search: bool) -> str:
    if backbone:
        return "backbone and search cross term" if search else "backbone only"
    return "search cross term only, backbone fp32"


def matmul_ops(model, tensors: set[str]) -> set[str]:
    """Friendly names of the MatMul ops that produce one of these ONNX tensors; each tensor must have one."""
    if not tensors:
        return set()
    nodes, _stats, names = openvino_graph(model)
    found = {node.name for node in nodes if node.kind == "matmul" and names[node.name] & tensors}
    if len(found) != len(tensors):
        raise ArtifactError(
            f"OpenVINO: {len(tensors)} search MatMuls to quantize, {len(found)} found in the converted model: "
            "report this model; export fp32 meanwhile"
        )
    return found


def quantized_scoring_inputs(model, scoring: set[str]) -> list[str]:
    """Scoring ops fed directly by a FakeQuantize (must be empty for a usable INT8 model)."""
    leaks = []
    for op in model.get_ops():
        if op.get_friendly_name() in scoring and op.get_type_name() != "FakeQuantize":
            producers = [port.get_source_output().get_node() for port in op.inputs()]
            if any(p.get_type_name() == "FakeQuantize" for p in producers):
                leaks.append(op.get_friendly_name())
    return leaks


def _calibration_items(model, calibration: np.ndarray, stats: dict[str, np.ndarray]) -> list[dict]:
    """NNCF data items: batches of the model's static batch size (1 when dynamic) plus sidecar inputs."""
    if calibration.ndim != 4 or calibration.shape[1] != 3:
        raise ConfigError(f"calibration images must be N×3×H×W, got shape {calibration.shape}")
    feeds = {}
    batch = 1
    for param in model.get_parameters():
        name = param.output(0).get_any_name()
        shape = param.get_partial_shape()
        if name == INPUT_NAME:
            batch = shape[0].get_length() if shape[0].is_static else 1
        elif name in stats:
            feeds[name] = np.asarray(stats[name], dtype=param.get_element_type().to_dtype())
        elif shape.rank.is_static:
            # Zeros are harmless: the scoring part that reads them is ignored, so nothing after them is measured.
            # A resizable axis (e.g. memory-bank rows) gets length 1.
            dims = [dim.get_length() if dim.is_static else 1 for dim in shape]
            feeds[name] = np.zeros(dims, dtype=param.get_element_type().to_dtype())
        else:
            raise ConfigError(f"INT8 calibration needs a value for the statistics input {name!r} (unknown rank)")
    if len(calibration) < batch:
        raise ConfigError(f"INT8 calibration needs at least {batch} images for a static batch of {batch}")
    count = len(calibration) // batch  # a static batch cannot take a shorter last chunk
    return [{INPUT_NAME: calibration[i * batch : (i + 1) * batch], **feeds} for i in range(count)]
