"""Tests of edgeiad.data: folder layouts, built-in elpv, batches, masks, fingerprints and bad-data errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from edgeiad_runtime.preprocess import Preprocessing, preprocess, read_image

from edgeiad.data import (
    Dataset,
    Sample,
    check_min_images,
    iter_batches,
    load_dataset,
    load_mask,
    load_rgb,
)
from edgeiad.data import elpv as elpv_module
from edgeiad.errors import ConfigError, DataError, DataNotFoundError, MissingExtraError

BSDATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsdata"


def _image(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Return a random uint8 image (gray when channels == 1)."""
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _write(path: Path, image: np.ndarray) -> Path:
    """Write an image with cv2, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image), path
    return path


def _mask(height: int, width: int) -> np.ndarray:
    """Return a 0/255 mask with a filled rectangle."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[2:6, 3:9] = 255
    return mask


@pytest.fixture()
def mvtec(tmp_path: Path) -> Path:
    """Build a small MVTec-layout dataset with mixed formats, sizes, hidden and non-image files."""
    root = tmp_path / "widget"
    train = root / "train" / "good"
    _write(train / "a.png", _image(32, 40, 1, seed=1))
    _write(train / "b.jpg", _image(48, 48, 3, seed=2))
    _write(train / "c.bmp", _image(20, 30, 3, seed=3))
    _write(train / "d.tiff", _image(24, 24, 1, seed=4))
    _write(train / "e.PNG", _image(16, 16, 3, seed=5))
    _write(train / ".hidden.png", _image(16, 16, 3, seed=6))
    (train / "notes.txt").write_text("not an image")
    (root / "NOTICE.md").write_text("# licence")
    (root / "manifest.csv").write_text("path,label\n")
    _write(root / "test" / "good" / "g1.png", _image(32, 32, 3, seed=7))
    _write(root / "test" / "scratch" / "s1.png", _image(16, 20, 3, seed=8))
    _write(root / "test" / "scratch" / "s2.jpg", _image(16, 20, 1, seed=9))
    _write(root / "test" / "crack" / "c1.bmp", _image(12, 12, 3, seed=10))
    _write(root / "ground_truth" / "scratch" / "s1_mask.png", _mask(16, 20))
    _write(root / "ground_truth" / "scratch" / "s2_mask.png", _mask(16, 20))
    _write(root / "ground_truth" / "crack" / "c1_mask.png", _mask(12, 12))
    return root


@pytest.fixture(scope="module")
def elpv_mono() -> Dataset:
    """Load elpv-mono once for the module (reading the package data takes a few seconds)."""
    pytest.importorskip("elpv_dataset", reason="elpv-dataset is not installed (pip install 'edgeiad[train]')")
    return load_dataset("elpv-mono")


def test_mvtec_layout_loads(mvtec: Path) -> None:
    dataset = load_dataset(mvtec)
    assert dataset.name == "widget"
    assert dataset.root == str(mvtec.resolve())
    assert [Path(s.path).name for s in dataset.train] == ["a.png", "b.jpg", "c.bmp", "d.tiff", "e.PNG"]
    assert all(s.label == 0 and s.defect_type == "good" and s.mask_path is None for s in dataset.train)
    by_name = {Path(s.path).name: s for s in dataset.test}
    assert sorted(by_name) == ["c1.bmp", "g1.png", "s1.png", "s2.jpg"]
    assert (by_name["g1.png"].label, by_name["g1.png"].defect_type, by_name["g1.png"].mask_path) == (0, "good", None)
    assert (by_name["c1.bmp"].label, by_name["c1.bmp"].defect_type) == (1, "crack")
    assert by_name["s2.jpg"].mask_path == str(mvtec.resolve() / "ground_truth" / "scratch" / "s2_mask.png")
    assert dataset.test == sorted(dataset.test, key=lambda s: s.path)
    assert dataset.has_masks
    summary = dataset.summary()
    assert summary["n_train"] == 5 and summary["n_test_good"] == 1 and summary["n_test_anomalous"] == 3
    assert summary["defect_types"] == ["crack", "scratch"]
    assert summary["fingerprint"] == dataset.fingerprint()


