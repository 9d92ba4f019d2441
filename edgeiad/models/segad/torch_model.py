"""SegAD (seed 003): per-segment statistics of base detectors' anomaly maps, scored by a boosted random forest.

image → each base detector's anomaly map → pooled to a stride-`pool` grid → for every base map and segment: the
`quantile` (99.5 %) value, skewness, kurtosis and mean (the paper's q, z, c, m: K·L·4 features) → the trees'
margin, the image score. The segmentation is static (one region, a grid, a user's label image: parts that are
aligned, as in the paper's VAD) or k-means of early backbone features of good images, assigned per patch at
inference. Everything, trees included, is plain tensor ops (TopK, Gather, Less), so one ONNX graph carries the
whole model to every target: no ONNX-ML operators, no xgboost or numpy stage beside the runtime.

The anomaly map is the first base detector's map, unchanged: SegAD only re-scores the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import ConfigError, require_torch
from ..config import FeatureBankConfig

torch = require_torch()
nn = torch.nn
F = torch.nn.functional

SEGMENTATIONS = ("single", "grid", "labels", "kmeans")
STATISTICS = ("quantile", "skew", "kurtosis", "mean")
EMPTY = -1e30  # the value masked-out pixels take before TopK (finite: TensorRT and OpenVINO dislike inf inputs)


@dataclass
class SegadConfig(FeatureBankConfig):
    """Base detectors, segmentation, statistics and the paper's Boosted Random Forest settings (Appendix A.1)."""

    model: str = "segad"
    # Chosen by `edgeiad study --setting supervised` on the mean over five sets (bsdata, bsdata-full, deeppcb,
    # cfd, ELPV mono; 3 seeds; docs/segad.md): image AUROC with 5 / 10 labelled defects, PatchCore + PaDiM on a
    # 2x2 grid 0.871 / 0.879, on k-means regions 0.868 / 0.876; PatchCore alone on a grid 0.865 / 0.874, on
    # k-means 0.866 / 0.872. The grid needs no segmenter pass; k-means adapts to parts that are not aligned.
    bases: tuple[str, ...] = ("patchcore", "padim")
    segmentation: str = "grid"
    segments: int = 4  # k-means clusters; set by the fit for the static kinds (grid cells, label values)
    grid: tuple[int, int] = (2, 2)
    label_map: str = ""  # a PNG whose distinct gray values are the segments (segmentation="labels")
    pool: int = 4  # statistics on the base maps average-pooled to this stride (the maps are smooth already)
    quantile: float = 0.995
    base_share: float = 0.5  # good training images that fit the base detectors; the rest fit the trees
    rounds: int = 10
    parallel_trees: int = 200
    max_depth: int = 5
    learning_rate: float = 0.3
    subsample: float = 0.6
    colsample: float = 0.6  # by tree and by node, as the paper
    l1: float = 1.0
    synthetic_per_image: int = 2  # disturbed copies per stage-two good image when no labelled defects are given
    # Beyond the paper: each base's own image score as one more feature, and defective images weighted up to the
    # good images' total (xgboost scale_pos_weight) so that a handful of labels can still open a split.
    image_scores: bool = True
    balance: bool = True
    # The trees boost from the first base's image score, standardised on the stage-two good images and scaled by
    # `prior_weight` (xgboost base_margin): a handful of labels then corrects the base's ranking instead of
    # replacing it. 0 = the paper's forest alone. Measured in docs/segad.md (ELPV mono, 5 labels: 0.81 → 0.86).
    prior_weight: float = 1.0
    base_configs: list = field(default_factory=list)  # each base's full config, written by the fit

    def validate(self) -> None:
        super().validate()
        from .. import MODELS

        if not self.bases:
            raise ConfigError("segad needs at least one base detector, e.g. bases=('patchcore',)")
        for name in self.bases:
            if name not in MODELS or name == "segad":
                choices = ", ".join(n for n in MODELS if n != "segad")
                raise ConfigError(f"segad base {name!r} is not a detector: choose from {choices}")
        if self.segmentation not in SEGMENTATIONS:
            raise ConfigError(f"segmentation {self.segmentation!r} is unknown: use one of {', '.join(SEGMENTATIONS)}")
        if self.segmentation == "labels" and not self.label_map:
            raise ConfigError("segmentation 'labels' needs label_map: a PNG of segment values aligned with the parts")
        if not 1 <= self.segments <= 64 or min(self.grid) < 1 or self.grid[0] * self.grid[1] > 64:
            raise ConfigError("use 1 to 64 segments (k-means clusters or grid cells)")
        if self.pool not in (1, 2, 4, 8, 16) or not 0.5 < self.quantile < 1.0 or not 0.0 < self.base_share < 1.0:
            raise ConfigError("pool must be 1, 2, 4, 8 or 16; quantile in (0.5, 1); base_share in (0, 1)")
        if self.rounds < 1 or self.parallel_trees < 1 or not 1 <= self.max_depth <= 8:
            raise ConfigError("use at least one round and one tree, and max_depth from 1 to 8")
        if not 0.0 <= self.prior_weight <= 10.0:
            raise ConfigError(f"prior_weight {self.prior_weight!r} is invalid: use 0 (trees alone) to 10, e.g. 1")

    @property
    def n_features(self) -> int:
        return len(self.bases) * (self.segments * len(STATISTICS) + int(self.image_scores))

    def feature_names(self) -> list[str]:
        """`statistic:base:segment` for each feature, in the paper's order [q, z, c, m] over bases and segments."""
        names = [
            f"{stat}:{base}:{segment}"
            for stat in STATISTICS
            for base in self.bases
            for segment in range(self.segments)
        ]  # fmt: skip
        return names + ([f"score:{base}" for base in self.bases] if self.image_scores else [])

    def base_config(self, index: int):
        """The config of base `index`: the stored one, else the base's defaults at this model's input size and
        backbone (PatchCore's own default is Lite1, PaDiM's Lite0: one backbone keeps their pass shared)."""
        from .. import get_model

        spec = get_model(self.bases[index])
        if index < len(self.base_configs):
            return spec.config_cls().from_dict(self.base_configs[index])
        return spec.make_config(
            image_size=tuple(self.image_size), resize="squash", seed=self.seed, interpolation=self.interpolation,
            backbone=self.backbone,
        )  # fmt: skip


