"""Will this ONNX build with TensorRT 10? Static checks that need only `onnx` (no TensorRT, no GPU).

The op allow-list and restrictions follow onnx-tensorrt's docs/operators.md for TensorRT 10.0/10.1
(github.com/onnx/onnx-tensorrt, release 10.1 GA) and its importers (onnxOpImporters.cpp, onnxOpCheckers.cpp).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partialmethod
from pathlib import Path

import numpy as np

from ..errors import ConfigError, require

# Rows marked "Y" in onnx-tensorrt docs/operators.md (TensorRT 10.1): anything else is not imported.
SUPPORTED_OPS = frozenset(
    """Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil
    Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
    DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
    GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
    GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf
    IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
    MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot
    Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
    ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
    ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
    Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu
    Unsqueeze Upsample Where Xor""".split()
)
OPSET_RANGE = (9, 20)  # "TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20"
TOPK_MAX_K = 3840  # ITopKLayer's limit on K
MAX_VOLUME = 2**31  # TensorRT indexes tensors with int32: every tensor must have fewer elements
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
_SLICE_SENTINELS = [2**63 - 1, -(2**63)]  # "to the end" markers the parser clamps; harmless in Slice
_PAD_MODES = ("constant", "reflect", "edge")
# Inputs the parser needs as build-time constants (docs: "`axes` must be an initializer").
_CONSTANT_INPUTS = {"Slice": 3, "Pad": 3, **{op: 1 for op in SUPPORTED_OPS if op.startswith("Reduce")}}
_DEFAULT_DOMAINS = ("", "ai.onnx")
_EXTERNAL, _INT64 = 1, 7  # TensorProto.EXTERNAL, TensorProto.INT64
INPUT_NAME = "image"


@dataclass(frozen=True)
class Finding:
    """One check result: level is 'error' (will not build), 'warning' (may misbehave) or 'info'."""

    level: str
    code: str
    message: str
    fix: str = ""


class _Report(list):
    """Findings in the order found, with one short method per level."""

    def add(self, level: str, code: str, message: str, fix: str = "") -> None:
        self.append(Finding(level, code, message, fix))

    error = partialmethod(add, "error")
    warning = partialmethod(add, "warning")
    info = partialmethod(add, "info")


def batch_profile(batch: dict) -> tuple[int, int, int]:
    """(min, opt, max) of the image batch: static size, or 1 / opt-or-max / max for a dynamic batch."""
    if batch.get("mode") == "static":
        size = batch.get("size")
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"static batch needs a positive 'size', got {batch!r}")
        return size, size, size
    high = batch.get("max")
    if batch.get("mode") != "dynamic" or not isinstance(high, int) or high < 1:
        raise ConfigError(f"batch {batch!r} is invalid: use mode static with size, or mode dynamic with max ≥ 1")
    opt = batch.get("opt") or high
    if not isinstance(opt, int) or not 1 <= opt <= high:
        raise ConfigError(f"batch opt {opt!r} must be an integer between 1 and max {high}")
    return 1, opt, high


def check_onnx_for_tensorrt(
    onnx_path: Path, declared_batch: dict | None = None, declared_shapes: dict[str, tuple] | None = None
) -> list[Finding]:
    """Everything in the ONNX file that would stop (errors) or worry (warnings) a TensorRT 10 build.

    `declared_shapes` fixes statistics inputs with a resizable axis (e.g. memory-bank rows), as the
    builder's sidecar_shapes do in the optimization profile.
    """
    onnx = require("onnx", "train")
    model = onnx.load(str(onnx_path), load_external_data=False)
    out = _Report()
    _check_header(model, out)
    batch_value = _check_inputs(model.graph, declared_batch, declared_shapes or {}, out)
    constants = _constants(model.graph)
    _check_nodes(model.graph, constants, out)
    _check_int64(model.graph, constants, out)
    for tensor in model.graph.initializer:
        _check_volume(tensor.name, list(tensor.dims), "initializer", out)
    _check_shapes(onnx, model, batch_value, out)
    return list(out)


def _check_header(model, out: _Report) -> None:
    opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), None)
    out.info("opset", f"default-domain opset {opset}, IR version {model.ir_version}")
    low, high = OPSET_RANGE
    if opset is not None and not low <= opset <= high:
        message = f"opset {opset} is outside {low}..{high}, the range TensorRT 10.0 documents"
        out.warning("opset-range", message, f"re-export with opset_version between {low} and {high} (e.g. 18)")
    external = [t.name for t in model.graph.initializer if t.data_location == _EXTERNAL]
    if external:
        message = f"{len(external)} initializers are stored as external data (e.g. {external[0]!r})"
        out.info("external-data", message, "keep the .data file next to model.onnx: parse_from_file reads it there")


def _dims(value_info) -> list | None:
    """Dims as ints (static) or strings (symbolic / unknown); None when the shape itself is unknown."""
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim]


def _check_inputs(graph, declared: dict | None, shapes: dict, out: _Report) -> int | None:
    """Static dims everywhere except a declared batch or shape; returns the batch to evaluate volumes at."""
    initializers = {t.name for t in graph.initializer}
    batch_value = None
    for value_info in graph.input:
        name, dims = value_info.name, _dims(value_info)
        if name in initializers:
            continue
        if dims is None:
            out.error("input-shape-unknown", f"input {name!r} has no shape", "re-export with explicit input shapes")
            continue
        if name != INPUT_NAME and name in shapes:
            _fix_declared_shape(value_info, dims, [int(d) for d in shapes[name]], out)
            continue
        start = 0
        if name == INPUT_NAME and dims:
            start, batch_value = 1, _check_batch_dim(dims[0], declared, out)
        for axis, dim in enumerate(dims[start:], start):
            if not isinstance(dim, int) or dim < 1:
                fix = "export with a fixed image size and fixed statistics shapes; only the batch may vary"
                out.error("dynamic-dim", f"input {name!r} dim {axis} is dynamic ({dim!r})", fix)
    return batch_value


def _fix_declared_shape(value_info, dims: list, fixed: list[int], out: _Report) -> None:
    """A statistics input whose dynamic axes the profile pins to `fixed`; inference then uses it."""
    if len(dims) != len(fixed) or any(isinstance(d, int) and d != f for d, f in zip(dims, fixed)):
        message = f"input {value_info.name!r} has dims {dims} but the declared shape is {fixed}"
        out.error("declared-shape-mismatch", message, "re-export, or declare the statistics' real shape")
        return
    if dims != fixed:
        out.info("declared-shape", f"input {value_info.name!r} {dims} → fixed at {fixed} in the profile")
    for dim, value in zip(value_info.type.tensor_type.shape.dim, fixed):
        dim.dim_value = value


def _check_batch_dim(dim, declared: dict | None, out: _Report) -> int | None:
    mode = (declared or {}).get("mode")
    if isinstance(dim, int) and dim > 0:
        if mode == "dynamic":
            message = f"batch is declared dynamic but the ONNX fixes it at {dim}"
            out.error("batch-mismatch", message, "re-export with --batch dynamic:N, or declare the static batch")
        return dim
    if mode not in ("dynamic", "static"):
        message = f"image batch dim {dim!r} is dynamic and no batch profile is declared"
        fix = "declare batch mode 'dynamic' with a 'max' (export --batch dynamic:N) or export a static batch"
        out.error("batch-profile-missing", message, fix)
        return None
    try:
        low, opt, high = batch_profile(declared)
    except ConfigError as exc:
        out.error("batch-profile-invalid", str(exc), "declare batch max (and opt ≤ max)")
        return None
    out.info("batch-profile", f"image batch {dim!r} → optimization profile min/opt/max {low}/{opt}/{high}")
    return high


def _constants(graph) -> dict:
    """Build-time constant tensors: initializers and Constant node values, by output name."""
    from onnx import helper, numpy_helper

    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        attr = node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 else None
        if attr is not None and attr.name == "value":
            found[node.output[0]] = attr.t
        elif attr is not None and attr.name in ("value_int", "value_ints", "value_float", "value_floats"):
            found[node.output[0]] = numpy_helper.from_array(np.array(helper.get_attribute_value(attr)))
    return found


def _value(tensor) -> np.ndarray | None:
    from onnx import numpy_helper

    # External data was not loaded: its values are unknown here.
    return None if tensor.data_location == _EXTERNAL else numpy_helper.to_array(tensor)


def _label(node, index: int) -> str:
    return f"node {node.name!r} ({node.op_type})" if node.name else f"node #{index} ({node.op_type} → {node.output[0]})"


def _check_nodes(graph, constants: dict, out: _Report) -> None:
    """Op support and the per-op restrictions that matter for our graphs; recurses into If/Loop/Scan bodies."""
    for index, node in enumerate(graph.node):
        label = _label(node, index)
        if node.domain not in _DEFAULT_DOMAINS:
            fix = f"replace it with standard ONNX ops, or register a TensorRT plugin for {node.op_type}"
            out.error("custom-op", f"{label} is from domain {node.domain!r}", fix)
        elif node.op_type not in SUPPORTED_OPS:
            message = f"{label}: {node.op_type} is not supported by the TensorRT 10 ONNX parser"
            out.error("op-unsupported", message, f"replace {node.op_type} with supported ops")
        else:
            _check_restrictions(node, label, constants, out)
        for attr in node.attribute:
            for body in [attr.g] if attr.HasField("g") else list(attr.graphs):
                _check_nodes(body, {**constants, **_constants(body)}, out)


def _attr(node, name: str, default):
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _check_restrictions(node, label: str, constants: dict, out: _Report) -> None:
    op = node.op_type
    if op == "TopK":
        _check_topk(node, label, constants, out)
    mode = _attr(node, "mode", "constant") if op == "Pad" else "constant"
    if mode not in _PAD_MODES:
        report = out.warning if mode == "wrap" else out.error  # onnx-tensorrt 10 imports wrap; older parsers don't
        report("pad-mode", f"{label}: Pad mode {mode!r}", f"use one of {', '.join(_PAD_MODES)} (reflect for the blur)")
    if op == "Resize" and (
        _attr(node, "antialias", 0) or _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch"
    ):
        fix = "resize without antialiasing, keep_aspect_ratio_policy 'stretch'"
        out.error("resize-attr", f"{label}: antialias or keep_aspect_ratio_policy is set", fix)
    position = _CONSTANT_INPUTS.get(op)
    if position is not None and len(node.input) > position and node.input[position] not in ("", *constants):
        message = f"{label}: input {position} (axes) is computed at run time"
        out.error("axes-not-constant", message, "make axes an initializer (constant-fold the graph)")
    if op in ("AveragePool", "MaxPool") and len(_attr(node, "kernel_shape", [])) not in (2, 3):
        out.error("pool-rank", f"{label}: only 2D or 3D pooling is supported", "reshape to 4D/5D around the pooling")
    zero = constants.get(node.input[2]) if op.endswith("QuantizeLinear") and len(node.input) > 2 else None
    values = _value(zero) if zero is not None else None
    if values is not None and np.any(values != 0):
        out.error("qdq-zero-point", f"{label}: non-zero zero point", "quantize symmetrically (zero point 0)")


def _check_topk(node, label: str, constants: dict, out: _Report) -> None:
    if len(node.input) > 1 and node.input[1] not in constants:
        out.error("topk-k-dynamic", f"{label}: K is computed at run time", "make K a constant (an initializer)")
        return
    values = _value(constants[node.input[1]]) if len(node.input) > 1 else np.array([_attr(node, "k", 1)])
    if values is not None and values.size and int(np.max(values)) > TOPK_MAX_K:
        message = f"{label}: K={int(np.max(values))} exceeds TensorRT's TopK limit of {TOPK_MAX_K}"
        out.error("topk-k-too-large", message, "use ReduceMin/ReduceMax (K=1) or a K ≤ 3840")


def _check_int64(graph, constants: dict, out: _Report) -> None:
    """INT64 constants: a warning (TensorRT computes most integer tensors in INT32), an error if out of range."""
    slice_bounds = {n.input[i] for n in graph.node if n.op_type == "Slice" for i in (1, 2) if len(n.input) > i}
    int64 = [name for name, tensor in constants.items() if tensor.data_type == _INT64]
    if int64:
        message = f"{len(int64)} INT64 constants (e.g. {int64[:3]}): TensorRT computes most integer tensors in INT32"
        out.warning("int64-constants", message, "nothing to change while every value fits in int32")
    for name in int64:
        values = _value(constants[name])
        if values is None:
            continue
        outside = values[(values < INT32_MIN) | (values > INT32_MAX)]
        if name in slice_bounds:
            outside = outside[~np.isin(outside, _SLICE_SENTINELS)]
        if outside.size:
            message = f"INT64 constant {name!r} holds {int(outside.flat[0])}, which does not fit in int32"
            out.error("int64-out-of-range", message, "rescale or re-type the value so it fits in int32")


def _check_volume(name: str, dims: list, what: str, out: _Report, where: str = "") -> None:
    if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
        return
    volume = int(np.prod(dims, dtype=object))  # object dtype: Python ints never overflow
    if volume >= MAX_VOLUME:
        message = f"{what} {name!r}{where} has shape {dims} ({volume:,} elements ≥ 2^31)"
        out.error("tensor-too-large", message, "shrink it (memory bank, image size or batch max) or split the work")


def _check_shapes(onnx, model, batch_value: int | None, out: _Report) -> None:
    """Shape inference with the batch at its declared maximum: unknown shapes and oversized tensors."""
    for value_info in model.graph.input:
        dims = value_info.type.tensor_type.shape.dim
        if value_info.name == INPUT_NAME and dims and not dims[0].HasField("dim_value"):
            # An undeclared batch is already an error; evaluate at 1 so it is not reported again as unknown.
            dims[0].dim_value = batch_value or 1  # replaces the symbolic name
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises several unrelated types here; all mean "cannot infer"
        fix = "run onnx.checker.check_model(full_check=True) to find the inconsistent node"
        out.warning("shape-inference-failed", f"ONNX shape inference failed ({exc})", fix)
        return
    graph = inferred.graph
    known = {v.name: _dims(v) for v in [*graph.input, *graph.value_info, *graph.output]}
    unknown = []
    for index, node in enumerate(graph.node):
        for name in filter(None, node.output):
            dims = known.get(name)
            if dims is None or not all(isinstance(d, int) for d in dims):
                unknown.append(f"{name} ({'no shape' if dims is None else dims})")
            else:
                _check_volume(name, dims, "tensor", out, f" from {_label(node, index)}")
    for value_info in graph.input:
        _check_volume(value_info.name, known.get(value_info.name) or [], "input", out)
    if unknown:
        message = f"{len(unknown)} tensors have no static shape after inference: {', '.join(unknown[:5])}"
        out.warning("shape-unknown", message, "fix the input shapes / constant-fold so every shape is known")


def format_findings(findings: list[Finding]) -> str:
    """One line per finding with what to change, then a summary line."""
    lines = [f"{f.level.upper():7} [{f.code}] {f.message}" + (f" → {f.fix}" if f.fix else "") for f in findings]
    errors = sum(f.level == "error" for f in findings)
    warnings = sum(f.level == "warning" for f in findings)
    counted = f"{warnings} warning{'s' * (warnings != 1)}"
    if errors:
        lines.append(
            f"{errors} error{'s' * (errors != 1)}, {counted}: fix the errors before building a TensorRT engine"
        )
    else:
        lines.append(f"OK for TensorRT 10 ({counted})")
    return "\n".join(lines)


def check_artifact_for_tensorrt(artifact: Path) -> list[Finding]:
    """Check an artifact's manifest (target, deferred build settings, shapes) and then its ONNX."""
    from edgeiad_runtime.manifest import load_manifest

    artifact = Path(artifact)
    manifest = load_manifest(artifact, verify=False)  # hashing is the loader's job; this check is about TensorRT
    out = _Report()
    _check_manifest(manifest, out)
    onnx_name = manifest["files"]["onnx"]
    if onnx_name is None:
        out.error("no-onnx", f"{artifact} keeps no ONNX to build an engine from", "re-export with --target trt")
        return list(out)
    out.extend(check_onnx_for_tensorrt(artifact / onnx_name, manifest["batch"], _sidecar_shapes(artifact, manifest)))
    _compare_inputs(artifact / onnx_name, manifest, out)
    return list(out)


