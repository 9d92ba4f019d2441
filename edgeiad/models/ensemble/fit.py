"""Fit the ensemble: both members on most good images, their score scales on the held-out rest."""

from __future__ import annotations

from collections.abc import Iterable

from ...errors import require_torch
from .._fitting import Stopwatch
from ..padim.fit import gaussian_statistics
from ..patchcore.fit import search_bases, search_samples, select_memory_bank, select_region_memory
from .torch_model import EnsembleConfig, EnsembleModel

torch = require_torch()


def fit_ensemble(config: EnsembleConfig, batches: Iterable, device: str = "cpu", progress=None):
    """Return (fitted EnsembleModel on the CPU, info dict with timings, bank size and the calibration)."""
    watch = Stopwatch()
    model = EnsembleModel(config).to(device)
    with watch.time("embedding_s"):
        images = torch.cat([torch.from_numpy(array) for array, _ in batches])
        local, plain = _embed_all(model, images, device)
    held = _held_out(images.shape[0], config.calibration_share)
    kept = torch.ones(images.shape[0], dtype=torch.bool)
    kept[held] = False
    samples = search_samples(local[kept], None, config) if model.projected else None
    with watch.time("coreset_s"):
        if config.regions > 1:
            bank = select_region_memory(local[kept], None, config, progress)
        else:
            bank = select_memory_bank(local[kept], config, progress)
    with watch.time("statistics_s"):
        mean, inverse = gaussian_statistics(plain[kept].double(), config.regularization)
    model = EnsembleModel(config)  # rebuilt with the bank size the coreset chose
    model.memory_bank.copy_(bank)
    if model.projected:  # the PatchCore half's bases follow its bank, as in PatchCore's fit
        model.search_basis.copy_(search_bases(config, bank, samples))
    model.mean.copy_(mean.float())
    model.inv_covariance.copy_(inverse.float())
    with watch.time("calibration_s"):
        model.calibration.copy_(_calibration(model, images[held], config.calibration_quantile))
    info = {"n_fit": int(kept.sum()), "n_calibration": int(held.numel()), "bank_size": config.bank_size}
    info["calibration"] = model.calibration.tolist()
    return model.eval(), {**info, **watch.timings}


@torch.no_grad()
def _embed_all(model: EnsembleModel, images, device: str):
    local, plain = [], []
    for chunk in images.split(16):
        first, second = model.embed(chunk.to(device))
        local.append(first.cpu())
        plain.append(second.cpu())
    return torch.cat(local), torch.cat(plain)


def _held_out(count: int, share: float):
    """Evenly spread indices of the calibration images: at least one, and never all of them."""
    size = min(max(1, round(count * share)), count - 1) if count > 1 else 0
    return torch.linspace(0, count - 1, size).round().long().unique() if size else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def _calibration(model: EnsembleModel, images, quantile: float):
    """Per member: the median of held-out good patch scores and the distance from it to their `quantile`."""
    if images.shape[0] == 0:  # a single training image: nothing held out, keep the identity scale
        return torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    scores = [model.member_scores(chunk) for chunk in images.split(16)]
    rows = []
    for member in (0, 1):
        values = torch.cat([pair[member].flatten() for pair in scores]).double()
        low, high = torch.quantile(values[: 1 << 24], torch.tensor([0.5, quantile], dtype=torch.float64)).tolist()
        rows.append([low, max(high - low, 1e-6)])
    return torch.tensor(rows)
