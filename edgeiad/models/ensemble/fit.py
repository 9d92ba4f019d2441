"""Fit the ensemble: both members on most good images, their score scales on the held-out rest.

With the coarse score on (PatchCore's, patchcore/coarse.py), its bank comes from the same images as the members'
statistics, and its [offset, gain] from the same held-out images: their map scores and coarse scores.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ...errors import require_torch
from .._fitting import Stopwatch, collect_embeddings
from ..padim.fit import gaussian_statistics
from ..patchcore.coarse import calibration_from, select_coarse_bank
from ..patchcore.fit import search_bases, search_samples, select_memory_bank, select_region_memory
from .torch_model import EnsembleConfig, EnsembleModel

torch = require_torch()


def fit_ensemble(config: EnsembleConfig, batches: Iterable, device: str = "cpu", progress=None):
    """Return (fitted EnsembleModel on the CPU, info dict with timings, bank size and the calibration)."""
    watch = Stopwatch()
    model = EnsembleModel(config).to(device)
    with watch.time("embedding_s"):
        images = torch.cat([torch.from_numpy(array) for array, _ in batches])
        chunks = ((chunk.numpy(), None) for chunk in images.split(16))
        local, plain, *coarse = collect_embeddings(model.training_features, chunks, device)
        coarse = coarse[0] if coarse else None  # the coarse block's features, when the coarse score is on
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
    coarse_bank = None
    if coarse is not None:
        with watch.time("coarse_bank_s"):
            coarse_bank, _owners = select_coarse_bank(coarse[kept], config)
    model = EnsembleModel(config)  # rebuilt with the bank sizes the coresets chose
    model.memory_bank.copy_(bank)
    if coarse_bank is not None:
        model.coarse_bank.copy_(coarse_bank)
    if model.projected:  # the PatchCore half's bases follow its bank, as in PatchCore's fit
        model.search_basis.copy_(search_bases(config, bank, samples))
    model.mean.copy_(mean.float())
    model.inv_covariance.copy_(inverse.float())
    with watch.time("calibration_s"):
        scores = [model.raw_scores(chunk) for chunk in images[held].split(16)]
        model.calibration.copy_(_calibration(scores, config.calibration_quantile))
    info = {"n_fit": int(kept.sum()), "n_calibration": int(held.numel()), "bank_size": config.bank_size}
    info["calibration"] = model.calibration.tolist()
    if model.coarse:
        calibration, note = _coarse_calibration(model, scores)
        model.coarse_calibration.copy_(torch.tensor(calibration))
        info.update(coarse_bank_size=config.coarse_bank_size, coarse_calibration=calibration)
        info.update({"coarse_note": note} if note else {})
    return model.eval(), {**info, **watch.timings}


@torch.no_grad()
def _coarse_calibration(model: EnsembleModel, scores: list) -> tuple[list[float], str]:
    """The coarse score's [offset, gain] (coarse.py) from the held-out good images' `raw_scores`: their map scores
    under the members' calibration, and their coarse scores."""
    calibration = model.calibration
    main = [model.to_map(model.combine(nearest, mahalanobis, calibration))[1] for nearest, mahalanobis, _ in scores]
    main = torch.cat(main).double().numpy() if main else np.zeros(0)
    deep = torch.cat([coarse for *_, coarse in scores]).double().numpy() if scores else np.zeros(0)
    return calibration_from(main, deep, model.config.coarse_weight)


def _held_out(count: int, share: float):
    """Evenly spread indices of the calibration images: at least one, and never all of them."""
    size = min(max(1, round(count * share)), count - 1) if count > 1 else 0
    return torch.linspace(0, count - 1, size).round().long().unique() if size else torch.zeros(0, dtype=torch.long)


def _calibration(scores: list, quantile: float):
    """Per member: the median of held-out good patch scores and the distance from it to their `quantile`; `scores`
    are the held-out images' `raw_scores`, by chunk."""
    if not scores:  # a single training image: nothing held out, keep the identity scale
        return torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    rows = []
    for member in (0, 1):
        values = torch.cat([chunk[member].flatten() for chunk in scores]).double()
        low, high = torch.quantile(values[: 1 << 24], torch.tensor([0.5, quantile], dtype=torch.float64)).tolist()
        rows.append([low, max(high - low, 1e-6)])
    return torch.tensor(rows)
