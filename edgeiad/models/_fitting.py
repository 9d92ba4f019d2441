"""Helpers shared by the fit functions: device choice, seeding, streaming embeddings."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import numpy as np

from ..errors import ConfigError, DataError, require_torch

torch = require_torch()


def resolve_device(device: str | None) -> str:
    """'cpu' by default; 'cuda' only when torch sees a GPU, else a clear error."""
    device = (device or "cpu").lower()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but torch sees no CUDA GPU: use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}: use cpu or cuda")
    return device


def seed_everything(seed: int) -> None:
    """Make fitting deterministic for a given seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def collect_embeddings(embed: Callable, batches: Iterable, device: str):
    """Run `embed` over all training batches; return its N×… float32 features on the CPU (a tuple of them when
    `embed` returns a tuple: several views of one backbone pass)."""
    chunks = []
    for array, _samples in batches:
        out = embed(torch.from_numpy(array).to(device))
        chunks.append(tuple(part.float().cpu() for part in out) if isinstance(out, tuple) else out.float().cpu())
    if not chunks:
        raise ConfigError("no training batches were produced: the training set is empty")
    if isinstance(chunks[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*chunks))
    return torch.cat(chunks)


@contextmanager
def one_thread():
    """Run the block with torch on one thread (restored after): for batches of many small kernels or
    factorisations, where threads only add barriers, and on a busy machine stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def spd_inverse(matrices):
    """Inverse of a batch of symmetric positive-definite matrices (regularised covariances, float64), by Cholesky
    on one thread.

    Not `torch.linalg.inv` with torch's threads: on the CPU its batched LU (oneMKL) fails once the matrices are
    150 × 150 or larger and torch runs more than one thread (torch 2.13: "DLASWP parameter 6 was incorrect", then
    an error or, silently, wrong inverses); N-pad's default 150 channels hit it on every machine with two cores or
    more. Batched Cholesky is right at two threads but its inverse took 48 s there for 960 matrices of 100 × 100
    (0.3 s on one thread). The result is checked, so a wrong inverse from any library stops the fit instead of
    producing a model that passes parts.
    """
    with one_thread():
        factor = _cholesky(matrices)
        inverse = torch.cholesky_inverse(factor)
    identity = torch.eye(matrices.shape[-1], dtype=matrices.dtype, device=matrices.device)
    _check_solution(matrices, inverse, identity, "inverse")
    return inverse


def spd_solve(matrices, right):
    """Solve A·X = B for a batch of symmetric positive-definite A (see `spd_inverse` for why not LU)."""
    with one_thread():
        solution = torch.cholesky_solve(right, _cholesky(matrices))
    _check_solution(matrices, solution, right, "solution")
    return solution


def _cholesky(matrices):
    factor, info = torch.linalg.cholesky_ex(matrices)
    failed = int((info != 0).sum())
    if failed:
        raise DataError(
            f"the feature covariance is not positive definite at {failed} of {info.numel()} positions (NaN or "
            "infinite features, or regularization <= 0): check the training images and keep regularization > 0, "
            "e.g. 0.01"
        )
    return factor


def _check_solution(matrices, solution, right, what: str) -> None:
    """Stop when A·X = B is off by more than rounding: the residual relative to |A|·|X|·d + |B| (largest entries)
    is ~1e-17 for a right float64 Cholesky solve however ill-conditioned A is, ~1 for a wrong one."""
    if not matrices.numel():
        return
    residual = float((matrices @ solution - right).abs().amax())
    scale = float(matrices.abs().amax() * solution.abs().amax() * matrices.shape[-1] + right.abs().amax())
    if not residual <= 1e-12 * scale:  # about 100x the rounding bound at 150 channels; also catches NaN
        raise DataError(
            f"the covariance {what} is wrong (residual {residual:.3g} of {scale:.3g}): the linear-algebra library "
            "failed; refit with one thread (OMP_NUM_THREADS=1) and report this with `edgeiad doctor`'s output"
        )


class Stopwatch:
    """Named wall-clock timings for the fit report."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def time(self, name: str):
        watch = self

        class _Span:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                watch.timings[name] = round(time.perf_counter() - self.start, 3)

        return _Span()
