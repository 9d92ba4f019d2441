"""Feature reconstruction (seeds 000/002): an autoencoder over a pyramid of pretrained features.

The encoder input is already pyramidal (EfficientNet-Lite blocks at strides 8 and 16, concatenated), and the
autoencoder downsamples it twice more to a narrow bottleneck. It is trained with a perceptual loss: the error
is measured in the pretrained feature space rather than on pixels, so what it must reproduce is what an
ImageNet network finds salient. The anomaly map is the per-position feature reconstruction error.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError, require_torch
from .._heads import FeatureHeadModel, LearnedConfig

torch = require_torch()
nn = torch.nn
F = torch.nn.functional


@dataclass
class ReconstructionConfig(LearnedConfig):
    """Autoencoder widths: hidden channels at stride 8/16 and the bottleneck at stride 32."""

    model: str = "reconstruction"
    hidden: int = 96
    bottleneck: int = 32

    def validate(self) -> None:
        super().validate()
        if self.hidden < 1 or self.bottleneck < 1:
            raise ConfigError(f"hidden {self.hidden} and bottleneck {self.bottleneck} must be positive")


class FeatureAutoencoder(nn.Module):
    """C×h×w → C×h×w through a 4x-downsampled bottleneck; `score` is the mean squared error per position."""

    def __init__(self, channels: int, hidden: int, bottleneck: int) -> None:
        super().__init__()
        act = nn.LeakyReLU(0.1)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), act,
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), act,
            nn.Conv2d(hidden, bottleneck, 3, stride=2, padding=1), act,
        )  # fmt: skip
        self.up1 = nn.Sequential(nn.Conv2d(bottleneck, hidden, 3, padding=1), act)
        self.up2 = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), act, nn.Conv2d(hidden, channels, 1))

    def reconstruct(self, features):
        height, width = features.shape[-2:]
        code = self.encoder(features)
        middle = F.interpolate(code, size=((height + 1) // 2, (width + 1) // 2), mode="bilinear", align_corners=False)
        middle = self.up1(middle)
        return self.up2(F.interpolate(middle, size=(height, width), mode="bilinear", align_corners=False))

    def score(self, features):
        return (features - self.reconstruct(features)).pow(2).mean(dim=1, keepdim=True)

    def loss(self, features):
        return self.score(features).mean()


class ReconstructionModel(FeatureHeadModel):
    """image → anomaly_map, pred_score from the feature reconstruction error."""

    def make_head(self, channels: int) -> FeatureAutoencoder:
        return FeatureAutoencoder(channels, self.config.hidden, self.config.bottleneck)
