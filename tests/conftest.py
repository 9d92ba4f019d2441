"""Shared fixtures: single-threaded numerics, a small synthetic MVTec-layout dataset, trained runs."""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

SYNTH_SIZE = 64  # model input size used by the tests: 8x8 patches, fast on one thread


def textured(rng: np.random.Generator, size: int = 80) -> np.ndarray:
    """A good part: smooth stripes plus mild noise (uint8 RGB)."""
    y, x = np.mgrid[0:size, 0:size]
    base = 120 + 40 * np.sin(x / 5.0) + rng.normal(0, 4, (size, size))
    return np.repeat(np.clip(base, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def with_defect(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint a dark blob at a random place; return (image, 0/255 mask)."""
    size = image.shape[0]
    cy, cx = rng.integers(16, size - 16, 2)
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    cv2.circle(mask, (int(cx), int(cy)), 9, 255, -1)
    damaged = image.copy()
    damaged[mask > 0] = (20, 200, 20)
    return damaged, mask


def make_mvtec(root: Path, n_train: int = 12, n_good: int = 4, n_bad: int = 4, seed: int = 0) -> Path:
    """Write an MVTec-AD-layout dataset with one defect type `blob` and its masks."""
    rng = np.random.default_rng(seed)
    for folder in ("train/good", "test/good", "test/blob", "ground_truth/blob"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(str(root / "train/good" / f"{i:03d}.png"), textured(rng))
    for i in range(n_good):
        cv2.imwrite(str(root / "test/good" / f"{i:03d}.png"), textured(rng))
    for i in range(n_bad):
        image, mask = with_defect(textured(rng), rng)
        cv2.imwrite(str(root / "test/blob" / f"{i:03d}.png"), image)
        cv2.imwrite(str(root / "ground_truth/blob" / f"{i:03d}_mask.png"), mask)
    return root


@pytest.fixture(scope="session")
def synthetic_mvtec(tmp_path_factory) -> Path:
    return make_mvtec(tmp_path_factory.mktemp("data") / "parts")


@pytest.fixture(scope="session")
def trained_runs(synthetic_mvtec, tmp_path_factory) -> dict[str, Path]:
    """One run folder per registered model, trained on the synthetic set at 64 px."""
    pytest.importorskip("torch", reason="training needs the [train] extra")
    from edgeiad.engine import train
    from edgeiad.models import MODELS

    root = tmp_path_factory.mktemp("runs")  # only these runs in it: `edgeiad bench --runs` finds them there
    return {
        name: train(name, synthetic_mvtec, out=root / name, overrides=model_overrides(name), progress=False)
        for name in MODELS
    }


@pytest.fixture(scope="session")
def exported(trained_runs, tmp_path_factory) -> Path:
    """A folder whose artifacts/ holds one fp32 baked artifact per model × target available here, exported once
    for the session with bench's batch (dynamic, max 16) and named as bench names them. The export round trips
    read them, and `edgeiad bench --out` this folder finds them from the same runs and does not export again (an
    export is ~19 s even at 64 px: sharing them saves CI about 6 minutes)."""
    from edgeiad.bench.cases import ArtifactKey
    from edgeiad.export import export_run
    from edgeiad.export.targets import TARGETS

    root = tmp_path_factory.mktemp("exported")
    for model, run in trained_runs.items():
        for target in (t for t in TARGETS if TARGETS[t].unavailable() is None):
            key = ArtifactKey(model, target, "fp32", "baked")
            export_run(run, target, "fp32", "baked", "dynamic:16", out=root / "artifacts" / key.name)
    return root


def model_overrides(name: str) -> dict:
    """Small, fast settings for tests (same code paths as the defaults)."""
    overrides = {"image_size": (SYNTH_SIZE, SYNTH_SIZE)}
    if name in ("patchcore", "ensemble"):
        overrides["coreset_ratio"] = 0.25
    if name in ("padim", "ensemble"):
        overrides["n_features"] = 32
    if name == "npad":
        overrides.update(n_features=32, shift=1)
    if name in ("reconstruction", "fastflow", "attribution", "efficientad"):
        overrides["epochs"] = 15
    if name == "segad":  # PatchCore base at its defaults; a small forest (the paper's is 10 x 200 trees)
        overrides.update(rounds=3, parallel_trees=20)
    return overrides
