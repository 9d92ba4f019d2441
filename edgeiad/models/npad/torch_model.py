"""N-pad (seed 001): neighbouring-pixel distributions, aggregated-feature distributions, centroid bank.

Graph (all of it exported, nothing in Python around it):
- features: backbone blocks at stride 8, `n_features` channels kept (the most Gaussian-like ones);
- map A: for each position p, the smallest Mahalanobis distance of x_p to the similarity-weighted Gaussians
  of the positions within `infer_radius` (computed by shifting the features, so the P×d×d precision matrices
  never move);
- map B: Mahalanobis distance of the neighbourhood-averaged feature to its position's Gaussian;
- pixel score sqrt(A·B) (geometric mean); image score: the top-k pixel scores paired, both sorted, with the
  Euclidean distances of those pixels' aggregated features to the k-means centroids;
- image shifting: the image shifted by 1..`shift` pixels (diagonally) is scored in the same batch and the
  maps, shifted back, and scores are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError, require_torch
from .._ops import GaussianBlur, aggregate_features, memory_bounded_batch, min_euclidean
from ..backbones import FeatureExtractor
from ..config import ModelConfig

torch = require_torch()
nn = torch.nn
F = torch.nn.functional


@dataclass
class NpadConfig(ModelConfig):
    """Seed 001's settings; radii are Chebyshev radii (radius 1 = the 3x3 adjacent pixels)."""

    model: str = "npad"
    n_features: int = 150  # the paper's study: 150 channels already beat PatchCore (550 best)
    train_radius: int = 3
    infer_radius: int = 2
    balance: float = 0.25
    centroid_ratio: float = 0.01
    kmeans_iterations: int = 10
    top_k: int = 10
    shift: int = 4
    regularization: float = 0.01
    n_centroids: int = 0  # filled in by fit

    def validate(self) -> None:
        super().validate()
        if self.n_features < 1 or self.top_k < 1 or self.balance <= 0 or self.shift < 0:
            raise ConfigError("n_features, top_k and balance must be positive and shift >= 0")
        if self.train_radius < 0 or self.infer_radius < 0:
            raise ConfigError(f"radii {self.train_radius}/{self.infer_radius} must be >= 0")
        if not 0.0 < self.centroid_ratio <= 1.0:
            raise ConfigError(f"centroid ratio {self.centroid_ratio} is out of range: use (0, 1], e.g. 0.01")


def offsets(radius: int) -> list[tuple[int, int]]:
    """Every (dy, dx) with max(|dy|, |dx|) <= radius, (0, 0) first."""
    around = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1) if (dy, dx) != (0, 0)]
    return [(0, 0), *around]


def shift_index(height: int, width: int, dy: int, dx: int):
    """Flat index of position p + (dy, dx), clamped at the border (replicate), for each position p."""
    ys = torch.arange(height).view(-1, 1).add(dy).clamp(0, height - 1)
    xs = torch.arange(width).view(1, -1).add(dx).clamp(0, width - 1)
    return (ys * width + xs).reshape(-1)


def inside(height: int, width: int, dy: int, dx: int):
    """True where position p + (dy, dx) lies on the grid."""
    ys = torch.arange(height).view(-1, 1).add(dy)
    xs = torch.arange(width).view(1, -1).add(dx)
    return ((ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)).reshape(-1)


def mahalanobis(samples, mean, precision):
    """Per-position Mahalanobis distance: samples P×M×d, mean P×d, precision P×d×d → P×M."""
    diff = samples - mean.unsqueeze(1)
    return (torch.bmm(diff, precision) * diff).sum(dim=-1).clamp(min=0.0).sqrt()


