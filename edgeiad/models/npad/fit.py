"""Fit N-pad: channel choice, per-position Gaussians, similarity-weighted Gaussians, aggregated Gaussians,
k-means centroids (seed 001, sections 3.1–3.3). Statistics in float64, stored as float32."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ...errors import require_torch
from .._fitting import Stopwatch, collect_embeddings, spd_inverse
from .._ops import aggregate_features, chunked_min_euclidean
from ..backbones import FeatureExtractor
from ..padim.fit import gaussian_from_moments, moments
from .torch_model import NpadConfig, NpadModel, inside, offsets, shift_index

torch = require_torch()


def select_channels(features, count: int):
    """The `count` channels with the fewest non-positive activations: the least clipped, most Gaussian-like
    (seed 001 drops channels that an activation function squashed at zero)."""
    clipped = sum((part <= 0).sum(dim=(0, 2, 3)) for part in features.split(64))  # bounded: the sum is int64
    order = torch.argsort(clipped * features.shape[1] + torch.arange(features.shape[1]), stable=True)
    return order[:count].sort().values


def similarity_weights(mean, precision, radius: int, balance: float, height: int, width: int):
    """O×P weights exp(-D) with D = Δμᵀ Σ_p⁻¹ Δμ / (8·balance·d): the Bhattacharyya distance between the
    Gaussians of p and its neighbour under equal covariances (balance 1 = the original distance; larger =
    flatter), per feature dimension. Without the 1/d the distance grows with the channel count and in 150
    dimensions every neighbour weight underflows to 0 (measured on BSData: mean 2e-170), which silently
    turns N-pad back into PaDiM.

    Even with 1/d the weights stay small on aligned products: the per-position covariance of ~100-200 images
    in 150 dimensions is narrow, so a neighbour's mean is far from p's. Study on BSData (image AUROC / pixel
    AUROC / AUPRO, default settings): these weights (mean 3.9e-5) 0.9936 / 0.9844 / 0.8314; uniform weights
    over the 7x7 neighbourhood 0.9956 / 0.9839 / 0.8270; no 1/d (mean 2e-167) 0.9946 / 0.9837 / 0.8282;
    diagonal covariance with 1/d (mean 0.15) 0.9931 / 0.9769 / 0.7932. As in the seed's own ablation
    (uniform 98.42 vs similarity 98.45 pixel AUROC), the weighting moves results little; flatter weights cost
    localisation here, so the seed's formula (per dimension) stays the default."""
    weights = []
    for dy, dx in offsets(radius):
        neighbour = mean[shift_index(height, width, dy, dx)]
        delta = (mean - neighbour).unsqueeze(1)
        distance = (torch.bmm(delta, precision) * delta).sum(dim=(1, 2)) / (8.0 * balance * mean.shape[1])
        weights.append(torch.exp(-distance) * inside(height, width, dy, dx).to(mean.dtype))
    return torch.stack(weights)


def weighted_gaussian(count, total, outer, weights, radius: int, regularization: float, height: int, width: int):
    """Mean and precision at each p from the features of p's neighbours over all images, weighted by similarity,
    from the per-position running sums (count P, sum P×d, outer-product sum P×d×d) of the plain features."""
    dim = total.shape[1]
    weight_sum = torch.zeros_like(count)
    first = torch.zeros_like(total)
    second = torch.zeros_like(outer)
    for weight, (dy, dx) in zip(weights, offsets(radius)):
        neighbour = shift_index(height, width, dy, dx)
        weight_sum += weight * count[neighbour]
        first += weight.unsqueeze(1) * total[neighbour]
        second += weight.view(-1, 1, 1) * outer[neighbour]
    mean = first / weight_sum.unsqueeze(1)
    covariance = second / weight_sum.view(-1, 1, 1) - mean.unsqueeze(2) * mean.unsqueeze(1)
    covariance += regularization * torch.eye(dim, dtype=total.dtype)
    return mean, spd_inverse(covariance)


def kmeans(points, k: int, iterations: int, seed: int):
    """Lloyd's k-means from k distinct random points (seeded); empty clusters keep their centre."""
    generator = torch.Generator().manual_seed(seed)
    centres = points[torch.randperm(points.shape[0], generator=generator)[:k]].clone()
    for _ in range(iterations):
        _, assigned = chunked_min_euclidean(points, centres)
        sums = torch.zeros_like(centres).index_add_(0, assigned, points)
        counts = torch.bincount(assigned, minlength=k).to(points.dtype)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled].unsqueeze(1)
    return centres


RUNNING = ("count", "sum", "outer", "agg_count", "agg_sum", "agg_outer", "n_points")


def running_shapes(model) -> dict:
    """The running sums a fitted N-pad keeps, by name and shape (checked before an update uses them)."""
    positions, dim = model.mean_a.shape
    plain = {"count": (positions,), "sum": (positions, dim), "outer": (positions, dim, dim)}
    return {**plain, **{f"agg_{name}": shape for name, shape in plain.items()}, "n_points": (1,)}