def _sidecar_shapes(artifact: Path, manifest: dict) -> dict | None:
    """Statistics shapes the engine will be built for: engine.build's, else the stats file's own."""
    shapes = ((manifest.get("engine") or {}).get("build") or {}).get("sidecar_shapes")
    if shapes is None and manifest["stats"]["mode"] == "sidecar":
        from edgeiad_runtime.safetensors_io import load_file

        shapes = {name: value.shape for name, value in load_file(artifact / manifest["files"]["stats"]).items()}
    return shapes


def _check_manifest(manifest: dict, out: _Report) -> None:
    target, engine = manifest["target"], manifest.get("engine") or {}
    if target != "trt":
        message = f"artifact target is {target!r}; its ONNX is checked anyway"
        out.warning("target-not-trt", message, "export with --target trt for a TensorRT artifact")
    elif not manifest["deferred"]:
        built = f"TensorRT {engine.get('trt_version')} on {engine.get('gpu')}"
        out.info("engine-built", f"engine already built with {built}; this check applies to a rebuild")
    elif not engine.get("build"):
        message = "deferred artifact without engine.build settings: build-engine derives them from the manifest"
        out.warning("no-build-settings", message, "re-export to record them")
    batch = manifest["batch"]
    if batch["mode"] == "dynamic" and not batch.get("max"):
        message = "dynamic batch without batch.max: TensorRT needs a profile maximum"
        out.error("batch-max-missing", message, "re-export with --batch dynamic:N")


def _compare_inputs(onnx_path: Path, manifest: dict, out: _Report) -> None:
    """The manifest's declared inputs must be the ONNX graph's inputs (image shape, sidecar tensors)."""
    onnx = require("onnx", "train")
    inputs = {v.name: _dims(v) for v in onnx.load(str(onnx_path), load_external_data=False).graph.input}
    declared, actual = manifest["inputs"]["image"]["shape"], inputs.get(INPUT_NAME)
    if actual is None or actual[1:] != declared[1:]:
        message = f"manifest image shape {declared} but the ONNX input is {actual}"
        out.error("manifest-shape-mismatch", message, "re-export the artifact")
    for name in manifest["stats"]["tensors"] if manifest["stats"]["mode"] == "sidecar" else []:
        if name not in inputs:
            out.error(
                "sidecar-input-missing", f"sidecar tensor {name!r} is not an ONNX input", "re-export the artifact"
            )
