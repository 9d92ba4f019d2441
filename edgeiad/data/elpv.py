"""Built-in datasets from the `elpv-dataset` package: solar cell EL images, one dataset per cell type."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from edgeiad.errors import ConfigError, DataError, require

from .loader import Dataset, Sample

BUILTIN = {"elpv-mono": "mono", "elpv-poly": "poly"}
N_TRAIN = 200
PREFIX = "elpv:"
DEFECTIVE = "defective"


def is_builtin_name(spec: str) -> bool:
    """Return True for strings naming (or looking like) a built-in dataset, e.g. "elpv-mono" or "elpv-foo"."""
    lowered = spec.lower()
    return spec in BUILTIN or ("/" not in spec and (lowered == "elpv" or lowered.startswith("elpv-")))


@functools.lru_cache(maxsize=1)
def _load_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Load (gray images, probabilities, types, relative paths) from elpv_dataset once per process."""
    require("elpv_dataset", "train")
    utils = require("elpv_dataset.utils", "train")
    images, probs, types = utils.load_dataset()
    labels = Path(utils.__file__).resolve().parent / "data" / "labels.csv"
    rows = [line.split() for line in labels.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(rows) != len(images) or any(row[2] != kind for row, kind in zip(rows, types, strict=False)):
        raise DataError(f"{labels} does not match elpv_dataset.utils.load_dataset(): reinstall elpv-dataset")
    images.setflags(write=False)
    return images, np.asarray(probs, dtype=np.float64), np.asarray(types), tuple(row[0] for row in rows)


def load_elpv(name: str) -> Dataset:
    """Load "elpv-mono" or "elpv-poly": the first 200 good cells train, every other cell tests."""
    if name not in BUILTIN:
        valid = ", ".join(sorted(BUILTIN))
        raise ConfigError(f"unknown built-in dataset {name!r}: use one of {valid} or a folder path")
    images, probs, types, paths = _load_arrays()
    train: list[Sample] = []
    test: list[Sample] = []
    for index in np.flatnonzero(types == BUILTIN[name]):
        gray = images[index]
        rgb = np.broadcast_to(gray[:, :, None], (*gray.shape, 3))
        good = bool(probs[index] == 0)
        sample = Sample(
            path=PREFIX + paths[index],
            label=0 if good else 1,
            defect_type="good" if good else DEFECTIVE,
            image=rgb,
        )
        (train if good and len(train) < N_TRAIN else test).append(sample)
    return Dataset(name=name, root=None, train=train, test=test, has_masks=False)


def clear_cache() -> None:
    """Drop the cached elpv arrays (frees memory; the next load reads the package data again)."""
    _load_arrays.cache_clear()
