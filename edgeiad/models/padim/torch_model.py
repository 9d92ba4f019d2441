"""PaDiM (Defard et al., ICPR 2021) as a pure, graph-exportable nn.Module."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError, require_torch
from .._ops import GaussianBlur, MapScoring, aggregate_features
from .._robust import check_fraction
from ..backbones import FeatureExtractor
from ..config import FeatureBankConfig

torch = require_torch()
nn = torch.nn


@dataclass
class PadimConfig(FeatureBankConfig):
    """PaDiM settings: `n_features` random channels keep the per-position covariance small."""

    model: str = "padim"
    n_features: int = 100
    regularization: float = 0.01  # added to the covariance diagonal so it stays invertible
    # Trimmed Gaussian, for training folders with some defective parts: the share of training images that may be
    # defective (0 = off); per position a quarter of that share of samples, the farthest from a first fit, is
    # left out of the second (see models/_robust.py).
    trim: float = 0.0

    def validate(self) -> None:
        super().validate()
        check_n_features(self.n_features)
        check_fraction("trim", self.trim)


def check_n_features(count: int) -> None:
    if count < 1:
        raise ConfigError(f"n_features {count} must be positive (e.g. 100)")


def random_channels(total: int, count: int, seed: int):
    """The sorted random subset of `count` of `total` feature channels PaDiM keeps (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:count].sort().values


def mahalanobis_distances(embedding, mean, inv_covariance):
    """Distance of every N×d×h×w feature to its position's Gaussian (P×d mean, P×d×d inverse), N×1×h×w."""
    batch, dim, height, width = embedding.shape
    # positions first, so one batched matmul applies each position's own inverse covariance
    diff = embedding.reshape(batch, dim, height * width).permute(2, 0, 1) - mean.to(embedding.dtype).unsqueeze(1)
    projected = torch.bmm(diff, inv_covariance.to(diff.dtype))
    squared = (projected * diff).sum(dim=-1).clamp(min=0.0)
    return torch.sqrt(squared).transpose(0, 1).reshape(batch, 1, height, width)


class PadimModel(MapScoring, nn.Module):
    """image → anomaly_map, pred_score via a per-position Gaussian and the Mahalanobis distance.

    `mean` (P×d) and `inv_covariance` (P×d×d) are buffers (baked at export) or forward inputs (sidecar).
    """

    stats_names = ("mean", "inv_covariance")
    resizable_stats: dict[str, int] = {}  # one Gaussian per position: shapes are fixed by the input size

    def __init__(self, config: PadimConfig) -> None:
        super().__init__()
        self.config = config
        self.image_size = tuple(config.image_size)
        self.feature_extractor = FeatureExtractor(config.backbone, config.resolved_layers(), self.image_size)
        total = sum(self.feature_extractor.channels())
        if config.n_features > total:
            raise ConfigError(
                f"n_features {config.n_features} exceeds the {total} channels of {config.backbone} "
                f"layers {list(config.resolved_layers())}: use at most {total}"
            )
        self.register_buffer("channel_index", random_channels(total, config.n_features, config.seed))
        positions = self.grid_size()[0] * self.grid_size()[1]
        self.register_buffer("mean", torch.zeros(positions, config.n_features))
        self.register_buffer("inv_covariance", torch.eye(config.n_features).repeat(positions, 1, 1))
        self.blur = GaussianBlur(config.sigma)

    def grid_size(self) -> tuple[int, int]:
        """Feature-map size: the finest chosen block is at stride 8."""
        return self.image_size[0] // 8, self.image_size[1] // 8

    accepts_features = True  # forward/infer take the backbone's outputs from a wrapper that computed them (segad)

    def embed(self, image, features=None):
        """Random channel subset of the multi-scale features, N×d×h×w (from `features` when given)."""
        features = self.feature_extractor(image) if features is None else features
        return aggregate_features(features, mode="nearest").index_select(1, self.channel_index)

    def forward(self, image, mean=None, inv_covariance=None, features=None):
        mean = self.mean if mean is None else mean
        inv_covariance = self.inv_covariance if inv_covariance is None else inv_covariance
        scores = mahalanobis_distances(self.embed(image, features), mean, inv_covariance)
        return self.to_map(scores)

    @torch.no_grad()
    def infer(self, image, features=None):
        """Eager scoring for evaluation (PaDiM's memory is bounded already)."""
        return self.forward(image, features=features)