class NpadModel(nn.Module):
    """image → anomaly_map, pred_score (see module doc). Statistics are buffers: baked or sidecar."""

    stats_names = ("mean_a", "precision_a", "mean_b", "precision_b", "centroids")
    resizable_stats = {"centroids": 0}
    score_is_map_max = False  # the image score pairs top pixel scores with centroid distances

    def __init__(self, config: NpadConfig) -> None:
        super().__init__()
        self.config = config
        self.image_size = tuple(config.image_size)
        self.feature_extractor = FeatureExtractor(config.backbone, config.resolved_layers(), self.image_size)
        total = sum(self.feature_extractor.channels())
        dim = config.n_features
        if dim > total:
            raise ConfigError(
                f"n_features {dim} exceeds the {total} channels of {config.backbone}: use at most {total}"
            )
        height, width = self.grid_size()
        positions = height * width
        self.register_buffer("channel_index", torch.arange(dim))
        for name in ("a", "b"):
            self.register_buffer(f"mean_{name}", torch.zeros(positions, dim))
            self.register_buffer(f"precision_{name}", torch.eye(dim).repeat(positions, 1, 1))
        self.register_buffer("centroids", torch.zeros(max(config.n_centroids, 1), dim))
        shifts = torch.stack([shift_index(height, width, -dy, -dx) for dy, dx in offsets(config.infer_radius)])
        backs = torch.stack([shift_index(height, width, dy, dx) for dy, dx in offsets(config.infer_radius)])
        valid = torch.stack([inside(height, width, dy, dx) for dy, dx in offsets(config.infer_radius)])
        self.register_buffer("gather_features", shifts, persistent=False)
        self.register_buffer("gather_back", backs, persistent=False)
        self.register_buffer("valid_offsets", valid, persistent=False)
        self.blur = GaussianBlur(config.sigma)

    def grid_size(self) -> tuple[int, int]:
        return self.image_size[0] // 8, self.image_size[1] // 8

    def working_bytes_per_image(self) -> int:
        """Bytes map A holds at once per input image: every position's features at every offset, for the image and
        its shifted copies, as about four float32 tensors (gathered, centred, times the precision, squared). At
        384 px that is ~0.7 GB, so a batch of 16 needed ~11 GB."""
        height, width = self.grid_size()
        n_offsets = (2 * self.config.infer_radius + 1) ** 2
        return 4 * 4 * height * width * n_offsets * (self.config.shift + 1) * self.config.n_features

    def embed(self, image):
        """The kept channels of the stride-8 multi-scale features, N×d×h×w."""
        features = aggregate_features(self.feature_extractor(image))
        return features.index_select(1, self.channel_index)

    def aggregate(self, embedding):
        """Neighbourhood average (adaptive average pooling over the training radius)."""
        size = 2 * self.config.train_radius + 1
        return F.avg_pool2d(embedding, size, stride=1, padding=self.config.train_radius, count_include_pad=False)

    def _scores(self, image, mean_a, precision_a, mean_b, precision_b, centroids):
        embedding = self.embed(image)
        batch, dim, height, width = embedding.shape
        flat = embedding.reshape(batch, dim, height * width).permute(2, 0, 1)  # P×N×d
        n_offsets = self.gather_features.shape[0]
        # Map A: x_{q-o} against the Gaussian at q, for every offset o, then moved back so p sees p+o.
        shifted = flat[self.gather_features.reshape(-1)].reshape(n_offsets, height * width, batch, dim)
        shifted = shifted.permute(1, 0, 2, 3).reshape(height * width, n_offsets * batch, dim)
        distances = mahalanobis(shifted, mean_a, precision_a).reshape(height * width, n_offsets, batch)
        per_offset = distances.permute(1, 0, 2)  # O×P×N, indexed by q
        back = torch.gather(per_offset, 1, self.gather_back.unsqueeze(-1).expand(-1, -1, batch))
        # Off-grid neighbours fall back to the position's own distance (offset 0), which the min holds anyway.
        back = torch.where(self.valid_offsets.unsqueeze(-1), back, back[:1])
        map_a = back.min(dim=0).values  # P×N
        aggregated = self.aggregate(embedding).reshape(batch, dim, height * width).permute(2, 0, 1)
        map_b = mahalanobis(aggregated, mean_b, precision_b)
        pixel = (map_a * map_b).clamp(min=0.0).sqrt().transpose(0, 1)  # N×P
        # Image score: top-k pixels; their aggregated features' distance to the nearest centroid. Only those k
        # features are searched: the centroid GEMM over all P positions was over half of the model's time.
        k = min(self.config.top_k, height * width)
        top, where = torch.topk(pixel, k, dim=1)
        queries = torch.gather(aggregated.transpose(0, 1), 1, where.unsqueeze(-1).expand(-1, -1, dim))  # N×k×d
        euclid = min_euclidean(queries, centroids)  # N×k, in the pixels' order
        # Both lists in the same (descending) order; TopK with a constant k, not Sort: TensorRT needs K static.
        paired = torch.topk(euclid, k, dim=1).values
        score = (top * paired).clamp(min=0.0).sqrt().mean(dim=1)
        return pixel.reshape(batch, 1, height, width), score

    def _shifted(self, image):
        """The image and its copies shifted down-right by 1..shift pixels (border replicated), batch-major."""
        copies = [image]
        height, width = image.shape[-2:]
        for step in range(1, self.config.shift + 1):
            padded = F.pad(image, (step, 0, step, 0), mode="replicate")
            copies.append(padded[:, :, :height, :width])
        return torch.cat(copies, dim=0)

    def forward(self, image, mean_a=None, precision_a=None, mean_b=None, precision_b=None, centroids=None):
        stats = [
            self.mean_a if mean_a is None else mean_a,
            self.precision_a if precision_a is None else precision_a,
            self.mean_b if mean_b is None else mean_b,
            self.precision_b if precision_b is None else precision_b,
            self.centroids if centroids is None else centroids,
        ]
        stats = [value.to(image.dtype) for value in stats]
        batch = image.shape[0]
        copies = self.config.shift + 1
        pixel, score = self._scores(self._shifted(image), *stats)
        maps = F.interpolate(pixel, size=self.image_size, mode="bilinear", align_corners=False)
        unshifted = [maps[:batch]]
        height, width = self.image_size
        for step in range(1, copies):
            part = maps[step * batch : (step + 1) * batch, :, step:, step:]
            unshifted.append(F.pad(part, (0, step, 0, step), mode="replicate"))
        anomaly_map = self.blur(torch.stack(unshifted).mean(dim=0))
        pred_score = score.reshape(copies, batch).mean(dim=0)
        return anomaly_map, pred_score

    @torch.no_grad()
    def infer(self, image):
        """Eager scoring for evaluation (same graph), in batches whose working set stays within the budget."""
        step = memory_bounded_batch(self, len(image))
        if step >= len(image):
            return self.forward(image)
        parts = [self.forward(image[start : start + step]) for start in range(0, len(image), step)]
        return torch.cat([part[0] for part in parts]), torch.cat([part[1] for part in parts])
