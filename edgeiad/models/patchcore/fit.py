"""Fit PatchCore: embed every training patch, keep a greedy coreset as the memory bank."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ...errors import require_torch
from .._fitting import Stopwatch, collect_embeddings
from .coreset import greedy_coreset
from .torch_model import PatchCoreConfig, PatchCoreModel

torch = require_torch()


def fit_patchcore(config: PatchCoreConfig, batches: Iterable, device: str = "cpu", progress=None):
    """Return (fitted PatchCoreModel on the CPU, info dict with timings and bank size)."""
    watch = Stopwatch()
    model = PatchCoreModel(config).to(device)
    with watch.time("embedding_s"):
        embeddings = collect_embeddings(model.embed, batches, device)
    with watch.time("coreset_s"):
        bank = select_memory_bank(embeddings, config, progress)
    model = PatchCoreModel(config)
    model.memory_bank.copy_(bank)
    info = {"n_patches": int(embeddings[:, 0].numel()), "bank_size": config.bank_size, **watch.timings}
    return model.eval(), info


def select_memory_bank(embeddings, config, progress=None):
    """The greedy coreset of all N×D×h×w training patches; sets config.bank_size and feature_dim."""
    features = embeddings.permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])
    size = max(1, math.ceil(features.shape[0] * config.coreset_ratio))
    selected = greedy_coreset(features, size, seed=config.seed, projection_dim=config.projection_dim, progress=progress)
    config.bank_size = int(selected.numel())
    config.feature_dim = int(features.shape[1])
    return features[selected]
