"""Export a fitted model to ONNX (dynamo exporter), plus fp16 weight storage and backbone-only INT8."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, ConfigError, require, require_torch
from ..quiet import silenced

OPSET = 18
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit: larger statistics go to model.onnx.data
INPUT_NAME = "image"
OUTPUT_NAMES = ["anomaly_map", "pred_score"]


def stats_tensors(model, dtype: str) -> dict[str, np.ndarray]:
    """The model's statistics buffers (bank, mean, inverse covariance) in the storage dtype."""
    numpy_dtype = np.float16 if dtype == "fp16" else np.float32
    return {name: getattr(model, name).detach().cpu().numpy().astype(numpy_dtype) for name in model.stats_names}


def export_onnx(model, path: Path, batch: dict, stats_mode: str, stats_dtype: str) -> dict:
    """Write model.onnx honouring the graph contract; return facts for the manifest."""
    torch = require_torch()
    require("onnxscript", "train")
    onnx = require("onnx", "train")
    height, width = model.image_size
    example_batch = batch["size"] or 2
    image = torch.zeros(example_batch, 3, height, width)
    stats = stats_tensors(model, stats_dtype)
    if stats_mode == "baked":
        for name, value in stats.items():
            setattr(model, name, torch.from_numpy(value))  # fp16 storage is cast back inside the graph
        args, input_names = (image,), [INPUT_NAME]
    else:
        args = (image, *[torch.from_numpy(value) for value in stats.values()])
        input_names = [INPUT_NAME, *stats]
    image_dims = {0: torch.export.Dim("batch", min=1, max=max(batch["max"], 2))} if batch["mode"] == "dynamic" else None
    # A sidecar bank keeps its row count open so a refitted bank of another size swaps in without re-export.
    stat_dims = [
        {axis: torch.export.Dim(f"{name}_rows", min=1)}
        if (axis := model.resizable_stats.get(name)) is not None
        else None
        for name in (stats if stats_mode == "sidecar" else {})
    ]
    dynamic = (image_dims, *stat_dims) if image_dims is not None or any(stat_dims) else None
    if dynamic and stat_dims and _takes_stats_as_varargs(model):  # forward(image, *stats): one nested input
        dynamic = (image_dims, tuple(stat_dims))
    big = sum(value.nbytes for value in stats.values()) > EXTERNAL_DATA_BYTES
    with torch.no_grad():
        model.eval()(*args)  # eager first: shape-dependent constants (the map's upsampling operators) are built
    # The dynamo exporter prints progress lines and torchvision notices: kept off the CLI unless --debug.
    with warnings.catch_warnings(), silenced():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model.eval(),
            args,
            output_names=OUTPUT_NAMES,
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes=dynamic,
            verbose=False,
        )
        name_inputs(program.model, input_names)
        program.save(str(path), external_data=big)
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": OPSET,
        "nodes": len(graph.node),
        "external_data": big,
        "backbone_nodes": backbone_node_names(graph),
        "int8_nodes": backbone_node_names(graph, int8_fp32_scopes(model)),
    }


def name_inputs(model, names: list[str]) -> None:
    """Give the graph's inputs `names` (an onnx_ir model), first renaming any node output that already holds one of
    them. torch's own renaming does not: `forward(image, *stats)` exports its inputs as stats_0, stats_1 ..., so a
    ReduceMean's output may be called `mean`, and the ensemble's `mean` input would then be defined twice."""
    from onnx_ir import traversal

    inputs = list(model.graph.inputs)
    wanted = set(names)
    outputs = [value for node in traversal.RecursiveGraphIterator(model.graph) for value in node.outputs]
    taken = {value.name for value in (*inputs, *outputs)} | wanted | set(model.graph.initializers)
    for value in outputs:
        if value.name in wanted:
            count = 1
            while f"{value.name}_{count}" in taken:
                count += 1
            value.name = f"{value.name}_{count}"
            taken.add(value.name)
    for value, name in zip(inputs, names, strict=True):
        value.name = name


