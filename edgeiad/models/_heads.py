"""Learned heads on frozen backbone features: the common body of the reconstruction and flow models.

image → frozen EfficientNet-Lite blocks → multi-scale features at stride 8, standardised per channel with
training statistics → a small trained head that scores every position → upsampled, smoothed anomaly map.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import require_torch
from ._fitting import Stopwatch, collect_embeddings
from ._ops import GaussianBlur, aggregate_features, to_anomaly_map
from ._training import TrainSettings, channel_statistics, fit_head
from .backbones import FeatureExtractor
from .config import ModelConfig

torch = require_torch()
nn = torch.nn


@dataclass
class LearnedConfig(ModelConfig):
    """Training settings shared by the learned models (defaults sized for ~200 images on 2 CPU cores)."""

    epochs: int = 40
    max_minutes: float = 10.0
    learning_rate: float = 1e-3
    batch_size: int = 16
    patience: int = 6

    def train_settings(self) -> TrainSettings:
        return TrainSettings(
            self.epochs, self.max_minutes, self.learning_rate, self.batch_size, self.patience, self.seed
        )

    def validate(self) -> None:
        super().validate()
        self.train_settings().validate()


class FeatureHeadModel(nn.Module):
    """Frozen features + a trained head (`make_head(channels)` in subclasses) with `score(features) ->
    N×1×h×w` and `loss(features) -> scalar`."""

    stats_names: tuple[str, ...] = ()  # learned weights, no statistics a sidecar could swap
    resizable_stats: dict[str, int] = {}

    def __init__(self, config: LearnedConfig) -> None:
        super().__init__()
        self.config = config
        self.image_size = tuple(config.image_size)
        self.feature_extractor = FeatureExtractor(config.backbone, config.resolved_layers(), self.image_size)
        channels = sum(self.feature_extractor.channels())
        self.register_buffer("feature_mean", torch.zeros(channels))
        self.register_buffer("feature_std", torch.ones(channels))
        self.head = self.make_head(channels)
        self.blur = GaussianBlur(config.sigma)

    def make_head(self, channels: int) -> nn.Module:
        raise NotImplementedError

    def raw_features(self, image):
        return aggregate_features(self.feature_extractor(image))

    def embed(self, image):
        """Standardised multi-scale features, N×C×h×w."""
        features = self.raw_features(image)
        return (features - self.feature_mean.view(1, -1, 1, 1)) / self.feature_std.view(1, -1, 1, 1)

    def forward(self, image):
        return to_anomaly_map(self.head.score(self.embed(image)), self.image_size, self.blur)

    @torch.no_grad()
    def infer(self, image):
        """Eager scoring for evaluation (the same graph: the head is small)."""
        return self.forward(image)


def fit_feature_head(model: FeatureHeadModel, config: LearnedConfig, batches, device: str, progress=None):
    """Cache the frozen features once, standardise them, train the head; return (model on CPU, info)."""
    watch = Stopwatch()
    model = model.to(device)
    with watch.time("embedding_s"):
        features = collect_embeddings(model.raw_features, batches, device)
    mean, std = channel_statistics(features)
    model.feature_mean.copy_(mean.to(device))
    model.feature_std.copy_(std.to(device))
    standardised = ((features - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).to(device)
    with watch.time("training_s"):
        info = fit_head(
            model.head, lambda head, batch: head.loss(batch), standardised, config.train_settings(), progress
        )
    return model.cpu().eval(), {"n_samples": int(features.shape[0]), **info, **watch.timings}