def test_mvtec_without_ground_truth_has_no_masks(mvtec: Path) -> None:
    for mask in (mvtec / "ground_truth").rglob("*.png"):
        mask.unlink()
    for folder in sorted((mvtec / "ground_truth").iterdir()):
        folder.rmdir()
    (mvtec / "ground_truth").rmdir()
    dataset = load_dataset(str(mvtec))
    assert not dataset.has_masks
    assert all(s.mask_path is None for s in dataset.test)
    anomalous = next(s for s in dataset.test if s.label == 1)
    assert not load_mask(anomalous, (12, 12)).any()


def test_plain_folder_loads(tmp_path: Path) -> None:
    _write(tmp_path / "x" / "one.png", _image(20, 20, 1))
    _write(tmp_path / "x" / "two.tif", _image(30, 10, 3))
    (tmp_path / "x" / "readme.md").write_text("hello")
    dataset = load_dataset(tmp_path / "x")
    assert dataset.name == "x"
    assert [Path(s.path).name for s in dataset.train] == ["one.png", "two.tif"]
    assert dataset.test == [] and not dataset.has_masks


@pytest.mark.skipif(not BSDATA.is_dir(), reason=f"bsdata not present at {BSDATA}")
def test_bsdata_loads() -> None:
    dataset = load_dataset(BSDATA)
    summary = dataset.summary()
    assert summary["n_train"] == 120
    assert summary["n_test_good"] == 45
    assert summary["n_test_anomalous"] == 56
    assert summary["defect_types"] == ["pitting"]
    assert dataset.has_masks
    masks = [s.mask_path for s in dataset.test if s.label == 1]
    assert len(masks) == 56 and all(m is not None and Path(m).is_file() for m in masks)
    sample = next(s for s in dataset.test if s.label == 1)
    image = load_rgb(sample)
    mask = load_mask(sample, image.shape[:2])
    assert mask.dtype == bool and mask.shape == image.shape[:2] and mask.any()


def test_elpv_mono(elpv_mono: Dataset) -> None:
    assert elpv_mono.name == "elpv-mono" and elpv_mono.root is None and not elpv_mono.has_masks
    assert len(elpv_mono.train) == 200
    assert all(s.label == 0 for s in elpv_mono.train)
    assert {s.label for s in elpv_mono.test} == {0, 1}
    assert {s.defect_type for s in elpv_mono.test if s.label == 1} == {"defective"}
    assert all(re.fullmatch(r"elpv:images/cell\d{4}\.png", s.path) for s in elpv_mono.train + elpv_mono.test)
    assert len({s.path for s in elpv_mono.train + elpv_mono.test}) == len(elpv_mono.train) + len(elpv_mono.test)
    rgb = load_rgb(elpv_mono.train[0])
    assert rgb.shape == (300, 300, 3) and rgb.dtype == np.uint8 and rgb.flags["C_CONTIGUOUS"]
    assert (rgb[:, :, 0] == rgb[:, :, 2]).all()
    assert not load_mask(elpv_mono.test[-1], (300, 300)).any()


def test_elpv_random_and_drift_splits(elpv_mono: Dataset) -> None:
    from elpv_dataset.utils import load_dataset as elpv_arrays

    _images, probs, types = elpv_arrays()
    good = [f"elpv:images/cell{i + 1:04d}.png" for i in np.flatnonzero((types == "mono") & (probs == 0))]
    chosen = {good[i] for i in np.random.default_rng(0).permutation(len(good))[:200]}
    assert {s.path for s in elpv_mono.train} == chosen  # a seeded random sample of the whole production
    drift = load_dataset("elpv-mono-drift")
    assert [s.path for s in drift.train] == good[:200]  # the first modules only
    for dataset in (elpv_mono, drift):
        train = {s.path for s in dataset.train}
        assert not train & {s.path for s in dataset.test}
        assert len(dataset.test) == len(elpv_mono.test) and all(s.label == 0 for s in dataset.train)
    assert {s.path for s in drift.test} != {s.path for s in elpv_mono.test}


