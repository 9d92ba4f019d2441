"""Sidecar statistics become graph constants for Triton, whose batcher would otherwise batch them with the image.

Triton gives every input of a batching model a leading batch dimension, so a memory bank or a set of
Gaussians cannot stay a model input: the repository's copy of the model carries them as constants instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ArtifactError, require


def bake_onnx(source: Path, target: Path, constants: dict[str, np.ndarray]) -> None:
    """Write `source` to `target` with the graph inputs named in `constants` turned into initializers."""
    onnx = require("onnx", "train")
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))  # external data (model.onnx.data) is read from beside the source
    graph = model.graph
    inputs = {item.name: item for item in graph.input}
    _check_names(source, set(inputs), constants)
    for name, value in constants.items():
        dtype = helper.tensor_dtype_to_np_dtype(inputs[name].type.tensor_type.elem_type)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=dtype), name))
        graph.input.remove(inputs[name])
    large = model.ByteSize() > 1_800_000_000  # protobuf's 2 GB limit: keep the weights beside the graph
    onnx.save(model, str(target), save_as_external_data=large, location=f"{target.name}.data" if large else None)


def bake_openvino(source: Path, target: Path, constants: dict[str, np.ndarray]) -> None:
    """Write the IR `source` to `target` (.xml + .bin) with the named parameters replaced by constants."""
    ov = require("openvino", "openvino")
    from openvino import opset13

    model = ov.Core().read_model(str(source))
    parameters = {name: param for param in model.get_parameters() for name in param.output(0).get_names()}
    _check_names(source, set(parameters), constants)
    for name, value in constants.items():
        param = parameters[name]
        dtype = np.dtype(param.get_element_type().to_dtype())
        constant = opset13.constant(np.ascontiguousarray(value, dtype=dtype))
        param.output(0).replace(constant.output(0))
        model.remove_parameter(param)
    model.validate_nodes_and_infer_types()
    ov.save_model(model, str(target), compress_to_fp16=False)  # the artifact's precision is already decided


def _check_names(source: Path, graph_inputs: set[str], constants: dict[str, np.ndarray]) -> None:
    missing = sorted(set(constants) - graph_inputs)
    if missing:
        raise ArtifactError(f"{source} has no inputs {missing} for its sidecar statistics: re-export the artifact")
