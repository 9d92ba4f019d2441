"""Greedy k-center coreset selection (PatchCore §3.2) with a random projection for the distances.

Distances are exact: the projected features are rounded to integers of at most 21 bits (a step of 2**-21 of
the largest coordinate, about the float32 noise of the projection itself) and squared distances are formed in
float64, where such integer sums are exact in any summation order. `greedy_coreset` therefore returns bit for
bit the selection of the plain loop in `greedy_coreset_reference`, whatever BLAS kernel, blocking or thread
count computed them.
"""

from __future__ import annotations

import math

from ...errors import require_torch
from .._fitting import one_thread

torch = require_torch()

_LEAF = 32  # rows per kd-tree leaf, a power of two
_DIMS = (16, 48)  # principal components behind the two lower-bound stages
_TOP = 1024  # farthest rows whose greedy order is resolved in memory before the other rows are touched
_CHUNK = 16  # centres whose distances are applied to the rows together
_SLICE = 1 << 16  # rows per update slice: bounds peak memory
_EPS = 2.0**-24  # float32 unit roundoff


def random_projection(features, dim: int, seed: int):
    """Johnson-Lindenstrauss projection to `dim` columns (identity when already that small)."""
    if features.shape[1] <= dim:
        return features
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(features.shape[1], dim, generator=generator, dtype=features.dtype) / dim**0.5
    return features @ matrix


