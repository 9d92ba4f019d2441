"""`edgeiad predict`: score image files and folders with a run's eager model in batches, and write maps.

Outputs keep the inputs' folder structure relative to their common parent, so same-named images in different
folders never overwrite each other: `--save-raw DIR` writes float32 `.npy` maps at each image's own size and
`--save-maps DIR` heat-map overlays, both as `DIR/<relative folder>/<stem>...`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from edgeiad_runtime.postprocess import resize_map
from edgeiad_runtime.preprocess import IMAGE_SUFFIXES

from .data import Sample, load_rgb, read_batches
from .engine import eager_infer, overlay, run_thresholds, score_spec
from .errors import ConfigError, DataError, DataNotFoundError
from .runs import load_model

PREDICT_COLUMNS = ("path", "score", "raw_score", "is_anomalous", "raw_map", "overlay")
BATCH_SIZE = 16  # as evaluate


def collect_images(inputs: list[Path]) -> tuple[list[Path], Path]:
    """Image files from `inputs` (folders recursed, sorted) and the common parent their outputs are relative to."""
    files, anchors = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(path for path in item.rglob("*") if _is_image(path, item))
            if not found:
                raise DataError(f"no images in folder {item} ({', '.join(IMAGE_SUFFIXES)}): pass a folder with images")
            files += found
            anchors.append(item)
        elif item.is_file():
            files.append(item)
            anchors.append(item.parent)
        else:
            raise DataNotFoundError(f"image not found: {item}: check the path")
    # abspath, not resolve: a symlinked image keeps the place it was given at.
    return files, Path(os.path.commonpath([os.path.abspath(anchor) for anchor in anchors]))


def _is_image(path: Path, root: Path) -> bool:
    hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
    return path.is_file() and not hidden and path.suffix.lower() in IMAGE_SUFFIXES


class _Outputs:
    """Map files under `--save-raw` / `--save-maps`, written atomically; folders made only when a file is."""

    def __init__(self, files: list[Path], root: Path, raw: Path | None, maps: Path | None) -> None:
        for option, folder in (("--save-raw", raw), ("--save-maps", maps)):
            if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
                raise ConfigError(f"{option} {folder} is a file: pass a folder")
        self.raw, self.maps, self.created = raw, maps, []
        self.names: dict[str, Path] = {}  # absolute image path -> relative output path without suffix
        taken: dict[Path, str] = {}
        for file in files:
            absolute = os.path.abspath(file)
            relative = Path(os.path.relpath(absolute, root)).with_suffix("")
            if taken.setdefault(relative, absolute) != absolute:
                raise ConfigError(f"{taken[relative]} and {file} would write the same map files: rename one of them")
            self.names[absolute] = relative

    def save(self, path: str, raw_map: np.ndarray, size: tuple[int, int], spec) -> dict:
        """Write the raw map (at the image's own size) and/or the overlay of image `path`; return their paths."""
        relative, written = self.names[os.path.abspath(path)], {}
        if self.raw is not None:
            target = Path(self.raw) / relative.parent / f"{relative.name}.npy"
            self._write(target, _npy_bytes(resize_map(raw_map, *size)))
            written["raw_map"] = str(target)
        if self.maps is not None:
            target = Path(self.maps) / relative.parent / f"{relative.name}_overlay.png"
            image = overlay(load_rgb(Sample(path, 0, "unknown")), raw_map, spec.pixel_min, spec.pixel_max)
            self._write(target, cv2.imencode(".png", image)[1].tobytes())
            written["overlay"] = str(target)
        return written

    def _write(self, target: Path, data: bytes) -> None:
        missing = [folder for folder in (target.parent, *target.parent.parents) if not folder.exists()]
        target.parent.mkdir(parents=True, exist_ok=True)
        self.created += reversed(missing)  # outermost first, so cleanup removes the innermost first
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, target)

    def cleanup(self) -> None:
        """Remove the folders this run created that are still empty (after an error)."""
        for folder in reversed(self.created):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def predict_images(
    run: Path,
    images: list[Path],
    save_maps: Path | None = None,
    device: str | None = None,
    save_raw: Path | None = None,
) -> Iterator[dict]:
    """Yield one dict per image (path, score, raw score, label, written map files), scored in batches."""
    from .models._fitting import resolve_device

    files, root = collect_images(images)
    outputs = _Outputs(files, root, save_raw, save_maps)
    _record, model = load_model(Path(run))
    spec = score_spec(run_thresholds(run))
    infer = eager_infer(model, resolve_device(device))
    samples = [Sample(str(file), 0, "unknown") for file in files]
    try:
        for batch in read_batches(samples, model.config.preprocessing(), BATCH_SIZE):
            maps, scores = infer(batch.images)
            for sample, size, raw_map, raw in zip(batch.samples, batch.sizes, maps, scores.tolist()):
                record = {"path": sample.path, "score": spec.score(raw), "raw_score": raw}
                record["is_anomalous"] = spec.is_anomalous(raw)
                record.update(outputs.save(sample.path, raw_map, size, spec))
                yield record
    except BaseException:
        outputs.cleanup()
        raise
