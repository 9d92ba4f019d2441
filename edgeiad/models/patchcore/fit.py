"""Fit PatchCore: embed every training patch, keep a greedy coreset as the memory bank.

`update_patchcore` adds new good images to a fitted model: the coreset is re-selected from the current bank and
the new images' patches, sized as a fit on all images seen would be (capped at `max_bank`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ...errors import ConfigError, require_torch
from .._fitting import Stopwatch, collect_embeddings
from .._robust import denoise_mask, patch_rows
from .coarse import bank_owners, calibration_from, held_out_scores, select_coarse_bank
from .coreset import greedy_coreset
from .projection import principal_bases, with_agreement
from .regions import layout, region_budgets, select_region_banks
from .torch_model import PatchCoreConfig, PatchCoreModel, chunked_distances

torch = require_torch()


def running_shapes(model) -> dict:
    """What `edgeiad update` needs beside the bank: how many training patches the bank stands for."""
    return {"n_patches": (1,)}


def fit_patchcore(config: PatchCoreConfig, batches: Iterable, device: str = "cpu", progress=None):
    """Return (fitted PatchCoreModel on the CPU, info dict with timings and bank size)."""
    watch = Stopwatch()
    model = PatchCoreModel(config).to(device)
    with watch.time("embedding_s"):
        collected = collect_embeddings(model.training_features, batches, device)
    embeddings, coarse = collected if model.coarse else (collected, None)
    with watch.time("denoise_s"):
        keep, denoised = denoise_mask(embeddings, config.denoise)
    n_patches = int(embeddings[:, 0].numel())
    samples = search_samples(embeddings, keep, config) if model.projected else None
    with watch.time("coreset_s"):
        if config.regions > 1:
            bank = select_region_memory(embeddings, keep, config, progress, n_patches)
        else:
            rows = patch_rows(embeddings, keep)
            if coarse is None:  # the coarse score's calibration scores each training image again
                del embeddings
            bank = select_memory_bank(rows, config, progress, n_patches=n_patches)
    coarse_bank = coarse_owners = None
    if coarse is not None:
        with watch.time("coarse_bank_s"):
            coarse_bank, coarse_owners = select_coarse_bank(coarse, config)
    model = _install(config, bank, n_patches, samples, coarse_bank)
    info = {"n_patches": n_patches, "bank_size": config.bank_size, **denoised}
    if coarse is not None:
        with watch.time("coarse_calibration_s"):
            info.update(calibrate_coarse(model, embeddings, coarse, coarse_owners, progress))
    info.update(watch.timings)
    if config.regions > 1:
        info["region_rows"] = list(config.region_rows)
    return model, info


def calibrate_coarse(model: PatchCoreModel, embeddings, coarse, coarse_owners, progress=None) -> dict:
    """Set the fused score's [offset, gain] (coarse.py) from the training images, each scored against the banks
    without its own rows; return what the fit report says of it."""
    owners = bank_owners(model.memory_bank, embeddings)
    main, deep = held_out_scores(model, embeddings, coarse, owners, coarse_owners, chunked_distances, progress)
    calibration, note = calibration_from(main, deep, model.config.coarse_weight)
    model.coarse_calibration.copy_(torch.tensor(calibration))
    info = {"coarse_bank_size": model.config.coarse_bank_size, "coarse_calibration": calibration}
    info["coarse_held_out_images"] = len(main)
    return {**info, "coarse_note": note} if note else info


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


def select_region_memory(embeddings, keep, config, progress=None, n_patches: int | None = None, previous=None):
    """Region banks (models/patchcore/regions.py) of N×D×h×w training patches; sets config.bank_size, feature_dim and
    region_rows. `previous` (the current bank) joins each region's candidates, for `edgeiad update`."""
    _count, dim, height, width = embeddings.shape
    budget = bank_budget(config, n_patches or int(embeddings[:, 0].numel()))
    parts, margin = config.regions, config.region_margin
    if previous is not None and len(config.region_rows) != len(layout(height, width, parts, margin)):
        raise ConfigError(
            f"the run's bank has {len(config.region_rows)} regions, not the {config.regions}x{config.regions} its "
            "config names: refit it with `edgeiad train`"
        )
    old = iter(previous.split(list(config.region_rows))) if previous is not None else None
    cap = getattr(config, "max_bank", 0)
    total, done = sum(region_budgets(height, width, parts, margin, budget, cap)), [0]

    def select(rows, size):  # called once per region, in layout order
        if old is not None:
            rows = torch.cat([next(old), rows])
        picked = greedy_coreset(rows, size, seed=config.seed, projection_dim=config.projection_dim)
        done[0] += picked.numel()
        if progress is not None:
            progress(min(done[0], total), total)
        return rows[picked]

    bank, sizes = select_region_banks(embeddings, keep, budget, parts, margin, select, cap)
    config.bank_size, config.feature_dim, config.region_rows = int(bank.shape[0]), int(dim), sizes
    return bank


