"""Backbone-only graphs: the reference the end-to-end latency is read against (PatchCore's kNN overhead).

Every case is timed against the fp32 backbone; an INT8 case on ONNX Runtime or OpenVINO also against the backbone
quantized as its artifact's is (same nodes kept in fp32, same calibration images), so its ratio shows what the
scoring costs at that precision rather than what INT8 saved.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import require_torch
from ..runs import load_model


def export_backbone(run: Path, path: Path) -> Path:
    """Export the run's feature extractor + feature aggregation (the model minus its scoring) to ONNX: every
    backbone output the model reads (PatchCore's coarse score reads a deeper block than its map)."""
    torch = require_torch()
    _record, model = load_model(run)
    features = getattr(model, "training_features", model.embed)
    outputs = 2 if getattr(model, "coarse", False) else 1

    class Embed(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, image):
            return features(image)

    from ..export.onnx import OPSET
    from ..quiet import silenced

    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, *model.image_size)
    partial = path.with_name(path.name + ".partial")
    with silenced():
        torch.onnx.export(
            Embed(model).eval(),
            (example,),
            str(partial),
            input_names=["image"],
            output_names=["embedding", "coarse_features"][:outputs],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
            dynamo=True,
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
    partial.replace(path)
    return path


def quantize_reference(run: Path, fp32_path: Path, target: str, dataset, out_dir: Path) -> Path:
    """The fp32 backbone graph at `fp32_path` quantized to INT8 the way `edgeiad export --precision int8` quantizes
    the run's artifact for `target` (onnx: ONNX Runtime QDQ U8S8; openvino: NNCF), written under `out_dir`; returns
    the file to time. The patch aggregation after the backbone stays fp32, as in the artifact."""
    import onnx

    from ..export import calibration_batch
    from ..export.onnx import backbone_node_names, int8_fp32_scopes, quantize_int8

    _record, model = load_model(run)
    calibration = calibration_batch(model, dataset)
    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    backbone, quantized = set(backbone_node_names(graph)), backbone_node_names(graph, int8_fp32_scopes(model))
    out_dir.mkdir(parents=True, exist_ok=True)
    if target == "openvino":
        from ..export.openvino import convert_to_openvino

        folder = out_dir / f"{fp32_path.stem}-int8-openvino"
        scoring = [node.name for node in graph.node if node.name not in backbone]
        fp32_prefix = sorted(backbone - set(quantized))
        convert_to_openvino(fp32_path, folder, "int8", calibration, scoring, fp32_nodes=fp32_prefix)
        return folder / "model.xml"
    path = out_dir / f"{fp32_path.stem}-int8.onnx"
    shutil.copyfile(fp32_path, path)
    quantize_int8(path, calibration, quantized, {})
    return path


def made_from(path: Path, run: Path) -> bool:
    """Whether the backbone graph at `path` exists and was made from `run` (its `.source.json` says so): a bench
    re-run into the same folder with another run of the model must not time the old run's backbone."""
    source = path.with_name(path.name + ".source.json")
    if not path.exists() or not source.is_file():
        return False
    try:
        return json.loads(source.read_text()).get("run") == str(Path(run).resolve())
    except (json.JSONDecodeError, AttributeError):
        return False


def record_source(path: Path, run: Path) -> None:
    path.with_name(path.name + ".source.json").write_text(json.dumps({"run": str(Path(run).resolve())}) + "\n")
