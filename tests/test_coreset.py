"""Greedy coreset: the pruned, batched selection must equal the plain greedy loop index for index."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="needs the [train] extra")

from edgeiad.models.patchcore import coreset  # noqa: E402
from edgeiad.models.patchcore.coreset import greedy_coreset, greedy_coreset_reference  # noqa: E402


def clustered(rows: int, dim: int, seed: int, clusters: int = 12):
    """Patch-like features: anisotropic clusters of very different spread plus a few far outliers."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=generator) * 4
    spread = torch.rand(clusters, 1, generator=generator) * 1.5 + 0.05
    axes = torch.randn(clusters, dim, dim, generator=generator) / dim**0.5
    label = torch.randint(clusters, (rows,), generator=generator)
    noise = torch.randn(rows, 1, dim, generator=generator) @ axes[label]
    features = centres[label] + spread[label] * noise.squeeze(1)
    features[:10] *= 3  # outliers the greedy picks first
    return features


def with_ties(rows: int, seed: int):
    """Small-integer rows (max |value| a power of two, so quantisation keeps them exact): many equal distances,
    plus exact duplicates of earlier rows."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randint(-4, 5, (rows, 6), generator=generator).float()
    features[0, 0] = 4.0
    copies = torch.randint(rows // 2, (rows // 4,), generator=generator)
    features[rows - copies.numel() :] = features[copies]
    return features


@pytest.fixture
def small_blocks(monkeypatch):
    """Shrink the batching constants so small inputs exercise many batches, chunks, slices and leaves."""
    monkeypatch.setattr(coreset, "_TOP", 48)
    monkeypatch.setattr(coreset, "_CHUNK", 5)
    monkeypatch.setattr(coreset, "_LEAF", 8)
    monkeypatch.setattr(coreset, "_SLICE", 64)


@pytest.mark.parametrize(("rows", "size", "seed", "projection_dim"), [(3000, 300, 0, 32), (3000, 60, 1, 128)])
def test_matches_reference_on_clustered_features(rows, size, seed, projection_dim):
    features = clustered(rows, 64, seed)
    expected = greedy_coreset_reference(features, size, seed=seed, projection_dim=projection_dim)
    assert torch.equal(greedy_coreset(features, size, seed=seed, projection_dim=projection_dim), expected)


@pytest.mark.parametrize(("size", "seed"), [(1, 0), (7, 3), (150, 0), (400, 2), (699, 0)])
def test_matches_reference_with_small_blocks(small_blocks, size, seed):
    features = clustered(700, 40, seed)  # size 699 leaves whole leaves selected: no leaf left near a centre
    expected = greedy_coreset_reference(features, size, seed=seed, projection_dim=24)
    assert torch.equal(greedy_coreset(features, size, seed=seed, projection_dim=24), expected)


@pytest.mark.parametrize("shrink", [False, True])
@pytest.mark.parametrize("size", [50, 900])
def test_ties_and_duplicates_break_towards_the_lowest_index(request, shrink, size):
    if shrink:
        request.getfixturevalue("small_blocks")
    features = with_ties(1200, seed=size)
    expected = greedy_coreset_reference(features, size, seed=5)
    selected = greedy_coreset(features, size, seed=5)
    assert torch.equal(selected, expected)
    assert selected.unique().numel() == size


@pytest.mark.parametrize("shrink", [False, True])
def test_only_duplicates_left_takes_the_rest_in_index_order(request, shrink):
    if shrink:
        request.getfixturevalue("small_blocks")
    distinct = clustered(30, 8, seed=4)
    features = distinct.repeat(50, 1)  # 1500 rows, 30 distinct: after 30 picks every distance is zero
    expected = greedy_coreset_reference(features, 100, seed=1)
    selected = greedy_coreset(features, 100, seed=1)
    assert torch.equal(selected, expected)
    assert features[selected[:30]].unique(dim=0).shape[0] == 30
    assert selected[30:].tolist() == sorted(set(range(1500)) - set(selected[:30].tolist()))[:70]


@pytest.mark.parametrize("select", [greedy_coreset, greedy_coreset_reference])
def test_size_at_least_rows_returns_every_row(select):
    features = clustered(50, 8, seed=0)
    assert torch.equal(select(features, 50), torch.arange(50))
    assert torch.equal(select(features, 80), torch.arange(50))


@pytest.mark.parametrize("select", [greedy_coreset, greedy_coreset_reference])
def test_size_one_is_the_seeded_start_row(select):
    features = clustered(500, 8, seed=0)
    first = int(torch.randint(500, (1,), generator=torch.Generator().manual_seed(9)))
    assert select(features, 1, seed=9).tolist() == [first]
    assert select(features, 0, seed=9).tolist() == [first]  # at least one row


def test_same_seed_same_selection_other_seed_other_start():
    features = clustered(2000, 32, seed=0)
    first = greedy_coreset(features, 200, seed=3)
    assert torch.equal(greedy_coreset(features, 200, seed=3), first)
    assert first.dtype == torch.long and first.unique().numel() == 200
    assert not torch.equal(greedy_coreset(features, 200, seed=4), first)


@pytest.mark.parametrize("select", [greedy_coreset, greedy_coreset_reference])
def test_progress_ends_with_size_of_size(select):
    calls = []
    select(clustered(2000, 16, seed=0), 600, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (600, 600)
    assert all(total == 600 for _, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_thread_setting_is_restored():
    before = torch.get_num_threads()
    greedy_coreset(clustered(1500, 16, seed=0), 100)
    assert torch.get_num_threads() == before
