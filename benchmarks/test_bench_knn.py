"""Chunked nearest-neighbour scoring: bounded memory whatever the bank size (anomalib #967 asked for 288 GB)."""

from __future__ import annotations

import pytest

from .conftest import full_only, run_isolated

torch = pytest.importorskip("torch", reason="needs the [train] extra")

KNN_CODE = """
import time, torch
torch.set_num_threads({threads})
from edgeiad.models._ops import chunked_min_euclidean
g = torch.Generator().manual_seed(0)
queries = torch.randn({queries}, {dim}, generator=g)
bank = torch.randn({bank}, {dim}, generator=g)
start = time.perf_counter()
distances, indices = chunked_min_euclidean(queries, bank)
result = dict(queries={queries}, bank={bank}, dim={dim}, seconds=time.perf_counter() - start,
              input_mb=(queries.numel() + bank.numel()) * 4 / 2**20,
              dense_matrix_gb={queries} * {bank} * 4 / 2**30)
"""


def knn_case(queries: int, bank: int, dim: int = 152, threads: int = 2) -> dict:
    return run_isolated(KNN_CODE.format(queries=queries, bank=bank, dim=dim, threads=threads))


def test_chunked_knn_tiny(benchmark):
    from edgeiad.models._ops import chunked_min_euclidean

    generator = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(512, 152, generator=generator), torch.randn(4096, 152, generator=generator)
    distances, _ = benchmark(chunked_min_euclidean, queries, bank, 128, 1024)
    assert distances.shape == (512,)


def test_chunked_knn_peak_memory_is_bounded_tiny():
    result = knn_case(2_000, 20_000, threads=1)
    # the dense distance matrix alone would be 0.15 GB; the chunked search stays far below input + one chunk
    assert result["peak_rss_mb"] < 1024


@full_only
def test_chunked_knn_20k_queries_200k_bank(benchmark):
    result = benchmark.pedantic(knn_case, args=(20_000, 200_000), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(f"\nchunked kNN 20k x 200k x 152: {result}")
    assert result["peak_rss_mb"] < 2048  # vs 14.9 GB for the dense 20k x 200k float32 matrix
