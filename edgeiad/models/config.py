"""Model configuration: one dataclass per model, all serialised verbatim into the run's config.json."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
from edgeiad_runtime.preprocess import INTERPOLATIONS, Preprocessing

from ..errors import ConfigError

MAX_IMAGE_SIZE = 2048  # larger inputs exhaust memory in feature extraction long before they help accuracy
RESIZE_MODES = ("aspect", "squash")


def _multiple_of_16(value: float) -> int:
    return min(MAX_IMAGE_SIZE, max(32, int(round(value / 16.0)) * 16))


@dataclass
class ModelConfig:
    """Settings every model shares: backbone, input size and seed."""

    model: str = ""
    backbone: str = "efficientnet_lite0"
    layers: tuple[int, ...] = ()  # empty: the backbone's default blocks
    image_size: tuple[int, int] = (256, 256)
    # "aspect": fit() reshapes image_size to the training images' aspect ratio at about the same pixel count, so
    # wide or tall parts are not squashed, and enlarges small images by at most `max_upscale`; "squash": every
    # image is resized to image_size as given. The feature-bank models default to "aspect" (FeatureBankConfig);
    # the trained models keep "squash", which measured better for them on bsdata (104x256): npad 0.994 / 0.986 /
    # 0.848 squashed vs 0.991 / 0.981 / 0.830 aspect-kept, efficientad 0.990 / 0.976 / 0.820 vs 0.970 / 0.961 / 0.777
    # (image AUROC / pixel AUROC / AUPRO, exported).
    resize: str = "squash"
    # Blowing an 80-px tile up to 256 px leaves each stride-8 cell 2.5 source pixels of texture: measured on
    # CrackForest tiles, image AUROC fell from 0.93 (96 px) to 0.85 (256 px). 0 = no limit.
    max_upscale: float = 1.5
    interpolation: str = "linear"  # how frames are resized to image_size: linear, area, antialias (see preprocess)
    seed: int = 0
    sigma: float = 4.0  # Gaussian smoothing of the anomaly map, in input pixels
    extra: dict = field(default_factory=dict)

    # Values a config.json written before a field existed meant: an old run reloads exactly as it was fitted.
    LEGACY = {"resize": "squash", "interpolation": "linear", "max_upscale": 0.0, "score_share": 0.0}

    def preprocessing(self) -> Preprocessing:
        """The preprocessing this model's backbone expects, at this config's input size."""
        from .backbones import get_backbone

        spec = get_backbone(self.backbone)
        return Preprocessing.from_dict(
            {"height": self.image_size[0], "width": self.image_size[1], "mean": spec.mean, "std": spec.std,
             "interpolation": self.interpolation}
        )  # fmt: skip

    def resolved_layers(self) -> tuple[int, ...]:
        from .backbones import get_backbone

        return tuple(self.layers) or get_backbone(self.backbone).default_layers

    def to_dict(self) -> dict:
        data = asdict(self)
        data["layers"] = list(self.resolved_layers())
        data["image_size"] = list(self.image_size)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"config for {cls.__name__} has unknown keys {unknown}: was it written by a newer edgeiad?"
            )
        values = {k: v for k, v in cls.LEGACY.items() if k in names and k not in data}
        values.update(data)
        if "layers" in values:
            values["layers"] = tuple(values["layers"])
        if "image_size" in values:
            values["image_size"] = tuple(values["image_size"])
        return cls(**values)

    def validate(self) -> None:
        h, w = self.image_size
        if h < 32 or w < 32 or h % 16 or w % 16 or max(h, w) > MAX_IMAGE_SIZE:
            raise ConfigError(
                f"image size {h}x{w} is not supported: use multiples of 16 from 32 to {MAX_IMAGE_SIZE} (e.g. 256)"
            )
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed {self.seed!r} is not supported: use an integer from 0 to 4294967295")
        if not isinstance(self.max_upscale, (int, float)) or not 0 <= self.max_upscale <= 16:
            raise ConfigError(f"max_upscale {self.max_upscale!r} is invalid: use 0 (no limit) or a factor up to 16")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize {self.resize!r} is invalid: use one of {', '.join(RESIZE_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation {self.interpolation!r} is invalid: use one of {', '.join(INTERPOLATIONS)}"
            )

    def fitted_to(self, sizes: list[tuple[int, int]]) -> tuple[int, int]:
        """The input (height, width) for training images of these sizes: image_size itself unless resize="aspect"."""
        if self.resize != "aspect" or not sizes:
            return tuple(self.image_size)
        heights, widths = np.array(sizes, dtype=np.float64).T
        aspect = float(np.median(widths / heights))
        area = float(self.image_size[0] * self.image_size[1])
        if self.max_upscale > 0:
            area = min(area, float(np.median(heights * widths)) * self.max_upscale**2)
        height = math.sqrt(area / aspect)
        return _multiple_of_16(height), _multiple_of_16(height * aspect)


def check_score_share(share: float) -> None:
    if not isinstance(share, (int, float)) or not 0.0 <= share < 1.0:
        raise ConfigError(f"score_share {share!r} is invalid: use 0 (the map's maximum) or a share below 1, e.g. 0.05")


def check_score_stride(stride) -> None:
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= 64:
        raise ConfigError(f"score_stride {stride!r} is invalid: use 1 (every map pixel) to 64 pixels, e.g. 4")


@dataclass
class FeatureBankConfig(ModelConfig):
    """Defaults shared by the feature-bank models (PatchCore, PaDiM and their ensemble)."""

    # Chosen by `edgeiad study` on the mean over six real sets (bsdata, bsdata-full, deeppcb, cfd, ELPV mono and
    # poly), PatchCore eager, aspect-kept input
    # (before/after table and the one-factor tables: docs/quality-study.md):
    # - 384 px: image AUROC 256/320/384 bsdata 0.997/0.997/0.998, bsdata-full 0.918/0.944/0.938, deeppcb
    #   0.540/0.545/0.601, ELPV mono 0.885/0.886/0.880; pixel AUROC deeppcb 0.736/0.821/0.883, bsdata-full
    #   0.983/0.987/0.989 (AUPRO 0.265/0.399/0.549 and 0.716/0.730/0.759). Small tiles stay small (max_upscale).
    # - image score = mean of the top 5 % of the smoothed map instead of its single maximum: image AUROC max → top 5 %
    #   bsdata 0.996 → 0.999, bsdata-full 0.938 → 0.959, deeppcb 0.601 → 0.601, cfd 0.915 → 0.943,
    #   ELPV mono 0.880 → 0.902, poly 0.776 → 0.793: defects cover more than one pixel, noise rarely does.
    image_size: tuple[int, int] = (384, 384)
    resize: str = "aspect"
    # Image score: the mean of the top `score_share` of the smoothed anomaly map (0: the map's maximum).
    score_share: float = 0.05
    # The top share is taken over every `score_stride`-th map pixel in both axes (1 = every pixel; TensorRT's TopK
    # limit raises it where needed, models/_ops.py `score_stride`). 4 is half of a stride-8 patch cell, and the map
    # is that grid upsampled and smoothed with σ = 4 px, so the TopK reads 1/16 of the map for the same score: at
    # 384 × 384, PatchCore's 2 % is K = 185 of 9,216 values instead of 2,950 of 147,456 (ONNX Runtime, one thread:
    # 1.80 → 0.08 ms for the TopK alone; `Detector.predict` on an ELPV mono cell 36.9 → 35.1 ms). Re-scored on the
    # six development sets, same fits, image AUROC mean at the stride before (1, or 2 where TensorRT's limit required
    # it) → 4: PatchCore 0.8935 → 0.8942, PaDiM 0.8892 → 0.8897, ensemble 0.8967 → 0.8971; no set loses more than
    # 0.0002 (docs/quality-study.md, "Image score stride"). Runs fitted before this field read every pixel (LEGACY).
    score_stride: int = 4

    LEGACY = {**ModelConfig.LEGACY, "score_stride": 1}

    def validate(self) -> None:
        super().validate()
        check_score_share(self.score_share)
        check_score_stride(self.score_stride)
