"""PatchCore's coarse image score: a stride-32 nearest-neighbour score added to the map's (#14).

The map stays PatchCore's, from the stride-8/16 patch features. The image score also reads one deeper backbone
block (Lite0 block 14, one 192-channel feature per 32 × 32 pixels): each position's distance to the nearest of
the training images' features there, and the mean of the top `coarse_share` of those distances. Alone it is
better than the default image score on cfd and both ELPV sets and poor on deeppcb; added to the default score it
lifted image AUROC on each of the six development sets in the offline study (docs/quality-study.md, "A stride-32
image score beside the map"): mean 0.883 → 0.893.

The two scores are in different units. Fit measures both on the good training images, each image scored against
banks without the rows it gave them (what a held-out good image would get), and sets

    fused = map score + gain · (coarse score − offset),  offset = median coarse,
    gain = coarse_weight · IQR(map scores) / IQR(coarse scores),

so the fused score keeps the map score's units and the coarse score's spread over good images is `coarse_weight`
times the map score's. `coarse_calibration` holds [offset, gain]; the graph is a MatMul, a Min, a TopK (K ≤ 3840)
and a few elementwise ops.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import require_torch

torch = require_torch()


def coarse_score(distances, share: float):
    """N scores from N×1×h×w coarse distances (PatchCore's own searches, `nearest_distances` in the graph and
    `chunked_distances` eagerly): the mean of the top `share` of each image's positions."""
    flat = distances.flatten(1)
    count = max(1, math.ceil(share * flat.shape[1]))
    return torch.topk(flat, count, dim=1).values.mean(dim=1)


def fused_score(score, coarse, calibration):
    """The map score plus the calibrated coarse score: score + gain · (coarse − offset)."""
    calibration = calibration.to(score.dtype)
    return score + calibration[1] * (coarse - calibration[0])


class CoarseScoring:
    """What the models whose image score adds the coarse score share (PatchCore, the ensemble): its buffers, its
    block's features and its score. Mixed into an nn.Module that has `config`, `feature_extractor` (tapping
    `config.coarse_block`) and `resizable_stats`."""

    def add_coarse_buffers(self, channels: dict) -> tuple[str, ...]:
        """Register `coarse_bank` (config.coarse_bank_size rows of the block's `channels[block]`) and
        `coarse_calibration` ([offset, gain]); return their names, for `stats_names`."""
        config = self.config
        self.coarse_layer = config.coarse_block % self.feature_extractor.total_blocks
        self.register_buffer("coarse_bank", torch.zeros(max(config.coarse_bank_size, 1), channels[self.coarse_layer]))
        self.register_buffer("coarse_calibration", torch.zeros(2))
        self.resizable_stats = {**self.resizable_stats, "coarse_bank": 0}
        return ("coarse_bank", "coarse_calibration")

    def coarse_features(self, features):
        """N×C×h×w: the coarse block's features among the backbone's outputs, searched as the patches are."""
        return features[self.feature_extractor.layers.index(self.coarse_layer)]

    def coarse_scores(self, features, bank, search):
        """N coarse scores of the backbone's outputs against `bank`; `search` is PatchCore's `nearest_distances`
        (graph) or `chunked_distances` (eager)."""
        return coarse_score(search(self.coarse_features(features), bank), self.config.coarse_share)


@torch.no_grad()
def select_coarse_bank(features, config, previous=None):
    """The coarse bank from N×C×h×w training features: every row when they are at most `coarse_rows`, else their
    greedy coreset of that size. Returns (bank, owner image of each row; -1 for rows of `previous`), and sets
    `config.coarse_bank_size`. `previous` (the current bank) joins the candidates, for `edgeiad update`."""
    from .coreset import greedy_coreset

    count, channels = features.shape[:2]
    rows = features.flatten(2).transpose(1, 2).reshape(-1, channels)
    positions = rows.shape[0] // count
    owners = torch.arange(count).repeat_interleave(positions)
    if previous is not None:
        rows = torch.cat([previous.float(), rows])
        owners = torch.cat([torch.full((previous.shape[0],), -1), owners])
    if rows.shape[0] > config.coarse_rows:
        picked = greedy_coreset(rows, config.coarse_rows, seed=config.seed, projection_dim=config.projection_dim)
        rows, owners = rows[picked], owners[picked]
    config.coarse_bank_size = int(rows.shape[0])
    return rows.contiguous(), owners


def bank_owners(bank, embeddings):
    """For each bank row, the index of a training image whose patch it is (-1 if none): the coreset copies rows
    from the N×D×h×w training embeddings, so a row is found again by its exact bytes."""
    rows = bank.detach().cpu().float().numpy()
    where = {row.tobytes(): index for index, row in enumerate(rows)}
    owners = np.full(len(rows), -1, dtype=np.int64)
    for image, embedding in enumerate(embeddings):
        patches = np.ascontiguousarray(embedding.permute(1, 2, 0).reshape(-1, embedding.shape[0]).numpy())
        for patch in patches:
            index = where.get(patch.tobytes())
            if index is not None and owners[index] < 0:
                owners[index] = image
    return torch.from_numpy(owners)


@torch.no_grad()
def held_out_scores(model, embeddings, coarse, owners, coarse_owners, search, progress=None):
    """(map scores, coarse scores) of the good training images, each against banks without its own rows, for the
    images where every region bank keeps rows without them; `search` is the eager search (`chunked_distances`).
    `progress(done, total, step)` is told of each image (a fit's progress bar)."""
    config = model.config
    sizes = list(config.region_rows) if config.regions > 1 else [int(model.memory_bank.shape[0])]
    region_of_row = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    main, deep = [], []
    for image in range(embeddings.shape[0]):
        kept = owners != image
        kept_sizes = torch.bincount(region_of_row[kept], minlength=len(sizes)).tolist()
        coarse_kept = coarse_owners != image
        if min(kept_sizes) == 0 or not bool(coarse_kept.any()):
            continue
        scores = model.patch_scores(embeddings[image : image + 1], model.memory_bank[kept], search, sizes=kept_sizes)
        main.append(float(model.to_map(scores)[1][0]))
        distances = search(coarse[image : image + 1], model.coarse_bank[coarse_kept])
        deep.append(float(coarse_score(distances, config.coarse_share)[0]))
        if progress is not None:
            progress(image + 1, embeddings.shape[0], "calibrating the coarse image score")
    return np.asarray(main), np.asarray(deep)


def calibration_from(main: np.ndarray, deep: np.ndarray, weight: float) -> tuple[list[float], str]:
    """[offset, gain] from held-out good scores (see the module's docstring), and a note when the coarse score
    is left out: fewer than two held-out images, or scores without spread."""
    if len(main) < 2:
        return [0.0, 0.0], "coarse score off: it needs at least two good training images to calibrate"
    spread_main, spread_deep = (_spread(values) for values in (main, deep))
    if not spread_main > 0 or not spread_deep > 0:
        return [0.0, 0.0], "coarse score off: the held-out good images' scores have no spread"
    return [float(np.median(deep)), float(weight * spread_main / spread_deep)], ""


def _spread(values: np.ndarray) -> float:
    """Interquartile range, or the standard deviation when the quartiles coincide (few images)."""
    low, high = np.percentile(values, [25, 75])
    return float(high - low) if high > low else float(np.std(values))
