"""Built-in datasets from the `elpv-dataset` package: solar cell EL images, one dataset per cell type."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from edgeiad.errors import ConfigError, DataError, require

from .loader import Dataset, Sample

# Random split: 200 good cells drawn by a seeded permutation train, every other cell of the type tests; a sample
# of the whole production, as a factory collects good parts. Drift split: the first 200 good cells in the
# package's order (early modules) train and the later ones test, which measures robustness to production drift.
BUILTIN = {"elpv-mono": "mono", "elpv-poly": "poly", "elpv-mono-drift": "mono", "elpv-poly-drift": "poly"}
N_TRAIN = 200
SPLIT_SEED = 0
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
    """Load a built-in ELPV set: 200 good cells of one type train, every other cell of that type tests.

    "elpv-mono" / "elpv-poly" draw the 200 with numpy's default_rng(0) permutation of the type's good cells (in
    load_dataset() order); "-drift" takes the first 200 instead, so training sees early modules only.
    """
    if name not in BUILTIN:
        valid = ", ".join(sorted(BUILTIN))
        raise ConfigError(f"unknown built-in dataset {name!r}: use one of {valid} or a folder path")
    images, probs, types, paths = _load_arrays()
    cells = np.flatnonzero(types == BUILTIN[name])
    good = cells[probs[cells] == 0]
    if name.endswith("-drift"):
        chosen = good[:N_TRAIN]
    else:
        chosen = np.sort(good[np.random.default_rng(SPLIT_SEED).permutation(good.size)[:N_TRAIN]])
    in_train = np.isin(cells, chosen)
    train: list[Sample] = []
    test: list[Sample] = []
    for index, trains in zip(cells, in_train):
        gray = images[index]
        is_good = bool(probs[index] == 0)
        sample = Sample(
            path=PREFIX + paths[index],
            label=0 if is_good else 1,
            defect_type="good" if is_good else DEFECTIVE,
            image=np.broadcast_to(gray[:, :, None], (*gray.shape, 3)),
        )
        (train if trains else test).append(sample)
    return Dataset(name=name, root=None, train=train, test=test, has_masks=False)


def clear_cache() -> None:
    """Drop the cached elpv arrays (frees memory; the next load reads the package data again)."""
    _load_arrays.cache_clear()
