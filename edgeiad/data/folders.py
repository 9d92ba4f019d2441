"""Datasets on disk: the MVTec AD layout (train/good, test/<type>, ground_truth/<type>) or a plain folder."""

from __future__ import annotations

from pathlib import Path

from edgeiad_runtime.preprocess import IMAGE_SUFFIXES

from edgeiad.errors import DataError, DataNotFoundError

from .loader import Dataset, Sample

GOOD = "good"
MASK_SUFFIX = "_mask"


def list_images(folder: Path) -> list[Path]:
    """Return the image files directly in `folder` (known suffixes, any case, no hidden files), sorted."""
    return sorted(
        entry
        for entry in folder.iterdir()
        if entry.is_file() and not entry.name.startswith(".") and entry.suffix.lower() in IMAGE_SUFFIXES
    )


def _subfolders(folder: Path) -> list[Path]:
    """Return the non-hidden subfolders of `folder`, sorted by name."""
    return sorted(entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def load_folder(root: str | Path) -> Dataset:
    """Load an MVTec-layout folder (it has `train/`) or a plain folder of good images."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataNotFoundError(f"dataset folder not found: {root} (check the path)")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a dataset folder: pass a folder of images or an MVTec-layout folder")
    root = root.resolve()
    if (root / "train").is_dir():
        return _load_mvtec(root)
    return _load_plain(root)


def _load_plain(root: Path) -> Dataset:
    """Load every image directly in `root` as a good training image."""
    images = list_images(root)
    if not images:
        raise DataError(
            f"no training images in {root}: put good images there, or use the MVTec layout "
            f"{root}/train/good ({', '.join(IMAGE_SUFFIXES)})"
        )
    train = [Sample(path=str(path), label=0, defect_type=GOOD) for path in images]
    return Dataset(name=root.name, root=str(root), train=train, test=[], has_masks=False)


def _load_mvtec(root: Path) -> Dataset:
    """Load train/good, test/<type> and (when ground_truth/ exists) the masks of anomalous images."""
    good_dir = root / "train" / GOOD
    images = list_images(good_dir) if good_dir.is_dir() else []
    if not images:
        raise DataError(f"no training images in {good_dir}: put good images there")
    train = [Sample(path=str(path), label=0, defect_type=GOOD) for path in images]
    # train/<defect>/: labelled defective images for supervised models (segad); no masks needed.
    labelled = [
        Sample(path=str(path), label=1, defect_type=folder.name)
        for folder in _subfolders(root / "train")
        if folder.name != GOOD
        for path in list_images(folder)
    ]
    truth_dir = root / "ground_truth"
    has_masks = truth_dir.is_dir()
    test: list[Sample] = []
    test_dir = root / "test"
    if test_dir.is_dir():
        for type_dir in _subfolders(test_dir):
            test.extend(_load_test_type(type_dir, truth_dir if has_masks else None))
    test.sort(key=lambda sample: sample.path)
    return Dataset(
        name=root.name, root=str(root), train=train, test=test, has_masks=has_masks, train_anomalous=labelled
    )


def _load_test_type(type_dir: Path, truth_dir: Path | None) -> list[Sample]:
    """Load the test images of one defect type ("good" is label 0), with their masks if `truth_dir`."""
    defect_type = type_dir.name
    if defect_type == GOOD:
        return [Sample(path=str(path), label=0, defect_type=GOOD) for path in list_images(type_dir)]
    mask_dir = truth_dir / defect_type if truth_dir is not None else None
    masks = _index_masks(mask_dir) if mask_dir is not None else {}
    samples = []
    for path in list_images(type_dir):
        mask = None
        if mask_dir is not None:
            mask = masks.get(path.stem + MASK_SUFFIX)
            if mask is None:
                raise DataError(
                    f"mask missing for anomalous test image {path}: expected {mask_dir / (path.stem + MASK_SUFFIX)}.png"
                    f" (add the mask, or remove {truth_dir} to evaluate without masks)"
                )
        samples.append(Sample(path=str(path), label=1, defect_type=defect_type, mask_path=mask))
    return samples


def _index_masks(mask_dir: Path) -> dict[str, str]:
    """Map mask stems (`<image stem>_mask`) to their files in `mask_dir`, preferring .png."""
    if not mask_dir.is_dir():
        return {}
    masks: dict[str, str] = {}
    for path in list_images(mask_dir):
        if path.stem not in masks or path.suffix.lower() == ".png":
            masks[path.stem] = str(path)
    return masks
