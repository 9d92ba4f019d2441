"""PatchCore and PaDiM heads on one shared backbone pass, their patch scores calibrated and averaged (exportable)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import ConfigError, require_torch
from .._ops import GaussianBlur, MapScoring, aggregate_features
from ..backbones import FeatureExtractor
from ..config import FeatureBankConfig
from ..padim.torch_model import check_n_features, mahalanobis_distances, random_channels
from ..patchcore.projection import check_search_dim
from ..patchcore.torch_model import (
    bank_distances,
    check_coreset_ratio,
    check_neighbourhood,
    check_regions,
    chunked_distances,
    nearest_distances,
)

torch = require_torch()
nn = torch.nn


@dataclass
class EnsembleConfig(FeatureBankConfig):
    """PatchCore's and PaDiM's settings, and the share of good images that calibrates their scores."""

    model: str = "ensemble"
    coreset_ratio: float = 0.01
    projection_dim: int = 128
    neighbourhood: int = 1  # PatchCore's patch averaging, as in PatchCoreConfig
    regions: int = 2  # PatchCore's region banks, as in PatchCoreConfig; region_rows is set by fit
    region_margin: int = 2
    region_rows: list = field(default_factory=list)
    search_dim: int = 96  # PatchCore's projected search, as in PatchCoreConfig; 0 searches every dimension
    bank_size: int = 0
    feature_dim: int = 0
    n_features: int = 100
    regularization: float = 0.01
    calibration_share: float = 0.1  # good training images kept out of both fits to measure their score scales
    # Calibrated score = (raw - its median on held-out good patches) / (its q-quantile - that median).
    calibration_quantile: float = 0.995

    # Runs fitted before these fields existed used the 3x3 averaging, one bank and the exact search.
    LEGACY = {**FeatureBankConfig.LEGACY, "neighbourhood": 3, "regions": 1, "search_dim": 0}

    def validate(self) -> None:
        super().validate()
        check_coreset_ratio(self.coreset_ratio)
        check_neighbourhood(self.neighbourhood)
        check_regions(self.regions, self.region_margin, self.region_rows, self.bank_size)
        check_search_dim(self.search_dim)
        check_n_features(self.n_features)
        if not 0.0 < self.calibration_share < 1.0 or not 0.5 < self.calibration_quantile < 1.0:
            raise ConfigError("calibration_share must be in (0, 1), calibration_quantile in (0.5, 1): e.g. 0.1, 0.995")


class EnsembleModel(MapScoring, nn.Module):
    """image → anomaly_map, pred_score: the mean of PatchCore's and PaDiM's calibrated patch scores.

    `calibration` (2×2: per member, the held-out good patches' median and quantile − median) puts a kNN distance
    and a Mahalanobis distance on one scale, so neither member dominates the mean by its units alone.
    """

    stats_names = ("memory_bank", "mean", "inv_covariance", "calibration")
    resizable_stats = {"memory_bank": 0}

    def __init__(self, config: EnsembleConfig) -> None:
        super().__init__()
        self.config = config
        self.image_size = tuple(config.image_size)
        self.feature_extractor = FeatureExtractor(config.backbone, config.resolved_layers(), self.image_size)
        total = sum(self.feature_extractor.channels())
        if config.n_features > total:
            raise ConfigError(
                f"n_features {config.n_features} exceeds the {total} channels of {config.backbone}: use at most {total}"
            )
        self.register_buffer("channel_index", random_channels(total, config.n_features, config.seed))
        self.register_buffer("memory_bank", torch.zeros(max(config.bank_size, 1), config.feature_dim or total))
        positions = (self.image_size[0] // 8) * (self.image_size[1] // 8)
        self.register_buffer("mean", torch.zeros(positions, config.n_features))
        self.register_buffer("inv_covariance", torch.eye(config.n_features).repeat(positions, 1, 1))
        self.register_buffer("calibration", torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
        self.blur = GaussianBlur(config.sigma)
        if config.regions > 1:  # each region's rows sit at fixed offsets: a sidecar bank of another size cannot swap in
            self.resizable_stats = {}
        # PatchCore's projected search (patchcore/projection.py): one basis per bank, filled by fit.
        feature_dim = self.memory_bank.shape[1]
        self.projected = 0 < config.search_dim < feature_dim
        if self.projected:
            banks = max(1, len(config.region_rows)) if config.regions > 1 else 1
            self.register_buffer("search_basis", torch.zeros(banks, feature_dim, config.search_dim + 2))
            self.stats_names = (*self.stats_names, "search_basis")

    def embed(self, image):
        """(PatchCore's patch features, PaDiM's channel subset), both at stride 8, from one backbone pass."""
        features = self.feature_extractor(image)
        local = aggregate_features(features, self.config.neighbourhood)
        plain = aggregate_features(features, mode="nearest").index_select(1, self.channel_index)
        return local, plain

    def combine(self, nearest, mahalanobis, calibration):
        """Mean of the two members' calibrated patch scores, N×1×h×w."""
        calibration = calibration.to(nearest.dtype)
        first = (nearest - calibration[0, 0]) / calibration[0, 1]
        second = (mahalanobis - calibration[1, 0]) / calibration[1, 1]
        return (first + second) * 0.5

    def bases(self, search_basis=None):
        """The PatchCore half's search bases (given, else the fitted ones), or None when it searches exactly."""
        if search_basis is None and self.projected:
            return self.search_basis
        return search_basis

    def forward(self, image, memory_bank=None, mean=None, inv_covariance=None, calibration=None, search_basis=None):
        local, plain = self.embed(image)
        bank = self.memory_bank if memory_bank is None else memory_bank
        nearest = bank_distances(local, bank, self.config, nearest_distances, self.bases(search_basis))
        mean = self.mean if mean is None else mean
        inv_covariance = self.inv_covariance if inv_covariance is None else inv_covariance
        mahalanobis = mahalanobis_distances(plain, mean, inv_covariance)
        calibration = self.calibration if calibration is None else calibration
        return self.to_map(self.combine(nearest, mahalanobis, calibration))

    @torch.no_grad()
    def member_scores(self, image):
        """Raw (PatchCore, PaDiM) patch scores with a bounded-memory kNN search, for fitting and evaluation."""
        local, plain = self.embed(image)
        nearest = bank_distances(local, self.memory_bank, self.config, chunked_distances, self.bases())
        return nearest, mahalanobis_distances(plain, self.mean, self.inv_covariance)

    @torch.no_grad()
    def infer(self, image):
        """Eager scoring with bounded memory; same result as forward."""
        nearest, mahalanobis = self.member_scores(image)
        return self.to_map(self.combine(nearest, mahalanobis, self.calibration))
