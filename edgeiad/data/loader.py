"""Samples, datasets, and reading them as images, masks and preprocessed batches (no torch)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from edgeiad_runtime.preprocess import Preprocessing, preprocess, read_image

from edgeiad.errors import ConfigError, DataError


@dataclass
class Sample:
    """One image: its path (or "elpv:<relative path>"), label 0 good / 1 anomalous, and optional mask."""

    path: str
    label: int
    defect_type: str
    mask_path: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)


@dataclass
class Dataset:
    """A training set of good images plus an optional labelled test set."""

    name: str
    root: str | None
    train: list[Sample]
    test: list[Sample]
    has_masks: bool

    def fingerprint(self) -> str:
        """Return a sha256 hex digest over the training samples' identities, stable across runs."""
        digest = hashlib.sha256()
        for sample in self.train:
            digest.update(sample.path.encode("utf-8"))
            digest.update(b"\0")
            if sample.image is not None:
                image = np.ascontiguousarray(sample.image)
                digest.update(repr((image.shape, str(image.dtype))).encode("ascii"))
                digest.update(image.tobytes())
            else:
                stat = os.stat(sample.path)
                digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode("ascii"))
            digest.update(b"\n")
        return digest.hexdigest()

    def summary(self) -> dict:
        """Return counts, defect types, mask availability and the fingerprint as a plain dict."""
        return {
            "name": self.name,
            "root": self.root,
            "n_train": len(self.train),
            "n_test_good": sum(1 for s in self.test if s.label == 0),
            "n_test_anomalous": sum(1 for s in self.test if s.label != 0),
            "defect_types": sorted({s.defect_type for s in self.test if s.label != 0}),
            "has_masks": self.has_masks,
            "fingerprint": self.fingerprint(),
        }


def check_min_images(dataset: Dataset, n_required: int, model: str) -> None:
    """Raise DataError when the dataset has fewer than `n_required` training images for `model`."""
    found = len(dataset.train)
    if found < n_required:
        where = dataset.root if dataset.root is not None else dataset.name
        raise DataError(
            f"model {model} needs at least {n_required} training images, found {found} in {where}: add more good images"
        )


def load_rgb(sample: Sample) -> np.ndarray:
    """Return the sample's pixels as uint8 HxWx3 RGB (preloaded image, else read from its file)."""
    if sample.image is not None:
        return np.ascontiguousarray(sample.image)
    return read_image(sample.path)


def load_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """Return the sample's defect mask as bool HxW; all False for good images or without a mask."""
    height, width = int(shape[0]), int(shape[1])
    if sample.label == 0 or sample.mask_path is None:
        return np.zeros((height, width), dtype=bool)
    mask = read_image(sample.mask_path)
    if mask.shape[:2] != (height, width):
        raise DataError(
            f"mask {sample.mask_path} is {mask.shape[0]}x{mask.shape[1]} pixels but image {sample.path} is "
            f"{height}x{width}: save the mask at its image's size"
        )
    return mask.max(axis=2) > 0


class Batch(NamedTuple):
    """A preprocessed float32 Nx3xHxW batch, its samples and their original (height, width)."""

    images: np.ndarray
    samples: list[Sample]
    sizes: list[tuple[int, int]]


def iter_batches(
    samples: Iterable[Sample],
    preprocessing: Preprocessing,
    batch_size: int = 16,
    progress: str | None = None,
) -> Iterator[tuple[np.ndarray, list[Sample]]]:
    """Yield (float32 Nx3xHxW batch, samples) read with load_rgb and the runtime's preprocess."""
    for batch in read_batches(samples, preprocessing, batch_size, progress):
        yield batch.images, batch.samples


def read_batches(
    samples: Iterable[Sample],
    preprocessing: Preprocessing,
    batch_size: int = 16,
    progress: str | None = None,
) -> Iterator[Batch]:
    """Yield Batch records (with each image's original size, for maps at the ground truth's resolution)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size is {batch_size}: use a positive integer")
    samples = list(samples)
    if progress is None:
        yield from _batches(samples, preprocessing, batch_size)
        return
    bar, task = _start_progress(progress, len(samples))
    with bar:
        for batch in _batches(samples, preprocessing, batch_size):
            bar.advance(task, len(batch.samples))
            yield batch


def _batches(samples: list[Sample], preprocessing: Preprocessing, batch_size: int) -> Iterator[Batch]:
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        arrays, sizes = [], []
        for sample in chunk:
            rgb = load_rgb(sample)
            sizes.append((int(rgb.shape[0]), int(rgb.shape[1])))
            arrays.append(preprocess(rgb, preprocessing))
        yield Batch(np.stack(arrays).astype(np.float32, copy=False), chunk, sizes)


def _start_progress(description: str, total: int):
    """Create a rich progress bar on stderr with one task of `total` images."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    task = bar.add_task(description, total=total)
    return bar, task
