"""Greedy k-center coreset selection (PatchCore §3.2) with a random projection for the distances."""

from __future__ import annotations

from ...errors import require_torch

torch = require_torch()


def random_projection(features, dim: int, seed: int):
    """Johnson-Lindenstrauss projection to `dim` columns (identity when already that small)."""
    if features.shape[1] <= dim:
        return features
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(features.shape[1], dim, generator=generator, dtype=features.dtype) / dim**0.5
    return features @ matrix


@torch.no_grad()
def greedy_coreset(features, size: int, seed: int = 0, projection_dim: int = 128, progress=None):
    """Indices of `size` rows chosen by greedy k-center on projected features.

    Each step adds the row farthest from the current coreset, so the bank covers every mode of
    the nominal data, rare ones included, instead of sampling the dense ones many times.
    `progress`, if given, is called as progress(done, total) every few hundred steps.
    """
    total = features.shape[0]
    size = max(1, min(int(size), total))
    projected = random_projection(features.float(), projection_dim, seed).contiguous()
    sq_norms = (projected * projected).sum(dim=1)
    generator = torch.Generator().manual_seed(seed)
    current = int(torch.randint(total, (1,), generator=generator))
    selected = torch.empty(size, dtype=torch.long)
    min_sq = torch.full((total,), float("inf"))
    for step in range(size):
        selected[step] = current
        center = projected[current]
        # ||x - c||^2 via one mat-vec: the whole step is memory-bound on `projected`.
        dist_sq = torch.addmv(sq_norms + sq_norms[current], projected, center, alpha=-2.0)
        torch.minimum(min_sq, dist_sq, out=min_sq)
        current = int(torch.argmax(min_sq))
        if progress is not None and (step % 256 == 0 or step == size - 1):
            progress(step + 1, size)
    return selected
