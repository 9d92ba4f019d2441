"""Samples, datasets, and reading them as images, masks and preprocessed batches (no torch)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
from edgeiad_runtime.preprocess import Preprocessing, preprocess, read_image

from edgeiad.errors import ConfigError, DataError
from edgeiad.progress import progress_callback


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
    """A training set of good images, optional labelled defective training images, an optional labelled test set.

    `train_anomalous` holds defective images a supervised model (segad) trains on: `train/<defect>/` folders of
    an MVTec-layout dataset, or test images moved there by `take_labelled_defects` (never scored afterwards).
    """

    name: str
    root: str | None
    train: list[Sample]
    test: list[Sample]
    has_masks: bool
    train_anomalous: list[Sample] = field(default_factory=list)

    def fingerprint(self) -> str:
        """Return a sha256 hex digest over the training samples' identities, stable across runs."""
        digest = hashlib.sha256()
        for sample in [*self.train, *self.train_anomalous]:
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
            **(self.labelled_summary() if self.train_anomalous else {}),
        }

    def labelled_summary(self) -> dict:
        """How many labelled defective training images of each type, and which files (reported, never scored)."""
        counts: dict[str, int] = {}
        for sample in self.train_anomalous:
            counts[sample.defect_type] = counts.get(sample.defect_type, 0) + 1
        return {
            "n_train_anomalous": len(self.train_anomalous),
            "train_anomalous_types": dict(sorted(counts.items())),
            "train_anomalous_paths": [sample.path for sample in self.train_anomalous],
        }


def without_labelled(dataset: Dataset, paths) -> Dataset:
    """`dataset` with the test images at `paths` (a run's labelled defects) moved to train_anomalous again."""
    wanted = set(paths or ())
    known = {s.path for s in dataset.train_anomalous}
    moved = [s for s in dataset.test if s.path in wanted and s.path not in known]
    if not moved:
        return dataset
    test = [s for s in dataset.test if s.path not in wanted]
    return replace(dataset, test=test, train_anomalous=[*dataset.train_anomalous, *moved])


def labelled_indices(labels, defect_types, per_type: int, seed: int = 0) -> list[int]:
    """Seeded indices of `per_type` anomalous images of each defect type, never more than half of a type."""
    rng = np.random.default_rng(seed)
    anomalous = [i for i, label in enumerate(labels) if label != 0]
    chosen: list[int] = []
    for defect in sorted({defect_types[i] for i in anomalous}):
        members = [i for i in anomalous if defect_types[i] == defect]
        take = min(per_type, len(members) // 2)
        chosen += rng.choice(members, size=take, replace=False).tolist() if take else []
    return sorted(chosen)


def take_labelled_defects(dataset: Dataset, per_type: int, seed: int = 0) -> Dataset:
    """A copy of `dataset` with `per_type` anomalous test images of each defect type moved into train_anomalous.

    Seeded; a type never gives more than half its test images, so every type stays in the test set. Moved images
    are gone from `test`, so thresholds, metrics and parity never see them.
    """
    if per_type < 0:
        raise ConfigError(f"--labelled-defects {per_type} is invalid: use 0 or a positive count per defect type")
    if per_type == 0:
        return dataset
    if not any(s.label != 0 for s in dataset.test):
        raise DataError(
            f"--labelled-defects {per_type}: dataset {dataset.name} has no anomalous test images to take; add "
            "train/<defect>/ folders of labelled defective images instead"
        )
    labels, types = [s.label for s in dataset.test], [s.defect_type for s in dataset.test]
    chosen = set(labelled_indices(labels, types, per_type, seed))
    moved = [dataset.test[i] for i in sorted(chosen)]
    test = [s for i, s in enumerate(dataset.test) if i not in chosen]
    return replace(dataset, test=test, train_anomalous=[*dataset.train_anomalous, *moved])


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
    done = 0
    with progress_callback(progress) as update:
        update(done, len(samples))
        for batch in _batches(samples, preprocessing, batch_size):
            done += len(batch.samples)
            update(done, len(samples))
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
