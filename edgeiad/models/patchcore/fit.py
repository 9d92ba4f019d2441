"""Fit PatchCore: embed every training patch, keep a greedy coreset as the memory bank.

`update_patchcore` adds new good images to a fitted model: the coreset is re-selected from the current bank and
the new images' patches, sized as a fit on all images seen would be (capped at `max_bank`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ...errors import require_torch
from .._fitting import Stopwatch, collect_embeddings
from .._robust import denoise_patches
from .coreset import greedy_coreset
from .torch_model import PatchCoreConfig, PatchCoreModel

torch = require_torch()


def running_shapes(model) -> dict:
    """What `edgeiad update` needs beside the bank: how many training patches the bank stands for."""
    return {"n_patches": (1,)}


def fit_patchcore(config: PatchCoreConfig, batches: Iterable, device: str = "cpu", progress=None):
    """Return (fitted PatchCoreModel on the CPU, info dict with timings and bank size)."""
    watch = Stopwatch()
    model = PatchCoreModel(config).to(device)
    with watch.time("embedding_s"):
        embeddings = collect_embeddings(model.embed, batches, device)
    with watch.time("denoise_s"):
        rows, denoised = denoise_patches(embeddings, config.denoise)
    n_patches = int(embeddings[:, 0].numel())
    del embeddings
    with watch.time("coreset_s"):
        bank = select_memory_bank(rows, config, progress, n_patches=n_patches)
    model = _install(config, bank, n_patches)
    info = {"n_patches": n_patches, "bank_size": config.bank_size, **denoised, **watch.timings}
    return model, info


def bank_budget(config: PatchCoreConfig, n_patches: int) -> int:
    """Rows of the bank for `n_patches` training patches: the coreset ratio of them, at least min_bank (or all
    patches when fewer), capped at max_bank."""
    size = max(1, math.ceil(n_patches * config.coreset_ratio), min(n_patches, getattr(config, "min_bank", 1)))
    cap = getattr(config, "max_bank", 0)  # the ensemble's PatchCore half has no cap
    return min(size, cap) if cap else size


def select_memory_bank(embeddings, config, progress=None, n_patches: int | None = None):
    """The greedy coreset of the training patches (N×D×h×w, or M×D rows already filtered); sets config.bank_size
    and feature_dim. The bank's size follows `n_patches` (all patches seen) when given, else the rows given."""
    if embeddings.dim() == 4:
        embeddings = embeddings.permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])
    size = min(bank_budget(config, n_patches or embeddings.shape[0]), embeddings.shape[0])
    selected = greedy_coreset(
        embeddings, size, seed=config.seed, projection_dim=config.projection_dim, progress=progress
    )
    config.bank_size = int(selected.numel())
    config.feature_dim = int(embeddings.shape[1])
    return embeddings[selected]


def update_patchcore(config: PatchCoreConfig, model, running: dict, batches: Iterable, device="cpu", progress=None):
    """Add new good images: bank re-selected from the current bank and the new patches (denoised among the new
    images when `denoise` is on), sized for all patches seen. Returns (model, info)."""
    watch = Stopwatch()
    model = model.to(device)
    with watch.time("embedding_s"):
        embeddings = collect_embeddings(model.embed, batches, device)
    with watch.time("denoise_s"):
        rows, denoised = denoise_patches(embeddings, config.denoise)
    seen = int(running["n_patches"].item()) + int(embeddings[:, 0].numel())
    candidates = torch.cat([model.memory_bank.detach().cpu().float(), rows])
    with watch.time("coreset_s"):
        bank = select_memory_bank(candidates, config, progress, n_patches=seen)
    model = _install(config, bank, seen)
    info = {"n_patches_added": int(embeddings[:, 0].numel()), "n_patches": seen, "bank_size": config.bank_size}
    return model, {**info, **denoised, **watch.timings}


def _install(config: PatchCoreConfig, bank, n_patches: int) -> PatchCoreModel:
    model = PatchCoreModel(config)
    model.memory_bank.copy_(bank)
    model.running = {"n_patches": torch.tensor([n_patches], dtype=torch.float64)}
    return model.eval()
