"""Backbone-only graphs: the reference the end-to-end latency is read against (PatchCore's kNN overhead)."""

from __future__ import annotations

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
