"""Region banks: PatchCore's memory bank split by where on the part a patch lies (#20's sub-linear search).

The patch grid is cut into `regions` × `regions` rectangles. Each region keeps its own greedy coreset, chosen from
the training patches inside its window (the region widened by `margin` cells on every side, so a part that sits a
few cells off still finds its match), and sized as the global bank's share for that window. A test patch is
searched only in its own region's bank. Every query therefore meets about window / grid of the rows a global bank
would have, so the search costs regions² / (1 + overlap) times less, and the coreset selection less still. The
search stays exact within a region and is written as static slices, one GEMM per region and a concatenation, so it
exports to ONNX Runtime, OpenVINO and TensorRT as plain ops.

The bank is stored as one tensor, the regions' rows one after another in row-major region order; `region_rows`
in the config gives each region's count, and the layout below is a pure function of the grid size.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import ConfigError, require_torch

torch = require_torch()


def windows(size: int, parts: int, margin: int) -> list[tuple[slice, slice]]:
    """(core, window) ranges of `parts` consecutive stretches over `size` cells (fewer when `size` is smaller); each
    window is its core widened by `margin` cells on both sides, clipped to the grid."""
    parts = max(1, min(parts, size))
    edges = np.linspace(0, size, parts + 1).round().astype(int).tolist()
    return [
        (slice(edges[i], edges[i + 1]), slice(max(0, edges[i] - margin), min(size, edges[i + 1] + margin)))
        for i in range(parts)
    ]


def layout(height: int, width: int, parts: int, margin: int) -> list[tuple[slice, slice, slice, slice]]:
    """(rows, cols, row window, col window) of every region of an height × width grid, row-major."""
    return [
        (rows, cols, row_window, col_window)
        for rows, row_window in windows(height, parts, margin)
        for cols, col_window in windows(width, parts, margin)
    ]


def region_budgets(height: int, width: int, parts: int, margin: int, budget: int, cap: int = 0) -> list[int]:
    """Most rows of each region's bank: `budget` (the global bank's rows) times the share of the grid its window
    covers, so a region bank is as dense in its window as the global bank is in the image. The windows overlap, so
    the total is a little above `budget`; with `cap` > 0 (max_bank) it is scaled down to stay within it."""
    areas = [(rw.stop - rw.start) * (cw.stop - cw.start) for _r, _c, rw, cw in layout(height, width, parts, margin)]
    sizes = [max(1, math.ceil(budget * area / (height * width))) for area in areas]
    total = sum(sizes)
    if cap and total > cap:
        sizes = [max(1, size * cap // total) for size in sizes]
    return sizes


def select_region_banks(
    embeddings, keep, budget: int, parts: int, margin: int, select, cap: int = 0
) -> tuple[object, list[int]]:
    """The region banks of N×D×h×w training `embeddings` (only patches where the N×h×w `keep` mask is true, when
    given): `select(rows, size)` picks each region's coreset of at most `size` rows (`region_budgets`). Returns
    (bank, rows per region)."""
    _count, dim, height, width = embeddings.shape
    banks = []
    regions = layout(height, width, parts, margin)
    for (_rows, _cols, row_window, col_window), size in zip(
        regions, region_budgets(height, width, parts, margin, budget, cap)
    ):
        window = embeddings[:, :, row_window, col_window].permute(0, 2, 3, 1).reshape(-1, dim)
        if keep is not None:
            window = window[keep[:, row_window, col_window].reshape(-1)]
        banks.append(select(window, size))  # select caps it at the rows it has
    return torch.cat(banks), [int(bank.shape[0]) for bank in banks]


def region_distances(embedding, bank, sizes: list[int], parts: int, margin: int, search, bases=None):
    """N×1×h×w nearest distances of an N×D×h×w embedding, each patch searched by `search(N×D×h'×w' block, rows,
    basis)` in its own region's rows of `bank`; `basis` is the region's of `bases` (projection.py), or None."""
    height, width = embedding.shape[-2:]
    regions = layout(height, width, parts, margin)
    if len(regions) != len(sizes):
        raise ConfigError(
            f"the bank has {len(sizes)} regions but a {height}x{width} patch grid cut {parts}x{parts} has "
            f"{len(regions)}: config.json does not match the fitted bank; refit with `edgeiad train`"
        )
    offsets = np.cumsum([0, *sizes]).tolist()
    bands, cells = [], []
    for index, (rows, cols, _row_window, _col_window) in enumerate(regions):
        block = embedding[:, :, rows, cols]
        basis = None if bases is None else bases[index]
        cells.append(search(block, bank[offsets[index] : offsets[index + 1]], basis))
        if cols.stop == width:  # the band of regions at these rows is complete
            bands.append(torch.cat(cells, dim=3) if len(cells) > 1 else cells[0])
            cells = []
    return torch.cat(bands, dim=2) if len(bands) > 1 else bands[0]
