"""Fit PaDiM: a Gaussian (mean, regularised inverse covariance) per feature-map position."""

from __future__ import annotations

from collections.abc import Iterable

from ...errors import require_torch
from .._fitting import Stopwatch, collect_embeddings
from .torch_model import PadimConfig, PadimModel

torch = require_torch()


def gaussian_statistics(embeddings, regularization: float):
    """Per-position mean (P×d) and regularised inverse covariance (P×d×d) of N×d×h×w float64 embeddings."""
    count, dim, height, width = embeddings.shape
    # float64 for the statistics: covariances of ~200 samples are ill-conditioned in float32.
    samples = embeddings.reshape(count, dim, height * width).permute(2, 0, 1)  # P×N×d
    mean = samples.mean(dim=1)
    centred = samples - mean.unsqueeze(1)
    covariance = centred.transpose(1, 2) @ centred / max(count - 1, 1)
    covariance += regularization * torch.eye(dim, dtype=covariance.dtype)
    return mean, torch.linalg.inv(covariance)


def fit_padim(config: PadimConfig, batches: Iterable, device: str = "cpu", progress=None):
    """Return (fitted PadimModel on the CPU, info dict with timings)."""
    watch = Stopwatch()
    model = PadimModel(config).to(device)
    with watch.time("embedding_s"):
        embeddings = collect_embeddings(model.embed, batches, device).double()
    count = embeddings.shape[0]
    with watch.time("statistics_s"):
        mean, inverse = gaussian_statistics(embeddings, config.regularization)
    model = model.cpu()
    model.mean.copy_(mean.float())
    model.inv_covariance.copy_(inverse.float())
    if progress is not None:
        progress(1, 1)
    return model.eval(), {"n_samples": count, **watch.timings}