def _integer_projection(features, dim: int, seed: int):
    """Projected rows as float32 integers small enough that float64 distance sums never round."""
    projected = random_projection(features.float().cpu(), dim, seed)
    # |x|, |c| <= 2**bits keeps every partial sum of |x|^2 + |c|^2 - 2 x.c below 2**51.
    bits = min(21, (49 - math.ceil(math.log2(max(projected.shape[1], 2)))) // 2)
    peak = float(projected.abs().max())
    return torch.round(projected * (2.0**bits / peak if peak > 0 else 1.0))


def _sq_norms(rows):
    return torch.cat([block.double().square().sum(1) for block in rows.split(_SLICE)])


def _first_row(total: int, seed: int) -> int:
    return int(torch.randint(total, (1,), generator=torch.Generator().manual_seed(seed)))


@torch.no_grad()
def greedy_coreset_reference(features, size: int, seed: int = 0, projection_dim: int = 128, progress=None):
    """The plain greedy loop, one exact pass over all rows per step: the specification `greedy_coreset` meets."""
    total = features.shape[0]
    size = max(1, min(int(size), total))
    if size == total:
        return _finish(torch.arange(total), progress)
    rows = _integer_projection(features, projection_dim, seed).double()
    sq_norms = rows.square().sum(1)
    current = _first_row(total, seed)
    selected = torch.empty(size, dtype=torch.long)
    min_sq = torch.full((total,), float("inf"), dtype=torch.float64)
    for step in range(size):
        selected[step] = current
        torch.minimum(min_sq, torch.addmv(sq_norms + sq_norms[current], rows, rows[current], alpha=-2.0), out=min_sq)
        min_sq[current] = -1.0  # never pick a row twice, even once only duplicates are left
        current = int(torch.argmax(min_sq))
        if progress is not None and (step + 1) % 256 == 0:
            progress(step + 1, size)
    return _finish(selected, progress)


def _finish(selected, progress):
    if progress is not None:
        progress(selected.numel(), selected.numel())
    return selected


@torch.no_grad()
def greedy_coreset(features, size: int, seed: int = 0, projection_dim: int = 128, progress=None):
    """Indices of `size` rows chosen by greedy k-center on projected features.

    Each step adds the row farthest from the current coreset, so the bank covers every mode of
    the nominal data, rare ones included, instead of sampling the dense ones many times.
    The result equals `greedy_coreset_reference`; the work is a small fraction of it: the next steps are
    resolved among the farthest rows alone, and a row's distance is only recomputed where principal-component
    lower bounds cannot rule out a change. `progress`, if given, is called as progress(done, total)
    every few hundred steps.
    """
    total = features.shape[0]
    size = max(1, min(int(size), total))
    if size == total:
        return _finish(torch.arange(total), progress)
    rows = _integer_projection(features, projection_dim, seed)
    selected = torch.empty(size, dtype=torch.long)
    # Thousands of small kernels: one thread saves a barrier per kernel, which on a busy machine stalls each one.
    with one_thread():
        index = _Index(rows)
        del rows  # the index keeps its own copy in leaf order
        new, done = index.position(_first_row(total, seed)), 0
        while True:
            selected[done : done + new.numel()] = index.order[new]
            done += new.numel()
            if done == size:
                return _finish(selected, progress)
            if progress is not None:
                progress(done, size)
            index.update(new)
            new = index.next_centres(size - done)


def _kd_order(points, leaf: int):
    """Row order of a kd-tree (median splits across the axis of largest variance) cut into `leaf`-row leaves."""
    order, sizes = torch.arange(points.shape[0]), torch.tensor([points.shape[0]])
    while int(sizes.max()) > leaf:
        segment = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
        values = points.index_select(0, order)
        mean = torch.zeros(sizes.numel(), points.shape[1]).index_add_(0, segment, values) / sizes[:, None]
        spread = torch.zeros_like(mean).index_add_(0, segment, (values - mean.index_select(0, segment)).square())
        key = values.gather(1, spread.argmax(1).index_select(0, segment)[:, None]).squeeze(1)
        by_key = torch.argsort(key, stable=True)
        order = order[by_key[torch.argsort(segment[by_key], stable=True)]]
        # Left halves hold whole leaves, so every leaf but the last is full and leaves are plain row blocks.
        left = torch.minimum((sizes + 2 * leaf - 1) // (2 * leaf) * leaf, sizes)
        sizes = torch.stack([left, sizes - left], 1).flatten()
        sizes = sizes[sizes > 0]
    return order


class _Index:
    """Rows in kd-tree leaf order, their exact distances to the coreset and lower bounds that skip most updates."""

    def __init__(self, rows):
        total, width = rows.shape
        k1, k2 = min(_DIMS[0], width), min(_DIMS[1], width)
        centred = rows - rows.mean(0)
        basis = torch.linalg.eigh((centred.T @ centred).double()).eigenvectors.flip(1)[:, :k2].float()
        pcs = centred @ basis  # orthonormal basis: |pcs_x - pcs_c| <= |x - c| but for float32 rounding
        peak = float(centred.norm(dim=1).max()) + 1.0
        del centred
        # Bounds are only trusted with margins above the worst-case float32 error (4-8x the textbook bound):
        # of a component, a `width`-term dot product, and of the expanded |a|^2 + |b|^2 - 2a.b sums below.
        self.slack = 8 * (math.sqrt(k2) * width + 2) * _EPS * peak
        self.slack_sq = 4 * (4 * k1 + 8 * (k2 - k1) + 40) * _EPS * (peak + self.slack) ** 2
        self.leaves = -(-total // _LEAF)
        order = _kd_order(pcs[:, :k1], _LEAF)
        self.order = torch.cat([order, order[-1:].expand(self.leaves * _LEAF - total)])  # pad the last leaf
        self.inverse = torch.empty(total, dtype=torch.long).index_copy_(0, order, torch.arange(total))
        self.rows = rows.index_select(0, self.order)
        self.sq_norms = _sq_norms(self.rows)
        pcs, ones = pcs.index_select(0, self.order), torch.ones(self.order.numel(), 1)
        # [y, |y|^2, 1] . [-2c, 1, |c|^2] = |y - c|^2: a whole chunk of bounds is one matrix product.
        self.pcs1 = torch.cat([pcs[:, :k1], pcs[:, :k1].square().sum(1, keepdim=True), ones], 1)
        self.pcs2 = torch.cat([pcs[:, k1:], pcs[:, k1:].square().sum(1, keepdim=True), ones], 1)
        boxes = pcs[:, :k1].reshape(self.leaves, _LEAF, k1)
        self.low, self.high = boxes.amin(1).T.contiguous(), boxes.amax(1).T.contiguous()
        self.box = torch.empty(_CHUNK, k1, self.leaves)
        self.min_sq = torch.full((self.order.numel(),), float("inf"), dtype=torch.float64)
        self.min_sq[total:] = -float("inf")  # padding never counts
        self.reach = self.min_sq.float()  # a row can only change if its lower bound is below this
        self.leaf_reach = self.reach.view(self.leaves, _LEAF).amax(1)
        self.total, self.k1 = total, k1

    def position(self, row: int):
        return self.inverse[row].view(1)

    def next_centres(self, limit: int):
        """Positions of the next greedy picks that the `_TOP` farthest rows alone decide, in pick order."""
        if self.total <= _TOP:
            top, bound = torch.arange(self.total), -float("inf")
        else:
            values, top = torch.topk(self.min_sq, _TOP + 1)
            bound = float(values[-1])  # no row outside `top` is farther than this, now or later
            top = top[:_TOP][values[:_TOP] > bound]
            if top.numel() == 0:
                return self._tied_centres(float(values[0]), limit)
        top = top[torch.argsort(self.order[top])]  # argmax keeps the lowest original index among ties
        rows, sq_norms = self.rows[top].double(), self.sq_norms[top]
        dist_sq = torch.addmm(sq_norms[:, None] + sq_norms[None, :], rows, rows.T, alpha=-2.0)
        min_sq, picks = self.min_sq[top], []
        while len(picks) < limit:
            pick = int(torch.argmax(min_sq))
            if float(min_sq[pick]) <= bound:  # a row outside `top` may now tie or win
                break
            picks.append(pick)
            torch.minimum(min_sq, dist_sq[pick], out=min_sq)
            min_sq[pick] = -1.0
        return top[picks]

    def _tied_centres(self, farthest: float, limit: int):
        # More than _TOP rows share the largest distance: take the plain step, or, when every row duplicates a
        # selected one, the rest in index order as the plain loop would.
        tied = (self.min_sq == farthest).nonzero().squeeze(1)
        tied = tied[torch.argsort(self.order[tied])]
        return tied[:limit] if farthest == 0 else tied[:1]

    def update(self, centres):
        """Lower the rows' distances to the coreset by `centres`, computing them only where no bound rules it out."""
        self.min_sq[centres] = -1.0
        self.reach[centres] = -1.0
        self._refresh_leaves(centres)
        centres = centres.sort().values  # neighbours in leaf order share most candidate leaves
        for chunk in centres.split(_CHUNK):
            # A leaf can only hold a changing row if some centre is nearer its box than the leaf's largest reach.
            pcs = self.pcs1[chunk, : self.k1, None]
            gap = torch.clamp(pcs, self.low, self.high, out=self.box[: chunk.numel()]).sub_(pcs)
            near = (gap.square_().sum(1) < self.leaf_reach).any(0).nonzero().squeeze(1)
            aug1, aug2 = self._augment(self.pcs1[chunk]), self._augment(self.pcs2[chunk])
            rows, sq_norms = self.rows[chunk].double(), self.sq_norms[chunk, None]
            for leaves in near.split(_SLICE // _LEAF):
                self._update_leaves(leaves, aug1, aug2, rows, sq_norms)

    @staticmethod
    def _augment(pcs):
        return torch.cat([pcs[:, :-2] * -2.0, pcs[:, -1:], pcs[:, -2:-1]], 1)

    def _update_leaves(self, leaves, aug1, aug2, centres, centre_sq):
        # Rows past both bounds get exact distances to every centre of the chunk: one float64 product, exact on
        # integers, is cheaper than tracking which (row, centre) pairs passed.
        rows = (leaves[:, None] * _LEAF + torch.arange(_LEAF)).flatten()
        bound = aug1 @ self.pcs1.view(self.leaves, -1).index_select(0, leaves).view(-1, aug1.shape[1]).T
        reach = self.reach.view(self.leaves, _LEAF).index_select(0, leaves).flatten()
        keep = (bound.amin(0) < reach).nonzero().squeeze(1)  # k1-component bound
        rows, reach = rows.index_select(0, keep), reach.index_select(0, keep)
        bound = bound.index_select(1, keep).addmm_(aug2, self.pcs2.index_select(0, rows).T)
        rows = rows.index_select(0, (bound.amin(0) < reach).nonzero().squeeze(1))  # k2-component bound
        exact = torch.addmm(
            self.sq_norms.index_select(0, rows)[None, :] + centre_sq,
            centres,
            self.rows.index_select(0, rows).double().T,
            alpha=-2.0,
        )
        min_sq = torch.minimum(self.min_sq.index_select(0, rows), exact.amin(0))
        self.min_sq.index_copy_(0, rows, min_sq)
        # The largest computed bound a row strictly nearer than sqrt(min_sq) could produce.
        reach = (min_sq.clamp_min(0).sqrt_() + self.slack).square_() + self.slack_sq
        self.reach.index_copy_(0, rows, torch.where(min_sq < 0, -1.0, reach).float())
        self._refresh_leaves(rows)

    def _refresh_leaves(self, rows):
        leaves = rows // _LEAF
        self.leaf_reach.index_copy_(0, leaves, self.reach.view(self.leaves, _LEAF).index_select(0, leaves).amax(1))
