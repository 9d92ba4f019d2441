"""Fit PaDiM: a Gaussian (mean, regularised inverse covariance) per feature-map position.

The Gaussians are kept as running sums (count, sum, sum of outer products, float64) beside the weights, so
`edgeiad update` adds new good images exactly: fitting on A then updating with B gives the statistics of a fit
on A and B together.
"""

from __future__ import annotations

from collections.abc import Iterable

from ...errors import require_torch
from .._fitting import Stopwatch, collect_embeddings, spd_inverse
from .._robust import trimmed_moments
from .torch_model import PadimConfig, PadimModel

torch = require_torch()


def position_samples(embeddings):
    """N×d×h×w embeddings as P×N×d float64 samples, one row of samples per feature-map position."""
    count, dim, height, width = embeddings.shape
    return embeddings.double().reshape(count, dim, height * width).permute(2, 0, 1)


def moments(samples):
    """Per-position running sums of P×N×d samples: count (P), sum (P×d), sum of outer products (P×d×d)."""
    count = torch.full((samples.shape[0],), float(samples.shape[1]), dtype=samples.dtype)
    return count, samples.sum(dim=1), samples.transpose(1, 2) @ samples


def gaussian_from_moments(count, total, outer, regularization: float):
    """Mean (P×d) and regularised inverse covariance (P×d×d) from running sums (unbiased covariance)."""
    mean = total / count.unsqueeze(1)
    covariance = (outer - count.view(-1, 1, 1) * mean.unsqueeze(2) * mean.unsqueeze(1)) / (count - 1).clamp_min(
        1.0
    ).view(-1, 1, 1)
    covariance += regularization * torch.eye(total.shape[1], dtype=total.dtype)
    return mean, spd_inverse(covariance)


def gaussian_statistics(embeddings, regularization: float):
    """Per-position mean (P×d) and regularised inverse covariance (P×d×d) of N×d×h×w embeddings (float64:
    covariances of ~200 samples are ill-conditioned in float32)."""
    return gaussian_from_moments(*moments(position_samples(embeddings)), regularization)


def fit_padim(config: PadimConfig, batches: Iterable, device: str = "cpu", progress=None):
    """Return (fitted PadimModel on the CPU, info dict with timings); `model.running` holds the running sums."""
    watch = Stopwatch()
    model = PadimModel(config).to(device)
    with watch.time("embedding_s"):
        embeddings = collect_embeddings(model.embed, batches, device)
    with watch.time("statistics_s"):
        running = dict(zip(RUNNING, trimmed_moments(position_samples(embeddings), config.trim, config.regularization)))
    model = _install(model.cpu(), running, config)
    if progress is not None:
        progress(1, 1)
    info = {"n_samples": int(embeddings.shape[0]), **watch.timings}
    if config.trim:
        info["trimmed_per_position"] = int(embeddings.shape[0] - running["count"].min().item())
    return model, info


RUNNING = ("count", "sum", "outer")


def running_shapes(model) -> dict:
    """The running sums a fitted PaDiM keeps, by name and shape (checked before an update uses them)."""
    positions, dim = model.mean.shape
    return {"count": (positions,), "sum": (positions, dim), "outer": (positions, dim, dim)}


def update_padim(config: PadimConfig, model: PadimModel, running: dict, batches: Iterable, device="cpu", progress=None):
    """Add new good images to a fitted PaDiM exactly: running sums plus the new images' sums (trimmed at the
    config's `trim` against the new images' own Gaussian), statistics recomputed. Returns (model, info)."""
    watch = Stopwatch()
    model = model.to(device)
    with watch.time("embedding_s"):
        embeddings = collect_embeddings(model.embed, batches, device)
    with watch.time("statistics_s"):
        added = trimmed_moments(position_samples(embeddings), config.trim, config.regularization)
        running = {name: running[name].double() + value for name, value in zip(RUNNING, added)}
    model = _install(model.cpu(), running, config)
    if progress is not None:
        progress(1, 1)
    return model, {
        "n_samples_added": int(embeddings.shape[0]),
        "n_samples": int(running["count"].max()),
        **watch.timings,
    }


def _install(model: PadimModel, running: dict, config: PadimConfig) -> PadimModel:
    mean, inverse = gaussian_from_moments(running["count"], running["sum"], running["outer"], config.regularization)
    model.mean.copy_(mean.float())
    model.inv_covariance.copy_(inverse.float())
    model.running = running
    return model.eval()