def fit_npad(config: NpadConfig, batches: Iterable, device: str = "cpu", progress=None):
    """Return (fitted NpadModel on the CPU, info dict with timings and sizes); `model.running` holds the running
    sums `edgeiad update` extends."""
    watch = Stopwatch()
    extractor = FeatureExtractor(config.backbone, config.resolved_layers(), tuple(config.image_size)).to(device)
    with watch.time("embedding_s"):
        features = collect_embeddings(lambda image: aggregate_features(extractor(image)), batches, device)
    channels = select_channels(features, config.n_features)
    embedding = features.index_select(1, channels)  # float32: _running_sums goes to float64 a chunk at a time
    del features
    with watch.time("gaussians_s"):
        running, points = _running_sums(embedding, config)
    if progress is not None:
        progress(1, 2)
    with watch.time("kmeans_s"):
        k = max(1, math.ceil(points.shape[0] * config.centroid_ratio))
        centroids = kmeans(points, k, config.kmeans_iterations, config.seed)
    if progress is not None:
        progress(2, 2)
    model, weight = _install(config, channels, running, centroids, embedding.shape[-2:])
    info = {"n_samples": int(embedding.shape[0]), "n_centroids": k, "mean_similarity_weight": weight, **watch.timings}
    return model, info


def update_npad(config: NpadConfig, model, running: dict, batches: Iterable, device="cpu", progress=None):
    """Add new good images exactly: the Gaussians come from the running sums of all images seen (the channels
    chosen at the first fit are kept), and the new images' k-means centroids join the earlier ones (their count
    follows `centroid_ratio` of the new points). Returns (model, info)."""
    watch = Stopwatch()
    model = model.to(device)
    with watch.time("embedding_s"):
        embedding = collect_embeddings(model.embed, batches, device)
    with watch.time("gaussians_s"):
        added, points = _running_sums(embedding, config)
        running = {name: running[name].double() + added[name] for name in RUNNING}
    with watch.time("kmeans_s"):
        k = max(1, math.ceil(points.shape[0] * config.centroid_ratio))
        centroids = torch.cat(
            [model.centroids.detach().cpu(), kmeans(points, k, config.kmeans_iterations, config.seed)]
        )
    if progress is not None:
        progress(1, 1)
    channels = model.channel_index.detach().cpu()
    model, _ = _install(config, channels, running, centroids, embedding.shape[-2:])
    info = {"n_samples_added": int(embedding.shape[0]), "n_centroids": int(centroids.shape[0]), **watch.timings}
    return model, info


def _running_sums(embedding, config: NpadConfig, chunk: int = 64):
    """Running sums of the plain and the aggregated (neighbourhood-averaged) features of N×d×h×w embeddings, summed
    in float64, and the aggregated features as float32 points for k-means. The images go through `chunk` at a time:
    the sums add up, so the float64 copies of a whole training set are never held at once. They were four at once,
    and on cfd (1,292 tiles) this step alone took the fit to 9.2 GB."""
    count, dim, height, width = embedding.shape
    positions, size = height * width, 2 * config.train_radius + 1
    sums, points = None, torch.empty(count * positions, dim)  # filled in place: no second copy from a cat
    for start in range(0, count, chunk):
        part = embedding[start : start + chunk].double()
        pooled = torch.nn.functional.avg_pool2d(
            part, size, stride=1, padding=config.train_radius, count_include_pad=False
        )
        added = (*moments(_by_position(part)), *moments(_by_position(pooled)))
        sums = added if sums is None else tuple(total + more for total, more in zip(sums, added))
        rows = pooled.reshape(len(part), dim, positions).transpose(1, 2).reshape(-1, dim)
        points[start * positions : start * positions + len(rows)] = rows
    values = (*sums, torch.tensor([float(count * positions)], dtype=torch.float64))
    return dict(zip(RUNNING, values)), points


def _by_position(features):
    """P×N×d samples from N×d×h×w features, as `moments` takes them."""
    count, dim = features.shape[:2]
    return features.reshape(count, dim, -1).permute(2, 0, 1).contiguous()


def _install(config: NpadConfig, channels, running: dict, centroids, grid):
    """Statistics from the running sums into a new NpadModel (config.n_centroids set); returns it and the mean
    neighbour similarity weight."""
    height, width = grid
    mean, precision = gaussian_from_moments(running["count"], running["sum"], running["outer"], config.regularization)
    weights = similarity_weights(mean, precision, config.train_radius, config.balance, height, width)
    mean_a, precision_a = weighted_gaussian(
        running["count"], running["sum"], running["outer"], weights, config.train_radius, config.regularization,
        height, width,
    )  # fmt: skip
    mean_b, precision_b = gaussian_from_moments(
        running["agg_count"], running["agg_sum"], running["agg_outer"], config.regularization
    )
    config.n_centroids = int(centroids.shape[0])
    model = NpadModel(config)
    model.channel_index.copy_(channels)
    for name, value in (("mean_a", mean_a), ("precision_a", precision_a), ("mean_b", mean_b),
                        ("precision_b", precision_b), ("centroids", centroids)):  # fmt: skip
        getattr(model, name).copy_(value.float())
    model.running = running
    return model.eval(), float(weights[1:].mean())
