"""Greedy coreset selection: the pruned, batched loop against the plain one it must reproduce exactly.

The tiny case checks the harness in CI. Measured by hand on 204,800 real ELPV patch features (200 images,
efficientnet_lite0 blocks 4+10): see `greedy_coreset`'s timings in the change that added this file.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="needs the [train] extra")


def clustered(rows: int, dim: int = 152, clusters: int = 40, seed: int = 0):
    """Patch-like features: clusters of different spread, each spanning a few directions."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=generator) * 3
    axes = torch.randn(clusters, 8, dim, generator=generator)
    label = torch.randint(clusters, (rows,), generator=generator)
    spread = torch.rand(clusters, generator=generator)[label, None] + 0.1
    local = torch.randn(rows, 1, 8, generator=generator) @ axes[label]
    return centres[label] + spread * (local.squeeze(1) + 0.2 * torch.randn(rows, dim, generator=generator))


@pytest.mark.parametrize("name", ["greedy_coreset", "greedy_coreset_reference"])
def test_coreset_10_percent_of_5000_rows_tiny(benchmark, name):
    from edgeiad.models.patchcore import coreset

    features = clustered(5000)
    selected = benchmark(getattr(coreset, name), features, 500)
    assert selected.shape == (500,) and selected.unique().numel() == 500