def test_elpv_fingerprint_and_batches(elpv_mono: Dataset) -> None:
    assert elpv_mono.fingerprint() == load_dataset("elpv-mono").fingerprint()
    batch, samples = next(iter_batches(elpv_mono.train, Preprocessing(64, 64), batch_size=4))
    assert batch.shape == (4, 3, 64, 64) and samples == elpv_mono.train[:4]


def test_elpv_unknown_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown built-in dataset 'elpv-foo'.*elpv-mono, elpv-mono-drift"):
        load_dataset("elpv-foo")


def test_elpv_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "elpv_dataset", None)
    monkeypatch.setitem(sys.modules, "elpv_dataset.utils", None)
    monkeypatch.setattr(elpv_module, "_load_arrays", elpv_module._load_arrays.__wrapped__)
    with pytest.raises(MissingExtraError, match=r"pip install 'edgeiad\[train\]'"):
        load_dataset("elpv-poly")


def test_iter_batches_matches_runtime_preprocess(mvtec: Path) -> None:
    dataset = load_dataset(mvtec)
    spec = Preprocessing(height=24, width=28)
    batches = list(iter_batches(dataset.train + dataset.test, spec, batch_size=3))
    assert [len(samples) for _, samples in batches] == [3, 3, 3]
    for batch, samples in batches:
        assert batch.dtype == np.float32 and batch.shape == (len(samples), 3, 24, 28)
        for row, sample in zip(batch, samples, strict=True):
            expected = preprocess(read_image(sample.path), spec)
            assert row.tobytes() == expected.tobytes()