def _takes_stats_as_varargs(model) -> bool:
    import inspect

    kinds = [parameter.kind for parameter in inspect.signature(model.forward).parameters.values()]
    return inspect.Parameter.VAR_POSITIONAL in kinds


def int8_fp32_scopes(model) -> tuple[str, ...]:
    """Module scopes of the backbone that INT8 leaves in fp32: its stem and first blocks (see BackboneSpec)."""
    from ..models.backbones import get_backbone

    backbone = getattr(getattr(model, "config", None), "backbone", None)
    count = get_backbone(backbone).int8_fp32_blocks if backbone else 0
    return ("feature_extractor.stem", *(f"feature_extractor.blocks.{i}" for i in range(count))) if count else ()


def backbone_node_names(graph, fp32_scopes: tuple[str, ...] = ()) -> list[str]:
    """Names of the nodes that came from a `feature_extractor` module, the model's own or a wrapped base
    detector's (`bases.0.feature_extractor`): the dynamo exporter records module scopes. Nodes inside one of
    `fp32_scopes` (e.g. `feature_extractor.stem`, matched at any depth) are left out: INT8 keeps them fp32."""
    import ast

    def inside(scope: str, name: str) -> bool:
        return scope == name or scope.endswith("." + name)

    names = []
    for node in graph.node:
        for prop in node.metadata_props:
            if prop.key != "pkg.torch.onnx.name_scopes":
                continue
            try:
                scopes = [str(s) for s in ast.literal_eval(prop.value)]
            except (ValueError, SyntaxError):
                continue
            if any(inside(s, "feature_extractor") for s in scopes) and not any(
                inside(s, name) for s in scopes for name in fp32_scopes
            ):
                names.append(node.name)
            break
    return names


def compress_fp16(path: Path, keep: tuple[str, ...] = ()) -> dict:
    """Store float32 weights as float16 with a Cast back (half the file; CPU EPs still compute fp32).

    Initializers named after a buffer in `keep` stay float32: decision thresholds (SegAD's trees) rounded to
    fp16 would send features down other branches than the ones xgboost trained.
    """
    onnx = require("onnx", "train")
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    converted, nodes = [], []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or np.prod(init.dims) < 16:
            continue
        if any(init.name == name or init.name.endswith("." + name) for name in keep):
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "__fp16")
        converted.append(half)
        nodes.append(
            helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=init.name + "__cast")
        )
        graph.initializer.remove(init)
    graph.initializer.extend(converted)
    for node in reversed(nodes):
        graph.node.insert(0, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"fp16_weights": len(converted), "compute": "fp32 on CPU execution providers; fp16 on GPU/TensorRT"}


