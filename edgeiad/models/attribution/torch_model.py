"""Attribution map (seed 000's fourth family): a good-vs-defective classifier whose evidence map is the output.

Frozen backbone features feed a per-position two-layer head that gives a logit for every position; the
image logit is the mean of the top `top_fraction` positions (a smooth max, so one small defect can decide),
and training sees good images against the same images with synthetic defects (cut-paste, noise blobs,
scratches). The per-position logit map is the class-activation map: for this head Grad-CAM's weighting
reduces to it, so the attribution is computed inside the exported forward graph with no backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError, require_torch
from .._heads import FeatureHeadModel, LearnedConfig

torch = require_torch()
nn = torch.nn
F = torch.nn.functional


@dataclass
class AttributionConfig(LearnedConfig):
    """Head width, the share of top positions pooled into the image logit, and the training length."""

    model: str = "attribution"
    hidden: int = 64
    top_fraction: float = 0.05
    epochs: int = 20
    patience: int = 5

    def validate(self) -> None:
        super().validate()
        if self.hidden < 1 or not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError(f"hidden {self.hidden} must be positive and top_fraction {self.top_fraction} in (0, 1]")


class EvidenceHead(nn.Module):
    """Per-position logits (N×1×h×w); `image_logits` pools the top positions."""

    def __init__(self, channels: int, hidden: int, top_fraction: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 1, 1))
        self.top_fraction = top_fraction

    def score(self, features):
        return self.net(features)

    def image_logits(self, features):
        logits = self.score(features).flatten(1)
        k = max(1, int(round(logits.shape[1] * self.top_fraction)))
        return torch.topk(logits, k, dim=1).values.mean(dim=1)

    def loss(self, features, labels):
        return F.binary_cross_entropy_with_logits(self.image_logits(features), labels)


class AttributionModel(FeatureHeadModel):
    """image → anomaly_map (the upsampled, smoothed evidence logits), pred_score (its maximum)."""

    def make_head(self, channels: int) -> EvidenceHead:
        return EvidenceHead(channels, self.config.hidden, self.config.top_fraction)