def test_iter_batches_progress_on_stderr(mvtec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = load_dataset(mvtec)
    batches = list(iter_batches(dataset.train, Preprocessing(8, 8), batch_size=2, progress="embedding"))
    assert len(batches) == 3
    captured = capsys.readouterr()
    assert "embedding" in captured.err and captured.out == ""


def test_iter_batches_rejects_bad_batch_size(mvtec: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size is 0"):
        list(iter_batches(load_dataset(mvtec).train, Preprocessing(8, 8), batch_size=0))


def test_corrupt_image_surfaces_through_iter_batches(mvtec: Path) -> None:
    broken = mvtec / "train" / "good" / "b.jpg"
    broken.write_bytes(b"this is not a jpeg")
    dataset = load_dataset(mvtec)
    with pytest.raises(DataError, match=f"cannot read image {re.escape(str(broken.resolve()))}: the file is corrupt"):
        list(iter_batches(dataset.train, Preprocessing(8, 8)))


def test_truncated_jpeg_is_refused_in_training(mvtec: Path) -> None:
    ok, jpeg = cv2.imencode(".jpg", _image(64, 64))
    broken = mvtec / "train" / "good" / "half.jpg"
    broken.write_bytes(jpeg.tobytes()[: len(jpeg) * 2 // 3])  # used to decode, gray-filled, into the training set
    dataset = load_dataset(mvtec)
    with pytest.raises(DataError, match=f"cannot read image {re.escape(str(broken.resolve()))}: the JPEG is"):
        list(iter_batches(dataset.train, Preprocessing(8, 8)))


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=f"dataset folder not found: {re.escape(str(tmp_path / 'nope'))}"):
        load_dataset(tmp_path / "nope")


def test_file_instead_of_folder(tmp_path: Path) -> None:
    path = _write(tmp_path / "single.png", _image(8, 8))
    with pytest.raises(DataError, match="is a file, not a dataset folder"):
        load_dataset(path)


def test_train_good_missing(tmp_path: Path) -> None:
    (tmp_path / "ds" / "train" / "bad").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no training images in .*train/good: put good images there"):
        load_dataset(tmp_path / "ds")


def test_train_good_without_images(tmp_path: Path) -> None:
    good = tmp_path / "ds" / "train" / "good"
    good.mkdir(parents=True)
    (good / "manifest.csv").write_text("x")
    _write(good / ".hidden.png", _image(8, 8))
    with pytest.raises(DataError, match=r"no training images in .*train/good: put good images there"):
        load_dataset(tmp_path / "ds")


def test_plain_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no training images in .*empty: put good images there"):
        load_dataset(tmp_path / "empty")


def test_mask_missing(mvtec: Path) -> None:
    (mvtec / "ground_truth" / "scratch" / "s2_mask.png").unlink()
    expected = re.escape(str(mvtec.resolve() / "ground_truth" / "scratch" / "s2_mask.png"))
    with pytest.raises(DataError, match=f"mask missing for anomalous test image .*s2.jpg: expected {expected}"):
        load_dataset(mvtec)


def test_mask_size_mismatch(mvtec: Path) -> None:
    _write(mvtec / "ground_truth" / "crack" / "c1_mask.png", _mask(10, 14))
    sample = next(s for s in load_dataset(mvtec).test if s.defect_type == "crack")
    image = load_rgb(sample)
    with pytest.raises(DataError, match=r"mask .*c1_mask.png is 10x14 pixels but image .*c1.bmp is 12x12"):
        load_mask(sample, image.shape[:2])


def test_load_mask_values(mvtec: Path) -> None:
    dataset = load_dataset(mvtec)
    scratch = next(s for s in dataset.test if Path(s.path).name == "s1.png")
    mask = load_mask(scratch, load_rgb(scratch).shape[:2])
    assert mask.dtype == bool and mask.shape == (16, 20)
    assert (mask == (_mask(16, 20) > 0)).all()
    good = next(s for s in dataset.test if s.label == 0)
    assert not load_mask(good, (32, 32)).any()


def test_load_rgb_of_gray_and_preloaded(mvtec: Path) -> None:
    gray = load_rgb(Sample(path=str(mvtec / "train" / "good" / "a.png"), label=0, defect_type="good"))
    assert gray.shape == (32, 40, 3) and gray.dtype == np.uint8
    assert (gray[:, :, 0] == _image(32, 40, 1, seed=1)).all() and (gray[:, :, 1] == gray[:, :, 2]).all()
    preloaded = Sample(path="elpv:x.png", label=0, defect_type="good", image=np.full((4, 5, 3), 7, np.uint8))
    assert (load_rgb(preloaded) == 7).all()


def test_check_min_images(mvtec: Path) -> None:
    dataset = load_dataset(mvtec)
    check_min_images(dataset, 5, "patchcore")
    message = f"model padim needs at least 6 training images, found 5 in {re.escape(dataset.root)}"
    with pytest.raises(DataError, match=message):
        check_min_images(dataset, 6, "padim")


def test_fingerprint_stable_and_changes(mvtec: Path) -> None:
    first = load_dataset(mvtec).fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert load_dataset(mvtec).fingerprint() == first
    _write(mvtec / "test" / "good" / "g2.png", _image(8, 8))
    assert load_dataset(mvtec).fingerprint() == first  # test images do not change the training identity
    target = mvtec / "train" / "good" / "c.bmp"
    stat = target.stat()
    _write(target, _image(20, 31, 3, seed=99))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert load_dataset(mvtec).fingerprint() != first


def test_fingerprint_of_preloaded_images() -> None:
    def dataset(value: int) -> Dataset:
        image = np.full((4, 4, 3), value, np.uint8)
        return Dataset("mem", None, [Sample("elpv:a.png", 0, "good", image=image)], [], False)

    assert dataset(1).fingerprint() == dataset(1).fingerprint()
    assert dataset(1).fingerprint() != dataset(2).fingerprint()


def test_data_package_imports_without_torch() -> None:
    code = "import sys, edgeiad.data; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
