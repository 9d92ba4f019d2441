"""PatchCore (Roth et al., CVPR 2022) as a pure, graph-exportable nn.Module."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import ConfigError, require_torch
from .._ops import GaussianBlur, MapScoring, aggregate_features, min_euclidean
from .._robust import check_fraction
from ..backbones import FeatureExtractor
from ..config import FeatureBankConfig
from .coarse import CoarseScoring, fused_score
from .lifted import LiftedSearch
from .projection import check_search_dim, project
from .regions import region_distances

torch = require_torch()
nn = torch.nn


@dataclass
class PatchCoreConfig(FeatureBankConfig):
    """PatchCore settings; `bank_size` is filled in by fit once the coreset is chosen."""

    model: str = "patchcore"
    # EfficientNet-Lite1 (blocks 6 and 14: the same strides 8 / 16 and 152 channels as Lite0's blocks 4 and 10).
    # Exported, at the 384 px defaults, on the six development sets, image / pixel AUROC / AUPRO means Lite0 → Lite1:
    # 0.8942 / 0.9702 / 0.8223 → 0.8999 / 0.9715 / 0.8224; image AUROC bsdata 0.9988 → 0.9988, bsdata-full 0.9491 →
    # 0.9567, deeppcb 0.7866 → 0.8008, cfd 0.9458 → 0.9425, ELPV mono 0.9108 → 0.9168, poly 0.7740 → 0.7840. It costs
    # 1.23x the latency (one thread, ELPV mono cell: 43.1 against 35.1 ms) and 18.0 against 14.9 MB of ONNX.
    # PaDiM and the ensemble keep Lite0: on Lite1 they lose deeppcb and cfd (docs/quality-study.md, "Backbone").
    backbone: str = "efficientnet_lite1"
    # Image score: the mean of the top 2 % of the smoothed map (FeatureBankConfig's 5 % was chosen with the 3×3
    # averaging and one bank). Re-scored from the saved patch scores of the 2 × 2 region-bank study (eager, same fits;
    # image AUROC max / 1 % / 2 % / 3 % / 5 %): bsdata 0.996/0.996/0.996/0.997/0.999, bsdata-full
    # 0.930/0.945/0.951/0.953/0.956, deeppcb 0.703/0.775/0.774/0.766/0.749, cfd 0.906/0.921/0.929/0.933/0.937, ELPV
    # mono 0.884/0.903/0.904/0.903/0.900, poly 0.735/0.749/0.744/0.740/0.731; mean 0.859/0.882/0.883/0.882/0.879,
    # mean rank 6.2/3.8/3.3/3.2/3.7. Sharper p = 1 maps put a small defect in fewer pixels, so a smaller top share
    # stops diluting it (deeppcb +0.025); large pits and cracks (bsdata-full, cfd) lose 0.005-0.008.
    score_share: float = 0.02
    # 1 % as in the paper's PatchCore-1 %: measured here, image AUROC is unchanged from 10 % (ELPV mono 0.625
    # vs 0.627, BSData 1.000 vs 0.997; pixel AUROC 0.977 vs 0.981) while the kNN, which dominates latency
    # and RSS, is 10x smaller.
    coreset_ratio: float = 0.01
    projection_dim: int = 128  # random-projection size used only to select the coreset
    bank_size: int = 0
    feature_dim: int = 0
    # Fewest memory-bank rows (all patches when there are fewer): 1 % of a few-shot training set is a handful of
    # rows (one 384-px image: 23), which no longer covers a part.
    min_bank: int = 1024
    # Most memory-bank rows (0 = no cap): bounds memory and latency when `edgeiad update` keeps adding images.
    max_bank: int = 0
    # Side of the square each patch feature is averaged over before the search (the paper's neighbourhood p; 1 = no
    # averaging). Measured eager on the six development sets, image / pixel AUROC, p = 3 → 1: deeppcb 0.601 → 0.733
    # / 0.883 → 0.975, bsdata-full 0.959 → 0.960 / 0.989 → 0.994, bsdata 0.999 → 0.997 / 0.975 → 0.988, cfd
    # 0.943 → 0.934 / 0.911 → 0.929, ELPV mono 0.903 → 0.897, poly 0.793 → 0.741; mean image 0.866 → 0.877, mean
    # pixel 0.939 → 0.971. At 384 px a 3×3 cell average spans 24 px and blurs defects a few pixels wide into their
    # surroundings; grainy textures (ELPV poly) lose, so p = 3 stays available (docs/quality-study.md).
    neighbourhood: int = 1
    # Share of training images that may be defective (0 = off): a quarter of that share of the training patches,
    # the least like other images at the same place, is dropped before the coreset (see models/_robust.py).
    denoise: float = 0.0
    # Region banks (models/patchcore/regions.py): the patch grid cut into regions × regions, each with its own
    # coreset from its window (the region widened by region_margin cells), searched only by its own patches.
    # 1 = one bank for the whole image. Measured eager on the six development sets (docs/speed.md, "Region
    # banks"), mean image / pixel AUROC / AUPRO: one bank 0.877 / 0.971 / 0.829; 2 × 2 regions 0.878 / 0.970 /
    # 0.822 with each patch searching 0.29-0.39 of the rows; 3 × 3 worse (bsdata 0.994 / 0.980 / 0.850); one
    # global bank of the same cost 0.868 / 0.964 / 0.806. `region_rows` (rows per region, row-major) is set by fit.
    regions: int = 2
    region_margin: int = 2
    region_rows: list = field(default_factory=list)
    # Principal directions of each region's bank the search runs in, with the length of what lies outside them
    # (models/patchcore/projection.py); 0 = exact search in all 152 feature dimensions. Measured eager on the six
    # development sets, mean image / pixel AUROC / AUPRO: exact 0.8830 / 0.9699 / 0.8221, 96 0.8828 / 0.9702 / 0.8223
    # (every set within 0.002), 64 0.8804 / 0.9699 / 0.8204 (ELPV mono −0.006). ELPV mono bench, 1 / 2 threads: 37.7
    # → 34.3 / 21.8 → 20.8 ms (docs/speed.md, "Projected search").
    search_dim: int = 96
    # Coarse image score (coarse.py; docs/quality-study.md, "A stride-32 image score beside the map"): the image
    # score adds the mean of the top `coarse_share` of each image's distances, at backbone block `coarse_block`
    # (negative: from the last; -2 is Lite1's block 19, Lite0's 14: one feature per 32 × 32 pixels), to the nearest
    # of at most `coarse_rows` training features there. Its weight makes its spread over good images `coarse_weight`
    # times the map score's, both measured at fit with each training image left out of the banks. The map does not
    # change. 0 = off (the image score is the map's top share alone). `coarse_bank_size` is set by fit. Exported, on the
    # six development sets, image AUROC off → on: bsdata 0.9964 → 0.9988, bsdata-full 0.9506 → 0.9487, deeppcb
    # 0.7755 → 0.7834, cfd 0.9285 → 0.9457, ELPV mono 0.9029 → 0.9103, poly 0.7425 → 0.7738; mean 0.8828 → 0.8935.
    # 2,048 coarse rows: within 0.001 of every row, of 1,024, 4,096 and of 10 % on the mean (docs/quality-study.md).
    coarse_weight: float = 0.5
    coarse_share: float = 0.2
    coarse_block: int = -2
    coarse_rows: int = 2048
    coarse_bank_size: int = 0

    # Runs fitted before these fields existed used the 3x3 averaging, one bank, the exact search and no coarse score.
    # Runs have always written their backbone: one without it in config.json predates Lite1 as the default.
    LEGACY = {
        **FeatureBankConfig.LEGACY, "neighbourhood": 3, "regions": 1, "search_dim": 0, "coarse_weight": 0.0,
        "backbone": "efficientnet_lite0",
    }  # fmt: skip

    def validate(self) -> None:
        super().validate()
        check_coreset_ratio(self.coreset_ratio)
        check_neighbourhood(self.neighbourhood)
        check_fraction("denoise", self.denoise)
        if self.min_bank < 1:
            raise ConfigError(f"min_bank {self.min_bank} must be >= 1 (default 1024 rows, or all patches if fewer)")
        check_regions(self.regions, self.region_margin, self.region_rows, self.bank_size)
        check_search_dim(self.search_dim)
        if self.max_bank < 0:
            raise ConfigError(f"max_bank {self.max_bank} must be >= 0 (0 = no cap on the memory bank's rows)")
        check_coarse(self)


def check_coreset_ratio(ratio: float) -> None:
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"coreset ratio {ratio} is out of range: use a value in (0, 1], e.g. 0.01")


def check_regions(regions: int, margin: int, region_rows=(), bank_size: int = 0) -> None:
    """Region-bank settings (PatchCore and the ensemble's PatchCore half); `region_rows` as fit set them."""
    if not isinstance(regions, int) or isinstance(regions, bool) or not 1 <= regions <= 8:
        raise ConfigError(f"regions {regions!r} is invalid: use a grid side from 1 (one bank) to 8, e.g. 2")
    if not isinstance(margin, int) or isinstance(margin, bool) or not 0 <= margin <= 16:
        raise ConfigError(f"region_margin {margin!r} is invalid: use 0 to 16 grid cells, e.g. 2")
    if region_rows and (len(region_rows) > regions**2 or sum(region_rows) != bank_size):
        raise ConfigError(
            f"region_rows {list(region_rows)} do not fit {regions}x{regions} regions of a "
            f"{bank_size}-row bank: config.json was edited or is damaged; refit with `edgeiad train`"
        )


def check_coarse(config: PatchCoreConfig) -> None:
    weight, share, rows = config.coarse_weight, config.coarse_share, config.coarse_rows
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 10.0:
        raise ConfigError(f"coarse_weight {weight!r} is invalid: use 0 (off) to 10, e.g. 0.5")
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < share <= 1.0:
        raise ConfigError(f"coarse_share {share!r} is invalid: use a share in (0, 1], e.g. 0.2")
    if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= 1_000_000:
        raise ConfigError(f"coarse_rows {rows!r} is invalid: use 1 to 1000000 rows, e.g. 2048")
    if isinstance(config.coarse_block, bool) or not isinstance(config.coarse_block, int):
        raise ConfigError(f"coarse_block {config.coarse_block!r} is invalid: use a block index, e.g. -2")


def check_neighbourhood(size: int) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1 or size % 2 == 0 or size > 9:
        raise ConfigError(f"neighbourhood {size!r} is invalid: use an odd side from 1 (no averaging) to 9, e.g. 3")


def nearest_distances(embedding, memory_bank, basis=None):
    """Distance of every N×D×h×w patch to its nearest memory-bank row, N×1×h×w (graph-exportable); searched in
    the subspace of `basis` (projection.py) when given."""
    batch, dim, height, width = embedding.shape
    queries = embedding.permute(0, 2, 3, 1).reshape(batch, height * width, dim)
    bank = memory_bank.to(queries.dtype)
    scores = min_euclidean(queries, bank) if basis is None else min_euclidean(*project(queries, bank, basis))
    return scores.reshape(batch, 1, height, width)


class PatchCoreModel(MapScoring, CoarseScoring, LiftedSearch, nn.Module):
    """image (N×3×H×W, normalised) → anomaly_map (N×1×H×W), pred_score (N).

    The memory bank is a buffer, so export bakes it as a constant; `forward(image, *stats)` takes the tensors named
    in `stats_names` as inputs instead, in that order, for sidecar artifacts.
    """

    stats_names = ("memory_bank",)
    resizable_stats = {"memory_bank": 0}  # any number of bank rows works: sidecar banks may be refitted

    def __init__(self, config: PatchCoreConfig) -> None:
        super().__init__()
        self.config = config
        self.image_size = tuple(config.image_size)
        self.coarse = config.coarse_weight > 0
        layers = config.resolved_layers()
        self.feature_extractor = FeatureExtractor(
            config.backbone, (*layers, config.coarse_block) if self.coarse else layers, self.image_size
        )
        total = self.feature_extractor.total_blocks
        self.patch_layers = tuple(sorted({index % total for index in layers}))
        channels = dict(zip(self.feature_extractor.layers, self.feature_extractor.channels()))
        feature_dim = config.feature_dim or sum(channels[index] for index in self.patch_layers)
        self.register_buffer("memory_bank", torch.zeros(max(config.bank_size, 1), feature_dim))
        self.blur = GaussianBlur(config.sigma)
        stats = ["memory_bank"]
        self.resizable_stats = {"memory_bank": 0}
        if config.regions > 1:  # each region's rows sit at fixed offsets: a sidecar bank of another size cannot swap in
            self.resizable_stats = {}
        # Projected search (projection.py): one basis per bank, filled by fit; none when it would keep every dimension.
        self.projected = 0 < config.search_dim < feature_dim
        if self.projected:
            banks = max(1, len(config.region_rows)) if config.regions > 1 else 1
            self.register_buffer("search_basis", torch.zeros(banks, feature_dim, config.search_dim + 2))
            stats.append("search_basis")  # a refitted sidecar bank brings its own bases
        if self.coarse:  # coarse.py: the stride-32 training features and the [offset, gain] that fuses their score
            stats += self.add_coarse_buffers(channels)
        self.stats_names = tuple(stats)

    accepts_features = True  # forward/infer take the backbone's outputs from a wrapper that computed them (segad)

    @property
    def score_is_map_max(self) -> bool:
        return self.config.score_share == 0 and not self.coarse

    def backbone(self, image, features=None):
        """The backbone's outputs for `feature_extractor.layers` (`features` when a wrapper computed them)."""
        return self.feature_extractor(image) if features is None else features

    def embed(self, image, features=None):
        """Patch features, N×D×h×w at the finest chosen stride (from `features` when given), each averaged over its
        `neighbourhood` when that is above 1."""
        chosen = zip(self.feature_extractor.layers, self.backbone(image, features))
        return aggregate_features([f for index, f in chosen if index in self.patch_layers], self.config.neighbourhood)

    def patch_scores(self, embedding, memory_bank, search=None, basis=None, sizes=None):
        """Nearest-neighbour distance of every patch to the bank, N×1×h×w: with region banks, to its own region's
        rows (`sizes` rows each, the fitted `region_rows` unless given); in the bank's principal subspace when the
        model searches projected. `search(N×D×h×w, bank, basis)` is the graph-exportable one unless given, or the
        lifted one once `lift_search()` ran (lifted.py)."""
        if search is None:
            search, basis = self.bank_search(nearest_distances, basis)
        if basis is None and self.projected:
            basis = self.search_basis
        return bank_distances(embedding, memory_bank, self.config, search, basis, sizes)

    def training_features(self, image):
        """What fit collects from one backbone pass: the patch features, and beside them the coarse block's
        (N×C×h×w) when the coarse score is on."""
        features = self.backbone(image)
        patches = self.embed(image, features)
        return (patches, self.coarse_features(features)) if self.coarse else patches

    def forward(self, image, *stats, features=None):
        given = dict(zip(self.stats_names, stats))
        features = self.backbone(image, features)
        bank = given.get("memory_bank", self.memory_bank)
        anomaly_map, score = self.to_map(
            self.patch_scores(self.embed(image, features), bank, basis=given.get("search_basis"))
        )
        if self.coarse:
            search = self.coarse_search(nearest_distances)
            coarse = self.coarse_scores(features, given.get("coarse_bank", self.coarse_bank), search)
            score = fused_score(score, coarse, given.get("coarse_calibration", self.coarse_calibration))
        return anomaly_map, score

    @torch.no_grad()
    def infer(self, image, features=None):
        """Eager scoring with bounded memory (chunked search); same result as forward, for evaluation."""
        features = self.backbone(image, features)
        anomaly_map, score = self.to_map(
            self.patch_scores(self.embed(image, features), self.memory_bank, chunked_distances)
        )
        if self.coarse:
            coarse = self.coarse_scores(features, self.coarse_bank, chunked_distances)
            score = fused_score(score, coarse, self.coarse_calibration)
        return anomaly_map, score


def bank_distances(embedding, memory_bank, config, search, bases=None, sizes=None):
    """N×1×h×w distance of every patch to its nearest row of the bank, or of its own region's bank when
    `config.regions` > 1 (of `sizes` rows each; `config.region_rows` unless given); `search(N×D×h×w, bank, basis)`
    is `nearest_distances` (graph) or `chunked_distances` (eager). `bases` (banks×D×(k+1), projection.py) makes
    each bank's search projected."""
    if config.regions > 1:
        sizes = config.region_rows if sizes is None else sizes
        return region_distances(embedding, memory_bank, sizes, config.regions, config.region_margin, search, bases)
    return search(embedding, memory_bank, None if bases is None else bases[0])


def chunked_distances(embedding, memory_bank, basis=None):
    """`nearest_distances` with bounded memory (chunked search), for eager evaluation."""
    from .._ops import chunked_min_euclidean

    batch, dim, height, width = embedding.shape
    queries = embedding.permute(0, 2, 3, 1).reshape(-1, dim)
    bank = memory_bank.to(queries.dtype)
    distances, _ = chunked_min_euclidean(*((queries, bank) if basis is None else project(queries, bank, basis)))
    return distances.reshape(batch, 1, height, width)
