"""Noise-robust fitting for training folders that hold some defective parts (seed 004's noisy setting).

Two options, both off by default and switched on by the share F of training images the user expects to be bad:
- PatchCore `denoise`: before the coreset, drop F × DROP_PER_NOISE of the training patches, those least like
  the other training images at the same place. Each patch is scored by its mean distance to its k nearest
  patches of *other* images within one grid step (a defect seen in one image finds no close neighbour, while
  good structure recurs in every image); the score is divided by its position's median, so naturally varied
  places (edges) are not emptied. In the spirit of SoftPatch (Jiang et al., NeurIPS 2022), which filters
  patch-level noise per position before the memory bank is built.
- PaDiM `trim`: the trimmed Gaussian. Fit each position's Gaussian, drop F × DROP_PER_NOISE of the training
  samples farthest from it (Mahalanobis), refit on the rest.

A defect covers a small part of its image, so dropping the whole share F of patches or samples mostly removes
rare good ones and costs image AUROC. Measured with 60 good images plus 10 % or 20 % defective ones on bsdata,
cfd and deeppcb (2 seeds each, 256 px, 100 test images; mean of 12 image / pixel AUROCs): PatchCore plain
0.779 / 0.806, F × 0.1 0.788 / 0.838, × 0.25 0.787 / 0.838, × 0.5 0.784 / 0.844; PaDiM plain 0.802 / 0.934,
× 0.1 0.805 / 0.937, × 0.25 0.805 / 0.938, × 0.5 0.801 / 0.938. × 1 cost bsdata up to 0.07 image AUROC
(docs/settings/tune_noise_robust.py).
"""

from __future__ import annotations

import math

from ..errors import ConfigError, require_torch
from ._fitting import spd_solve

torch = require_torch()

NEIGHBOURS = 3  # k nearest patches of other images whose mean distance scores a patch
DROP_PER_NOISE = 0.25  # share of patches (PatchCore) or samples (PaDiM) dropped per share of defective images


def check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 0.5:
        raise ConfigError(
            f"{name} {value} is out of range: use the share of training images you expect to be defective, "
            "in [0, 0.5), e.g. 0.1 (0 = off)"
        )


def patch_outlier_scores(embeddings, radius: int = 1, neighbours: int = NEIGHBOURS, chunk: int = 64):
    """N×h×w scores: each patch's mean distance to its k nearest patches of other images within `radius` grid
    steps, divided by the median of those distances at its position. Needs at least two images."""
    count, dim, height, width = embeddings.shape
    features = embeddings.permute(2, 3, 0, 1).reshape(height * width, count, dim).float()  # P×N×D
    owners = torch.arange(count)
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    neighbour_index = torch.stack(
        [((ys + dy).clamp(0, height - 1) * width + (xs + dx).clamp(0, width - 1)).reshape(-1) for dy, dx in offsets],
        dim=1,
    )  # P×O (clamped at the border: a repeated position only repeats candidates)
    k = max(1, min(neighbours, count - 1))
    scores = torch.empty(height * width, count)
    for start in range(0, height * width, chunk):
        rows = torch.arange(start, min(start + chunk, height * width))
        queries = features[rows]  # C×N×D
        keys = features[neighbour_index[rows]].reshape(len(rows), -1, dim)  # C×(O·N)×D
        distances = torch.cdist(queries, keys)  # C×N×(O·N)
        same = owners.view(1, -1, 1) == owners.repeat(len(offsets)).view(1, 1, -1)
        distances.masked_fill_(same, math.inf)
        scores[rows] = distances.topk(k, dim=2, largest=False).values.mean(dim=2)
    scores = scores / scores.median(dim=1, keepdim=True).values.clamp_min(1e-12)
    return scores.reshape(height, width, count).permute(2, 0, 1)


def denoise_patches(embeddings, noise: float):
    """The N×D×h×w patches as rows (M×D) without the noise × DROP_PER_NOISE most outlying ones, and a report."""
    keep, report = denoise_mask(embeddings, noise)
    return patch_rows(embeddings, keep), report


def patch_rows(embeddings, keep=None):
    """N×D×h×w patches as M×D rows, only those where the N×h×w `keep` mask is true when it is given."""
    rows = embeddings.permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])
    return rows if keep is None else rows[keep.reshape(-1)]


def denoise_mask(embeddings, noise: float):
    """(N×h×w mask of the patches kept, or None when all are, report) for N×D×h×w patches: without the
    noise × DROP_PER_NOISE most outlying ones."""
    fraction = noise * DROP_PER_NOISE
    count, _dim, height, width = embeddings.shape
    if fraction <= 0.0 or count < 2:
        reason = "off" if fraction <= 0.0 else "skipped: one training image has no other image to compare with"
        return None, {"denoise": reason}
    scores = patch_outlier_scores(embeddings).reshape(-1)
    dropped = int(round(fraction * scores.numel()))
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    keep[torch.topk(scores, dropped).indices] = False
    per_image = (~keep).reshape(count, -1).float().mean(dim=1)
    report = {
        "denoise": noise,
        "patches_dropped": dropped,
        # The images that lost the most patches: where a user should look for mislabelled parts first.
        "most_dropped_images": torch.argsort(per_image, descending=True)[:5].tolist(),
        "most_dropped_share": [round(float(v), 4) for v in per_image.sort(descending=True).values[:5]],
    }
    return keep.reshape(count, height, width), report


def trimmed_moments(samples, noise: float, regularization: float):
    """Per-position (count, sum, outer-product sum) of P×N×d float64 samples without each position's
    noise × DROP_PER_NOISE farthest samples under the Gaussian of all of them. `noise` 0 keeps every sample."""
    positions, count, dim = samples.shape
    drop = int(round(noise * DROP_PER_NOISE * count))
    if drop == 0 or count - drop < 2:
        keep = torch.ones(positions, count, dtype=torch.bool)
    else:
        mean = samples.mean(dim=1, keepdim=True)
        centred = samples - mean
        covariance = centred.transpose(1, 2) @ centred / (count - 1)
        covariance += regularization * torch.eye(dim, dtype=samples.dtype)
        solved = spd_solve(covariance, centred.transpose(1, 2))  # P×d×N
        distances = (centred.transpose(1, 2) * solved).sum(dim=1)  # P×N
        keep = torch.ones(positions, count, dtype=torch.bool)
        keep.scatter_(1, distances.topk(drop, dim=1).indices, False)
    weights = keep.to(samples.dtype).unsqueeze(2)
    kept = samples * weights
    return keep.sum(dim=1).to(samples.dtype), kept.sum(dim=1), kept.transpose(1, 2) @ kept
