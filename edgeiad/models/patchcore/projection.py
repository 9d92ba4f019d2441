"""Projected search: PatchCore's nearest-row search in the principal directions of each bank (#20).

The exact search costs one GEMM of (patches × D) by (D × rows), and D (152 for Lite0's two taps) sets its cost:
ONNX Runtime, one thread, 4 regions of 576 patches × 1352 rows took 10.4 ms at D = 152 and 4.7 ms at 64.

Each bank (each region's rows, or the whole bank) gets a centre c and its top `k` principal directions V (D × k).
With x = q − c and r = b − c, split both into the subspace part (xV, rV) and a residual of length Lx, Lr. Then

    ||q − b||² = ||xV − rV||² + Lx² + Lr² − 2·Lx·Lr·cos θ

where θ is the angle between the two residuals, the one thing the search does not know. It uses a fixed cos θ = γ
per bank, estimated at fit as the mean over good training patches and their nearest rows (`agreement`): the distance
of a good patch to its match is then right on average, while a patch whose residual is longer than any good one's
keeps that energy. γ = 0 (residuals at right angles) over-states a good patch's distance by 2·Lx·Lr·cos θ, much when
near neighbours' residuals agree; γ = 1 (residuals parallel) is a lower bound that lets an odd residual pass for a
good one of the same length. Measured with k = 64 (image AUROC, eager; exact search, then γ = 0 / γ = 1 / fitted γ):
cfd 0.929, then 0.929 / 0.911 / 0.927; ELPV mono 0.904, then 0.895 / 0.904 / 0.898. No fixed γ suits both, and the
fitted one is never the worst (docs/speed.md, "Projected search").

The distance above is a plain Euclidean distance between points of k + 3 dimensions,
(xV, √γ·Lx, √(1−γ)·Lx, 0) and (rV, √γ·Lr, 0, √(1−γ)·Lr), so the search keeps its one GEMM and ReduceMin, at
k + 4 columns instead of D + 1.

The bases come from the bank (float64 SVD) and γ from the training patches, at fit and at update. They are
statistics beside the bank, one R×D×(k+2) tensor: the k directions, the centre, then a column holding γ in its
first entry. A sidecar artifact carries it in the same file as the bank.
"""

from __future__ import annotations

from ...errors import ConfigError, require_torch

torch = require_torch()


def check_search_dim(value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(
            f"search_dim {value!r} is invalid: use 0 (exact search in every feature dimension) or the number of "
            "principal directions to search in, e.g. 64"
        )


def principal_bases(bank, sizes: list[int], keep: int):
    """R×D×(keep+2) float32 for the R banks whose rows lie one after another in `bank` (`sizes` rows each): the top
    `keep` principal directions as columns, the centre, then γ = 0 (`with_agreement` sets it). A bank with fewer
    than `keep` rows has zero columns for the directions it lacks (they add nothing to the search)."""
    if not torch.isfinite(bank).all():
        raise ConfigError("the memory bank holds NaN or infinite values: check the training images and refit")
    dim = bank.shape[1]
    bases = torch.zeros(len(sizes), dim, keep + 2, dtype=torch.float64)
    for index, rows in enumerate(bank.double().split(list(sizes))):
        centre = rows.mean(dim=0)
        _u, _s, vt = torch.linalg.svd(rows - centre, full_matrices=False)
        found = min(keep, vt.shape[0])
        bases[index, :, :found] = vt[:found].T
        bases[index, :, keep] = centre
    return bases.float()


def agreement(samples, rows, basis, chunk: int = 256) -> float:
    """Mean cosine, clipped to [0, 1], between the residuals of good patches (`samples`, S×D) and of their nearest
    rows in `rows`; a sample that is itself a row is matched with its nearest other row, so a bank that holds every
    training patch (few images) still gives an estimate. 0 when there is nothing to estimate from."""
    samples, rows = samples.double(), rows.double()
    vectors, centre = basis[:, :-2].double(), basis[:, -2].double()
    row_norms = (rows * rows).sum(dim=1)
    total, count = 0.0, 0
    for start in range(0, samples.shape[0], chunk):
        part = samples[start : start + chunk]
        norms = (part * part).sum(dim=1, keepdim=True)
        squared = norms + row_norms - 2.0 * part @ rows.T
        squared[squared <= 1e-10 * (norms + row_norms)] = float("inf")  # the sample itself
        distance, nearest = squared.min(dim=1)
        found = torch.isfinite(distance)
        first = _residual(part[found] - centre, vectors)
        second = _residual(rows[nearest[found]] - centre, vectors)
        lengths = first.norm(dim=1) * second.norm(dim=1)
        valid = lengths > 0
        total += float(((first * second).sum(dim=1)[valid] / lengths[valid]).sum())
        count += int(valid.sum())
    return min(max(total / count, 0.0), 1.0) if count else 0.0


def with_agreement(bases, bank, sizes: list[int], samples: list):
    """`bases` with each bank's γ filled in from its good patches `samples[i]` (`agreement`)."""
    bases = bases.clone()
    for index, (rows, sample) in enumerate(zip(bank.split(list(sizes)), samples)):
        bases[index, 0, -1] = agreement(sample, rows, bases[index])
    return bases


def _residual(points, vectors):
    return points - (points @ vectors) @ vectors.T


def project(queries, bank, basis):
    """(queries, rows) as points of k + 3 dimensions whose Euclidean distances are the projected search's:
    queries …×D, bank M×D, basis D×(k+2) from `principal_bases`."""
    return lift_queries(queries, basis), lift_rows(bank.to(queries.dtype), basis)


def lift_queries(queries, basis, with_norms: bool = False):
    """The queries (…×D) as `project` lifts them, …×(k+3); with `with_norms`, also their squared lengths (…),
    computed from the parts before they are joined (lifted.py: an INT8 graph rounds the joined tensor)."""
    vectors, centre, gamma = _parts(basis, queries.dtype)
    lifted, norms = _lift(queries - centre, vectors, gamma, 2)
    return (lifted, norms) if with_norms else lifted


def lift_rows(bank, basis):
    """The bank's rows (M×D) as `project` lifts them, M×(k+3)."""
    vectors, centre, gamma = _parts(basis, bank.dtype)
    return _lift(bank - centre, vectors, gamma, 3)[0]


def _parts(basis, dtype):
    """(directions D×k, centre D, γ) of a basis from `principal_bases`, in `dtype`."""
    basis = basis.to(dtype)
    return basis[:, :-2], basis[:, -2], basis[0, -1]


def _lift(points, vectors, gamma, slot: int):
    """(pV, √γ·L, …) with √(1−γ)·L in column k + `slot` and 0 in the other of k + 2, k + 3; and its squared
    length |pV|² + L²."""
    inside = points @ vectors
    inside_sq = (inside * inside).sum(dim=-1, keepdim=True)
    outside = torch.clamp((points * points).sum(dim=-1, keepdim=True) - inside_sq, min=0.0)
    length = torch.sqrt(outside)
    apart, zero = length * torch.sqrt(1.0 - gamma), torch.zeros_like(length)
    tail = [apart, zero] if slot == 2 else [zero, apart]
    return torch.cat([inside, length * torch.sqrt(gamma), *tail], dim=-1), (inside_sq + outside).squeeze(-1)
