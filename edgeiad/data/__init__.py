"""Datasets of good (and labelled test) images: MVTec-layout folders, plain folders, built-in elpv (no torch)."""

from __future__ import annotations

from pathlib import Path

from edgeiad.errors import DataNotFoundError

from .elpv import BUILTIN, is_builtin_name, load_elpv
from .folders import list_images, load_folder
from .loader import (
    Batch,
    Dataset,
    Sample,
    check_min_images,
    iter_batches,
    load_mask,
    load_rgb,
    read_batches,
    take_labelled_defects,
    without_labelled,
)

__all__ = [
    "BUILTIN",
    "Batch",
    "Dataset",
    "Sample",
    "check_min_images",
    "iter_batches",
    "list_images",
    "load_dataset",
    "load_mask",
    "load_rgb",
    "read_batches",
    "take_labelled_defects",
    "without_labelled",
]


def load_dataset(spec: str | Path) -> Dataset:
    """Load "elpv-mono" | "elpv-poly" | an MVTec-layout folder | a plain folder of good images."""
    if isinstance(spec, str) and spec in BUILTIN:
        return load_elpv(spec)
    path = Path(spec).expanduser()
    if path.exists():
        return load_folder(path)
    if isinstance(spec, str) and is_builtin_name(spec):
        return load_elpv(spec)
    raise DataNotFoundError(
        f"dataset folder not found: {path} (check the path, or use a built-in dataset: {', '.join(sorted(BUILTIN))})"
    )