def update_patchcore(config: PatchCoreConfig, model, running: dict, batches: Iterable, device="cpu", progress=None):
    """Add new good images: bank re-selected from the current bank and the new patches (denoised among the new
    images when `denoise` is on), sized for all patches seen. Returns (model, info)."""
    watch = Stopwatch()
    model = model.to(device)
    with watch.time("embedding_s"):
        collected = collect_embeddings(model.training_features, batches, device)
    embeddings, coarse = collected if model.coarse else (collected, None)
    with watch.time("denoise_s"):
        keep, denoised = denoise_mask(embeddings, config.denoise)
    seen = int(running["n_patches"].item()) + int(embeddings[:, 0].numel())
    samples = search_samples(embeddings, keep, config) if model.projected else None
    previous = model.memory_bank.detach().cpu().float()
    with watch.time("coreset_s"):
        if config.regions > 1:
            bank = select_region_memory(embeddings, keep, config, progress, n_patches=seen, previous=previous)
        else:
            candidates = torch.cat([previous, patch_rows(embeddings, keep)])
            bank = select_memory_bank(candidates, config, progress, n_patches=seen)
    coarse_bank = calibration = None
    if coarse is not None:  # new rows join the coarse bank; the fit's calibration of the fused score is kept
        coarse_bank, _owners = select_coarse_bank(coarse, config, previous=model.coarse_bank.detach().cpu())
        calibration = model.coarse_calibration.detach().cpu().clone()
    model = _install(config, bank, seen, samples, coarse_bank)
    if calibration is not None:
        model.coarse_calibration.copy_(calibration)
    info = {"n_patches_added": int(embeddings[:, 0].numel()), "n_patches": seen, "bank_size": config.bank_size}
    return model, {**info, **denoised, **watch.timings}


def search_samples(embeddings, keep, config: PatchCoreConfig, count: int = 2048) -> list:
    """Up to `count` good training patches (seeded) per bank, from each region's own cells or from the whole grid:
    what the projected search's γ is estimated on (projection.py)."""
    _images, dim, height, width = embeddings.shape
    if config.regions > 1:
        cells = [(rows, cols) for rows, cols, _rw, _cw in layout(height, width, config.regions, config.region_margin)]
    else:
        cells = [(slice(None), slice(None))]
    generator = torch.Generator().manual_seed(config.seed)
    samples = []
    for rows, cols in cells:
        flat = embeddings[:, :, rows, cols].permute(0, 2, 3, 1).reshape(-1, dim)
        if keep is not None:
            flat = flat[keep[:, rows, cols].reshape(-1)]
        samples.append(flat[torch.randperm(flat.shape[0], generator=generator)[:count]].clone())
    return samples


def _install(config: PatchCoreConfig, bank, n_patches: int, samples=None, coarse_bank=None) -> PatchCoreModel:
    model = PatchCoreModel(config)
    model.memory_bank.copy_(bank)
    if coarse_bank is not None:
        model.coarse_bank.copy_(coarse_bank)
    if model.projected:  # the bases follow the bank: recomputed whenever fit or update selects it
        model.search_basis.copy_(search_bases(config, bank, samples))
    model.running = {"n_patches": torch.tensor([n_patches], dtype=torch.float64)}
    return model.eval()


def search_bases(config, bank, samples=None):
    """Each bank's principal directions, centre and γ (projection.py) for the projected search of a PatchCore
    search over `bank` (stacked region banks when `config.regions` > 1); γ is estimated on `samples` when given
    (`search_samples`), else left at 0."""
    sizes = list(config.region_rows) if config.regions > 1 else [int(bank.shape[0])]
    bases = principal_bases(bank, sizes, config.search_dim)
    return bases if samples is None else with_agreement(bases, bank, sizes, samples)