def segment_statistics(pooled, labels, segments: int, quantile: float):
    """N×K×h×w pooled maps and N×h×w segment labels → N×(4·K·L) features [quantile, skew, kurtosis, mean].

    Empty segments (possible with k-means) give 0 for all four; a flat segment gives skew and kurtosis 0.
    """
    batch, bases = pooled.shape[:2]
    values = pooled.flatten(2)  # N×K×P
    member = (labels.flatten(1).unsqueeze(1) == torch.arange(segments, device=labels.device).view(1, -1, 1)).to(
        values.dtype
    )  # N×L×P
    count = member.sum(dim=2)  # N×L
    safe = count.clamp(min=1.0).unsqueeze(1)  # N×1×L
    mean = torch.einsum("nkp,nlp->nkl", values, member) / safe
    deviation = (values.unsqueeze(2) - mean.unsqueeze(3)) * member.unsqueeze(1)  # N×K×L×P, 0 outside the segment
    square = deviation * deviation
    m2 = square.sum(dim=3) / safe
    m3 = (square * deviation).sum(dim=3) / safe
    m4 = (square * square).sum(dim=3) / safe
    spread = m2 > 1e-12 * (mean * mean + 1e-12)
    skew = torch.where(spread, m3 / torch.clamp(m2, min=1e-30) ** 1.5, torch.zeros_like(m3))
    kurtosis = torch.where(spread, m4 / torch.clamp(m2 * m2, min=1e-30) - 3.0, torch.zeros_like(m4))
    # Quantile with linear interpolation (numpy's default) from the largest values: at (n - 1)(1 - q) from the top.
    pixels = values.shape[2]
    top = min(pixels, int((pixels - 1) * (1.0 - quantile)) + 2)
    masked = torch.where(member.unsqueeze(1) > 0, values.unsqueeze(2), torch.full_like(deviation, EMPTY))
    largest = torch.topk(masked, top, dim=3).values  # N×K×L×top, descending
    rank = (count - 1.0).clamp(min=0.0) * (1.0 - quantile)  # N×L
    low = torch.floor(rank)
    frac = (rank - low).unsqueeze(1).unsqueeze(3)
    low_index = low.long().clamp(max=top - 1).unsqueeze(1).unsqueeze(3).expand(batch, bases, segments, 1)
    high_index = (low_index + 1).clamp(max=(count - 1.0).clamp(min=0.0).long().view(batch, 1, segments, 1))
    high_index = high_index.clamp(max=top - 1)
    upper = torch.gather(largest, 3, low_index)
    lower = torch.gather(largest, 3, high_index)
    value = (upper + (lower - upper) * frac).squeeze(3)
    present = (count > 0).unsqueeze(1)
    zero = torch.zeros_like(mean)
    columns = [torch.where(present, stat, zero) for stat in (value, skew, kurtosis, mean)]
    return torch.cat([column.flatten(1) for column in columns], dim=1)


