"""PatchCore and PaDiM heads on one shared backbone pass, their patch scores calibrated and averaged (exportable)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import ConfigError, require_torch
from .._ops import GaussianBlur, MapScoring, aggregate_features
from ..backbones import FeatureExtractor
from ..config import FeatureBankConfig
from ..padim.torch_model import check_n_features, mahalanobis_distances, random_channels
from ..patchcore.coarse import CoarseScoring, fused_score
from ..patchcore.lifted import LiftedSearch
from ..patchcore.projection import check_search_dim
from ..patchcore.torch_model import (
    bank_distances,
    check_coarse,
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
    # PatchCore's coarse image score (patchcore/coarse.py), added to the ensemble's map score; its [offset, gain]
    # is measured on the held-out good images above (at least two), not leave-one-out. 0 = off. Exported, on the
    # six development sets, image AUROC off → on: bsdata 0.9980 → 0.9988, bsdata-full 0.9644 → 0.9565, deeppcb
    # 0.7647 → 0.7820, cfd 0.9397 → 0.9442, ELPV mono 0.9062 → 0.9114, poly 0.7629 → 0.7875; mean 0.8893 → 0.8967;
    # the maps do not change (docs/quality-study.md, "Ensemble: the stride-32 image score").
    coarse_weight: float = 0.5
    coarse_share: float = 0.2
    coarse_block: int = -2
    coarse_rows: int = 2048
    coarse_bank_size: int = 0

    # Runs fitted before these fields existed used the 3x3 averaging, one bank, the exact search and no coarse score.
    LEGACY = {**FeatureBankConfig.LEGACY, "neighbourhood": 3, "regions": 1, "search_dim": 0, "coarse_weight": 0.0}

    def validate(self) -> None:
        super().validate()
        check_coreset_ratio(self.coreset_ratio)
        check_neighbourhood(self.neighbourhood)
        check_regions(self.regions, self.region_margin, self.region_rows, self.bank_size)
        check_search_dim(self.search_dim)
        check_n_features(self.n_features)
        check_coarse(self)
        if not 0.0 < self.calibration_share < 1.0 or not 0.5 < self.calibration_quantile < 1.0:
            raise ConfigError("calibration_share must be in (0, 1), calibration_quantile in (0.5, 1): e.g. 0.1, 0.995")


class EnsembleModel(MapScoring, CoarseScoring, LiftedSearch, nn.Module):
    """image → anomaly_map, pred_score: the mean of PatchCore's and PaDiM's calibrated patch scores.

    `calibration` (2×2: per member, the held-out good patches' median and quantile − median) puts a kNN distance
    and a Mahalanobis distance on one scale, so neither member dominates the mean by its units alone. The image
    score adds PatchCore's coarse score when `coarse_weight` > 0. `forward(image, *stats)` takes the tensors named
    in `stats_names` as inputs, in that order, for sidecar artifacts.
    """

    stats_names = ("memory_bank", "mean", "inv_covariance", "calibration")
    resizable_stats = {"memory_bank": 0}

    def __init__(self, config: EnsembleConfig) -> None:
        super().__init__()
        self.config = config
        self.image_size = tuple(config.image_size)
        self.coarse = config.coarse_weight > 0
        layers = config.resolved_layers()
        self.feature_extractor = FeatureExtractor(
            config.backbone, (*layers, config.coarse_block) if self.coarse else layers, self.image_size
        )
        blocks = self.feature_extractor.total_blocks
        self.patch_layers = tuple(sorted({index % blocks for index in layers}))
        channels = dict(zip(self.feature_extractor.layers, self.feature_extractor.channels()))
        total = sum(channels[index] for index in self.patch_layers)
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
        if self.coarse:  # PatchCore's coarse score: the coarse block's training features and [offset, gain]
            self.stats_names = (*self.stats_names, *self.add_coarse_buffers(channels))

    def embed(self, image, features=None):
        """(PatchCore's patch features, PaDiM's channel subset), both at stride 8, from one backbone pass (or from
        its outputs, `features`)."""
        features = self.feature_extractor(image) if features is None else features
        chosen = [f for index, f in zip(self.feature_extractor.layers, features) if index in self.patch_layers]
        local = aggregate_features(chosen, self.config.neighbourhood)
        plain = aggregate_features(chosen, mode="nearest").index_select(1, self.channel_index)
        return local, plain

    def training_features(self, image):
        """What fit collects from one backbone pass: (patch features, PaDiM's channels), and the coarse block's
        N×C×h×w features when the coarse score is on."""
        features = self.feature_extractor(image)
        local, plain = self.embed(image, features)
        return (local, plain, self.coarse_features(features)) if self.coarse else (local, plain)

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

    def forward(self, image, *stats):
        given = {name: getattr(self, name) for name in self.stats_names} | dict(zip(self.stats_names, stats))
        features = self.feature_extractor(image)
        local, plain = self.embed(image, features)
        # once lift_search() ran (patchcore/lifted.py), the graph reads each bank's lifted constants
        search, bases = self.bank_search(nearest_distances, self.bases(given.get("search_basis")))
        nearest = bank_distances(local, given["memory_bank"], self.config, search, bases)
        mahalanobis = mahalanobis_distances(plain, given["mean"], given["inv_covariance"])
        anomaly_map, score = self.to_map(self.combine(nearest, mahalanobis, given["calibration"]))
        if self.coarse:
            coarse = self.coarse_scores(features, given["coarse_bank"], self.coarse_search(nearest_distances))
            score = fused_score(score, coarse, given["coarse_calibration"])
        return anomaly_map, score

    @torch.no_grad()
    def member_scores(self, image, features=None):
        """Raw (PatchCore, PaDiM) patch scores with a bounded-memory kNN search, for fitting and evaluation."""
        local, plain = self.embed(image, features)
        nearest = bank_distances(local, self.memory_bank, self.config, chunked_distances, self.bases())
        return nearest, mahalanobis_distances(plain, self.mean, self.inv_covariance)

    @torch.no_grad()
    def raw_scores(self, image):
        """(PatchCore's, PaDiM's raw patch scores, the coarse score or None) from one backbone pass, eagerly: what
        `infer` combines and fit calibrates."""
        features = self.feature_extractor(image)
        nearest, mahalanobis = self.member_scores(image, features)
        if not self.coarse:
            return nearest, mahalanobis, None
        return nearest, mahalanobis, self.coarse_scores(features, self.coarse_bank, chunked_distances)

    @torch.no_grad()
    def infer(self, image):
        """Eager scoring with bounded memory; same result as forward."""
        nearest, mahalanobis, coarse = self.raw_scores(image)
        anomaly_map, score = self.to_map(self.combine(nearest, mahalanobis, self.calibration))
        return anomaly_map, score if coarse is None else fused_score(score, coarse, self.coarse_calibration)
