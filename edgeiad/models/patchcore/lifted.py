"""The search with each bank's lifted rows as constants, for INT8 exports that quantize its cross term (#20).

The graph's search (`_ops.min_euclidean`) multiplies the (lifted, projection.py) queries by [−2b, |b|²]. An INT8
weight scale of that matrix is set by the |b|² column, and the −2b entries keep only a few bits: that is why
quantizing "the distance part" collapsed AUROC. Here each bank's lifted rows are computed once, at export, and
stored as two constants, W = 2·Bᵀ and n = |b|², and the graph computes

    min_j (n_j − q·W_j) + |q|²

so the one MatMul q·W holds the cross term alone. n is subtracted from, not added to: ONNX Runtime fuses a MatMul
followed by an Add into an fp32 Gemm when the batch is static, before its INT8 fusion could see the MatMul.

An INT8 export quantizes only that MatMul, with one weight scale per tensor: ONNX Runtime fuses it into one integer
GEMM (MatMulIntegerToFloat); per-column scales are not fused and ran slower than fp32. n and |q|² stay fp32.
Measured offline on the six development sets (benchmarks/studies/int8_search.py), no set's image AUROC moved by
more than 0.0012; one region's GEMM + min took 0.51× its fp32 time (docs/speed.md, "The search in INT8").

The coarse image score's search (coarse.py: the stride-32 block's features against the coarse bank, exact, no
projection) is lifted the same way, as one more W and n.

fp32 exports keep `min_euclidean`'s single GEMM: the split form adds a pass over the score matrix, which only pays
when the GEMM itself gets cheaper.
"""

from __future__ import annotations

from ...errors import require_torch
from .projection import lift_queries, lift_rows

torch = require_torch()

WEIGHT = "lifted_weight_"  # buffer (and ONNX initializer) name prefix of W, one per bank, numbered in region order
NORMS = "lifted_norms_"
COARSE = "coarse"  # suffix of the coarse bank's W and n


def lifted_distances(embedding, _bank, lifted):
    """N×1×h×w distance of every patch of an N×D×h×w embedding to its nearest lifted row; `lifted` is one bank's
    (basis or None, W, n) from `LiftedSearch.lifted_banks`. The bank slice `region_distances` passes is unused:
    W and n replace it."""
    basis, weight, norms = lifted
    batch, dim, height, width = embedding.shape
    queries = embedding.permute(0, 2, 3, 1).reshape(batch, height * width, dim)
    # |q|² is read from tensors the MatMul does not read: an INT8 export rounds (and clips to its calibrated range)
    # every reader of the MatMul's input, and a query far outside the good range must keep its whole length.
    if basis is None:
        query_norms = (embedding * embedding).sum(dim=1).reshape(batch, height * width)
    else:
        queries, query_norms = lift_queries(queries, basis, with_norms=True)
    nearest = (norms - torch.matmul(queries, weight)).min(dim=-1).values
    return torch.sqrt(torch.clamp(nearest + query_norms, min=0.0)).reshape(batch, 1, height, width)


class LiftedSearch:
    """For models with PatchCore's bank search (PatchCore, the ensemble): `lift_search()` turns their graph's
    search into the split form above. Mixed into an nn.Module with `config` (regions, region_rows),
    `memory_bank`, `projected` and, when projected, `search_basis`."""

    lifted = 0  # banks lifted by `lift_search`; 0 = the graph searches the bank buffer as fitted

    @torch.no_grad()
    def lift_search(self) -> list[str]:
        """Store every bank's W and n as buffers (`lifted_weight_i`, `lifted_norms_i`; `…_coarse` for the coarse
        bank when the model has the coarse score) that the graph reads from now on instead of the banks, and return
        the W names (what an INT8 export quantizes). Only for baked statistics: a sidecar bank is a graph input and
        cannot be lifted ahead of time."""
        sizes = self.config.region_rows if self.config.regions > 1 else [self.memory_bank.shape[0]]
        for index, rows in enumerate(self.memory_bank.split(list(sizes))):
            self._lift(str(index), lift_rows(rows, self.search_basis[index]) if self.projected else rows)
        self.lifted = len(sizes)
        names = [f"{WEIGHT}{index}" for index in range(self.lifted)]
        if getattr(self, "coarse", False):  # the coarse score's search (coarse.py), exact in the block's channels
            self._lift(COARSE, self.coarse_bank)
            names.append(f"{WEIGHT}{COARSE}")
        return names

    def _lift(self, suffix: str, rows) -> None:
        self.register_buffer(f"{WEIGHT}{suffix}", (2.0 * rows).T.contiguous())
        self.register_buffer(f"{NORMS}{suffix}", (rows * rows).sum(dim=1))

    def bank_search(self, default, bases):
        """(search, bases) for `bank_distances`: `default` and `bases` as given, or once lifted, `lifted_distances`
        and each bank's lifted constants."""
        return (lifted_distances, self.lifted_banks()) if self.lifted else (default, bases)

    def coarse_search(self, default):
        """The coarse score's `search(features, bank)`: `default` (the graph's), or once lifted, one that reads the
        coarse bank's lifted constants."""
        if not self.lifted:
            return default
        constants = (None, getattr(self, f"{WEIGHT}{COARSE}"), getattr(self, f"{NORMS}{COARSE}"))
        return lambda features, bank: lifted_distances(features, bank, constants)

    def lifted_banks(self) -> list[tuple]:
        """(basis or None, W, n) of every bank, in region order: the `bases` that `bank_distances` hands, one per
        bank, to `lifted_distances`."""
        return [
            (self.search_basis[index] if self.projected else None, getattr(self, f"{WEIGHT}{index}"),
             getattr(self, f"{NORMS}{index}"))
            for index in range(self.lifted)
        ]  # fmt: skip