def tree_margin(x, features, thresholds, leaves, base):
    """Margin of complete binary trees (see trees.py) for N×F features, as Gather / GreaterOrEqual / Add ops.

    `leaves` is flat (T·2^D): thresholds and leaves then reach the graph as the buffers themselves, untouched by
    constant folding, so an fp16 export can keep exactly these initializers at fp32 (`exact_buffers`).
    """
    batch = x.shape[0]
    count, internal = features.shape
    per_tree = internal + 1
    depth = per_tree.bit_length() - 1
    gathered = x.index_select(1, features.flatten()).view(batch, count, internal)
    right = (gathered >= thresholds).long()
    position = torch.zeros(batch, count, 1, dtype=torch.long, device=x.device)
    for level in range(depth):
        bit = torch.gather(right, 2, position + (2**level - 1))
        position = position * 2 + bit
    offsets = torch.arange(count, device=x.device).view(1, count, 1) * per_tree
    reached = leaves.index_select(0, (position + offsets).flatten()).view(batch, count)
    return reached.sum(dim=1) + base


class SegadModel(nn.Module):
    """image → anomaly_map (the first base's), pred_score (the trees' margin over per-segment statistics)."""

    stats_names: tuple[str, ...] = ()  # trees and segmentation are learned state, baked into the graph
    resizable_stats: dict[str, int] = {}
    score_is_map_max = False
    exact_buffers = ("tree_thresholds", "tree_leaves")  # fp16 storage would move features across split points

    def __init__(self, config: SegadConfig) -> None:
        super().__init__()
        from .. import get_model
        from ..backbones import FeatureExtractor, get_backbone

        self.config = config
        self.image_size = tuple(config.image_size)
        self.bases = nn.ModuleList(
            get_model(name).model_cls()(config.base_config(index)) for index, name in enumerate(config.bases)
        )
        for base in self.bases:
            if tuple(base.image_size) != self.image_size:
                raise ConfigError(f"segad base input {base.image_size} differs from {self.image_size}: re-train")
        # Bases on one backbone (PatchCore and PaDiM at their defaults) share one backbone pass: at 384 px that
        # halves the graph (one Lite0 pass instead of two). The pass is that of the base tapping the most blocks
        # (PatchCore, whose coarse score also reads block 14); each base takes its own blocks from it.
        taps = [b.feature_extractor.layers for b in self.bases]
        self.shared_index = max(range(len(taps)), key=lambda index: len(taps[index]))
        self.shared_backbone = (
            len({b.config.backbone for b in self.bases}) == 1
            and all(set(layers) <= set(taps[self.shared_index]) for layers in taps)
            and all(getattr(b, "accepts_features", False) for b in self.bases)
        )
        grid = (self.image_size[0] // config.pool, self.image_size[1] // config.pool)
        self.register_buffer("segment_labels", torch.zeros(grid, dtype=torch.long))
        if config.segmentation == "kmeans":
            layer = get_backbone(config.backbone).default_layers[0]
            self.feature_extractor = FeatureExtractor(config.backbone, (layer,), self.image_size)
            channels = self.feature_extractor.channels()[0]
            self.register_buffer("centroids", torch.zeros(config.segments, channels))
        internal, leaves = 2**config.max_depth - 1, 2**config.max_depth
        count = config.rounds * config.parallel_trees
        self.register_buffer("tree_features", torch.zeros(count, internal, dtype=torch.long))
        self.register_buffer("tree_thresholds", torch.full((count, internal), float("inf")))
        self.register_buffer("tree_leaves", torch.zeros(count * leaves))
        self.register_buffer("tree_base", torch.zeros(()))
        self.register_buffer("prior", torch.tensor([0.0, 1.0]))  # mean, std of the first base's good scores

    def manifest_section(self, record: dict) -> dict:
        """What an artifact's manifest says about the stage: bases, segmentation, features, trees, training data."""
        config = self.config
        fit = record.get("fit", {})
        data = record.get("data", {})
        return {
            "kind": "segad",
            "bases": list(config.bases),
            "anomaly_map": f"{config.bases[0]}'s map, unchanged",
            "segmentation": {
                "kind": config.segmentation,
                "segments": config.segments,
                "grid": list(config.grid) if config.segmentation == "grid" else None,
                "label_map": config.label_map or None,
                "statistics_stride": config.pool,
            },
            "features": {
                "statistics": list(STATISTICS),
                "quantile": config.quantile,
                "base_image_scores": config.image_scores,
                "count": config.n_features,
            },
            "trees": {
                "count": config.rounds * config.parallel_trees,
                "rounds": config.rounds,
                "parallel_trees": config.parallel_trees,
                "max_depth": config.max_depth,
                "evaluation": "complete binary trees as Gather/GreaterOrEqual graph ops (no ONNX-ML)",
                "xgboost_parity_max_abs": fit.get("tree_parity_max_abs"),
                "prior": {
                    "weight": config.prior_weight,
                    "of": f"{config.bases[0]}'s image score",
                    "mean": float(self.prior[0]),
                    "std": float(self.prior[1]),
                },  # fmt: skip
            },
            "training": {
                "defects": fit.get("defects"),
                "n_base_images": fit.get("n_base_images"),
                "n_stage_good": fit.get("n_stage_good"),
                "n_stage_defective": fit.get("n_stage_defective"),
                "labelled_types": data.get("train_anomalous_types", {}),
            },
        }

    def segments_of(self, image):
        """N×h×w segment labels on the statistics grid."""
        batch = image.shape[0]
        if self.config.segmentation != "kmeans":
            return self.segment_labels.unsqueeze(0).expand(batch, *self.segment_labels.shape)
        features = self.feature_extractor(image)[0]  # N×C×h8×w8
        return assign_clusters(features, self.centroids, self.segment_labels.shape)

    def features(self, image, outputs):
        """The K·L·4 statistics of the base (map N×1×H×W, score N) outputs, then the K scores (`image_scores`)."""
        pooled = torch.cat([anomaly_map for anomaly_map, _ in outputs], dim=1)
        if self.config.pool > 1:
            pooled = F.avg_pool2d(pooled, self.config.pool)
        found = segment_statistics(pooled, self.segments_of(image), self.config.segments, self.config.quantile)
        if self.config.image_scores:
            found = torch.cat([found, torch.stack([score for _, score in outputs], dim=1).to(found.dtype)], dim=1)
        return found

    def prior_margin(self, base_score):
        """The margin the trees boost from: prior_weight × the first base's standardised image score."""
        return self.config.prior_weight * (base_score - self.prior[0]) / self.prior[1]

    def score(self, features, base_score):
        margin = tree_margin(features, self.tree_features, self.tree_thresholds, self.tree_leaves, self.tree_base)
        return margin + self.prior_margin(base_score) if self.config.prior_weight else margin

    def _run_bases(self, image, eager: bool, features=None):
        """Each base's (map, score); with a shared backbone its pass runs once (or `features` is that pass)."""
        call = (lambda base, **kw: base.infer(image, **kw)) if eager else (lambda base, **kw: base(image, **kw))
        if not self.shared_backbone:
            return [call(base) for base in self.bases]
        features = self.shared_features(image) if features is None else features
        return [call(base, features=self.own_features(base, features)) for base in self.bases]

    def shared_features(self, image):
        """The shared backbone pass: the outputs of the widest base's feature extractor (`shared_backbone`)."""
        return self.bases[self.shared_index].feature_extractor(image)

    def own_features(self, base, features):
        """`base`'s blocks, in its own order, out of the shared pass's `features`."""
        shared = self.bases[self.shared_index].feature_extractor.layers
        return [features[shared.index(layer)] for layer in base.feature_extractor.layers]

    def forward(self, image):
        outputs = self._run_bases(image, eager=False)
        return outputs[0][0], self.score(self.features(image, outputs), outputs[0][1])

    def embed(self, image):
        """The bases' backbone features side by side (what bench times as the backbone-only reference)."""
        missing = [name for name, base in zip(self.config.bases, self.bases) if not hasattr(base, "embed")]
        if missing:
            raise ConfigError(f"segad bases {missing} have no embedding to time alone: bench them on their own")
        if self.shared_backbone:
            shared = self.shared_features(image)
            features = [base.embed(image, self.own_features(base, shared)) for base in self.bases]
        else:
            features = [base.embed(image) for base in self.bases]
        size = features[0].shape[-2:]
        return torch.cat([F.interpolate(f, size=size, mode="nearest") for f in features], dim=1)

    @torch.no_grad()
    def base_outputs(self, image, features=None):
        """Each base's eager (map, score), with its bounded-memory scoring; `features`: `shared_features(image)`
        when the caller has them already (used only when the backbone is shared)."""
        return self._run_bases(image, eager=True, features=features)

    @torch.no_grad()
    def infer(self, image):
        outputs = self.base_outputs(image)
        return outputs[0][0], self.score(self.features(image, outputs), outputs[0][1])


def assign_clusters(features, centroids, grid: tuple[int, int]):
    """Nearest centroid of each N×C×h×w feature position, resized (nearest) to the N×grid statistics grid."""
    flat = features.flatten(2).transpose(1, 2)  # N×P×C
    distances = (flat * flat).sum(-1, keepdim=True) - 2.0 * flat @ centroids.T + (centroids * centroids).sum(-1)
    nearest = distances.argmin(dim=-1).view(features.shape[0], 1, *features.shape[2:]).float()
    return F.interpolate(nearest, size=tuple(grid), mode="nearest").squeeze(1).long()
