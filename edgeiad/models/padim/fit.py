"""Fit PaDiM: a Gaussian (mean, regularised inverse covariance) per feature-map position."""

from __future__ import annotations

from collections.abc import Iterable

from ...errors import require_torch
from .._fitting import Stopwatch, collect_embeddings
from .torch_model import PadimConfig, PadimModel

torch = require_torch()


def fit_padim(config: PadimConfig, batches: Iterable, device: str = "cpu", progress=None):
    """Return (fitted PadimModel on the CPU, info dict with timings)."""
    watch = Stopwatch()
    model = PadimModel(config).to(device)
    with watch.time("embedding_s"):
        embeddings = collect_embeddings(model.embed, batches, device).double()
    count, dim, height, width = embeddings.shape
    with watch.time("statistics_s"):
        # float64 for the statistics: covariances of ~200 samples are ill-conditioned in float32.
        samples = embeddings.reshape(count, dim, height * width).permute(2, 0, 1)  # P×N×d
        mean = samples.mean(dim=1)
        centred = samples - mean.unsqueeze(1)
        covariance = centred.transpose(1, 2) @ centred / max(count - 1, 1)
        covariance += config.regularization * torch.eye(dim, dtype=covariance.dtype)
        inverse = torch.linalg.inv(covariance)
    model = model.cpu()
    model.mean.copy_(mean.float())
    model.inv_covariance.copy_(inverse.float())
    if progress is not None:
        progress(1, 1)
    return model.eval(), {"n_samples": count, **watch.timings}
