"""Fit N-pad: channel choice, per-position Gaussians, similarity-weighted Gaussians, aggregated Gaussians,
k-means centroids (seed 001, sections 3.1–3.3). Statistics in float64, stored as float32."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ...errors import require_torch
from .._fitting import Stopwatch, collect_embeddings
from .._ops import aggregate_features, chunked_min_euclidean
from ..backbones import FeatureExtractor
from .torch_model import NpadConfig, NpadModel, inside, offsets, shift_index

torch = require_torch()


def select_channels(features, count: int):
    """The `count` channels with the fewest non-positive activations: the least clipped, most Gaussian-like
    (seed 001 drops channels that an activation function squashed at zero)."""
    clipped = (features <= 0).sum(dim=(0, 2, 3))
    order = torch.argsort(clipped * features.shape[1] + torch.arange(features.shape[1]), stable=True)
    return order[:count].sort().values


def gaussian(samples, regularization: float):
    """Per-position mean and regularised precision from P×N×d samples."""
    mean = samples.mean(dim=1)
    centred = samples - mean.unsqueeze(1)
    covariance = centred.transpose(1, 2) @ centred / max(samples.shape[1] - 1, 1)
    covariance += regularization * torch.eye(samples.shape[2], dtype=samples.dtype)
    return mean, torch.linalg.inv(covariance)


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


def weighted_gaussian(samples, weights, radius: int, regularization: float, height: int, width: int):
    """Mean and precision at each p from the features of p's neighbours over all images, weighted by similarity."""
    positions, count, dim = samples.shape
    total = torch.zeros(positions, dtype=samples.dtype)
    first = torch.zeros(positions, dim, dtype=samples.dtype)
    second = torch.zeros(positions, dim, dim, dtype=samples.dtype)
    for weight, (dy, dx) in zip(weights, offsets(radius)):
        neighbour = samples[shift_index(height, width, dy, dx)]  # P×N×d
        total += weight * count
        first += weight.unsqueeze(1) * neighbour.sum(dim=1)
        second += weight.view(-1, 1, 1) * (neighbour.transpose(1, 2) @ neighbour)
    mean = first / total.unsqueeze(1)
    covariance = second / total.view(-1, 1, 1) - mean.unsqueeze(2) * mean.unsqueeze(1)
    covariance += regularization * torch.eye(dim, dtype=samples.dtype)
    return mean, torch.linalg.inv(covariance)


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


def fit_npad(config: NpadConfig, batches: Iterable, device: str = "cpu", progress=None):
    """Return (fitted NpadModel on the CPU, info dict with timings and sizes)."""
    watch = Stopwatch()
    extractor = FeatureExtractor(config.backbone, config.resolved_layers(), tuple(config.image_size)).to(device)
    with watch.time("embedding_s"):
        features = collect_embeddings(lambda image: aggregate_features(extractor(image), False), batches, device)
    channels = select_channels(features, config.n_features)
    embedding = features.index_select(1, channels).double()
    count, dim, height, width = embedding.shape
    samples = embedding.reshape(count, dim, height * width).permute(2, 0, 1).contiguous()  # P×N×d
    with watch.time("gaussians_s"):
        mean, precision = gaussian(samples, config.regularization)
        weights = similarity_weights(mean, precision, config.train_radius, config.balance, height, width)
        mean_a, precision_a = weighted_gaussian(
            samples, weights, config.train_radius, config.regularization, height, width
        )
        size = 2 * config.train_radius + 1
        pooled = torch.nn.functional.avg_pool2d(
            embedding, size, stride=1, padding=config.train_radius, count_include_pad=False
        )
        aggregated = pooled.reshape(count, dim, height * width).permute(2, 0, 1).contiguous()
        mean_b, precision_b = gaussian(aggregated, config.regularization)
    if progress is not None:
        progress(1, 2)
    with watch.time("kmeans_s"):
        points = aggregated.permute(1, 0, 2).reshape(-1, dim).float()
        k = max(1, math.ceil(points.shape[0] * config.centroid_ratio))
        centroids = kmeans(points, k, config.kmeans_iterations, config.seed)
    if progress is not None:
        progress(2, 2)
    config.n_centroids = k
    model = NpadModel(config)
    model.channel_index.copy_(channels)
    for name, value in (("mean_a", mean_a), ("precision_a", precision_a), ("mean_b", mean_b),
                        ("precision_b", precision_b), ("centroids", centroids)):  # fmt: skip
        getattr(model, name).copy_(value.float())
    info = {"n_samples": count, "n_centroids": k, "mean_similarity_weight": float(weights[1:].mean()), **watch.timings}
    return model.eval(), info
