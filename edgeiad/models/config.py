"""Model configuration: one dataclass per model, all serialised verbatim into the run's config.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from edgeiad_runtime.preprocess import Preprocessing

from ..errors import ConfigError

MAX_IMAGE_SIZE = 2048  # larger inputs exhaust memory in feature extraction long before they help accuracy


@dataclass
class ModelConfig:
    """Settings every model shares: backbone, input size and seed."""

    model: str = ""
    backbone: str = "efficientnet_lite0"
    layers: tuple[int, ...] = ()  # empty: the backbone's default blocks
    image_size: tuple[int, int] = (256, 256)
    seed: int = 0
    sigma: float = 4.0  # Gaussian smoothing of the anomaly map, in input pixels
    extra: dict = field(default_factory=dict)

    def preprocessing(self) -> Preprocessing:
        """The preprocessing this model's backbone expects, at this config's input size."""
        from .backbones import get_backbone

        spec = get_backbone(self.backbone)
        return Preprocessing(height=self.image_size[0], width=self.image_size[1], mean=spec.mean, std=spec.std)

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
        values = dict(data)
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
