"""Helpers shared by the fit functions: device choice, seeding, streaming embeddings."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable

import numpy as np

from ..errors import ConfigError, require_torch

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
def collect_embeddings(embed: Callable, batches: Iterable, device: str) -> torch.Tensor:
    """Run `embed` over all training batches; return N×D×h×w float32 features on the CPU."""
    chunks = []
    for array, _samples in batches:
        chunks.append(embed(torch.from_numpy(array).to(device)).float().cpu())
    if not chunks:
        raise ConfigError("no training batches were produced: the training set is empty")
    return torch.cat(chunks)


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