def quantize_int8(
    path: Path,
    calibration: np.ndarray,
    backbone_nodes: list[str],
    extra_feeds: dict,
    signed_activations: bool = False,
    search_weights: tuple[str, ...] = (),
    backbone: bool = True,
) -> dict:
    """Static QDQ INT8 of the backbone and, when the model lifted its search (`search_weights`, the names of its W
    constants: models/patchcore/lifted.py), of the search's cross-term MatMuls; everything else stays fp32.
    `backbone=False` quantizes the search alone (`backbone_nodes` are then ignored).

    Activations are uint8 (asymmetric) and weights int8 (symmetric, per channel): U8S8 is the pair ONNX
    Runtime's x86 kernels run on VNNI. The earlier S8S8 (int8 activations) made the Lite0 backbone at 384 px
    1.8x *slower* than fp32 on this AVX-512 VNNI CPU (33.7 vs 18.7 ms, one thread), U8S8 makes it 0.68x
    (12.8 ms), with the same embedding error against fp32 (mean relative 0.32 for both). The QOperator format
    measured the same as QDQ (13.3 ms), so QDQ stays: it is what TensorRT and OpenVINO read too.
    `signed_activations` keeps symmetric int8 activations for TensorRT, which accepts only zero-point 0.

    The search's W gets one scale for the whole tensor: ONNX Runtime fuses per-tensor QDQ MatMuls into one integer
    GEMM (MatMulIntegerToFloat), and leaves per-column ones as a dequantize and an fp32 MatMul, slower than fp32.
    """
    quantization = require("onnxruntime.quantization", "train")
    if len(calibration) == 0:
        raise ConfigError("INT8 export needs calibration images: the run's training set is empty or unreadable")
    backbone_nodes = backbone_nodes if backbone else []
    if backbone and not backbone_nodes:
        raise ConfigError("INT8: could not find the backbone nodes in the ONNX graph; export fp32 or fp16 instead")
    search_nodes, weights = search_matmuls(path, search_weights)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": calibration[i : i + 1], **extra_feeds} for i in range(len(calibration))])

        def get_next(self):
            return next(self.items, None)

    import logging

    # onnxruntime.quantization logs "consider pre-processing" on the root logger at WARNING for every call.
    logging.getLogger().setLevel(logging.ERROR)
    source = path.with_name("fp32_" + path.name)
    path.rename(source)
    try:
        quantization.quantize_static(
            str(source),
            str(path),
            Reader(),
            quant_format=quantization.QuantFormat.QDQ,
            activation_type=quantization.QuantType.QInt8 if signed_activations else quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            nodes_to_quantize=[*backbone_nodes, *search_nodes],
            per_channel=True,
            # 7-bit weights: x86 CPUs without VNNI (AVX2) multiply u8 x s8 pairs into saturating int16 sums; with
            # 8-bit weights that saturation cost PatchCore 0.042 AUROC on an AVX2-only EPYC (0.9015 -> 0.8593),
            # with 7-bit 0.0049 (-> 0.8966). An artifact does not know the CPU it will meet. TensorRT does not
            # saturate.
            reduce_range=not signed_activations,
            calibrate_method=quantization.CalibrationMethod.MinMax,
            extra_options={
                "ActivationSymmetric": signed_activations,
                "WeightSymmetric": True,
                # The search's scores leave its MatMul in fp32: a quantized output would round every distance
                # to one of 256 steps. (The backbone has no MatMul.)
                "OpTypesToExcludeOutputQuantization": ["MatMul"],
                # An override without "axis" makes a weight per-tensor beside the backbone's per-channel ones.
                "TensorQuantOverrides": {
                    name: [{"quant_type": quantization.QuantType.QInt8, "symmetric": True}] for name in weights
                },
            },
        )
    finally:
        source.unlink(missing_ok=True)
    quantized = {
        (True, True): "backbone and search cross term (per-tensor weights)",
        (True, False): "backbone only",
        (False, True): "search cross term only (per-tensor weights), backbone fp32",
    }[(bool(backbone_nodes), bool(search_nodes))]
    return {
        "int8": f"static QDQ {'S8S8' if signed_activations else 'U8S8'} (int8 per-channel weights"
        f"{'' if signed_activations else ', 7-bit range'}), {quantized}",
        "calibration_images": len(calibration),
        "quantized_nodes": len(backbone_nodes) + len(search_nodes),
        "int8_search_matmuls": len(search_nodes),
    }


def search_matmuls(path: Path, weights: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(MatMul node names, initializer names) of the lifted search's cross terms: the MatMuls that read one of
    the `weights` constants (named as the buffers, at any module depth). Every weight must be found, once."""
    if not weights:
        return [], []
    onnx = require("onnx", "train")
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}

    def weight_of(name: str) -> str | None:
        return next((w for w in weights if name in initializers and (name == w or name.endswith("." + w))), None)

    found = {}
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and (weight := weight_of(node.input[1])):
            found.setdefault(weight, []).append((node.name, node.input[1]))
    if sorted(found) != sorted(weights) or any(len(pairs) != 1 for pairs in found.values()):
        raise ArtifactError(
            f"INT8: the lifted search's constants {sorted(weights)} are not each read by one MatMul in the ONNX "
            f"graph (found {sorted(found)}): report this model; export fp32 meanwhile"
        )
    return [pairs[0][0] for pairs in found.values()], [pairs[0][1] for pairs in found.values()]
