"""Detector: load an exported artifact and turn frames into anomaly scores and maps, without torch."""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

import numpy as np

from .backends.base import Backend, choose_backend, create_backend
from .errors import ArtifactError, DataError, DataNotFoundError, EdgeiadError, NonFiniteScoreError
from .manifest import MANIFEST_NAME, preprocessing_of
from .manifest import load_manifest as _load_manifest
from .postprocess import ScoreSpec, resize_map
from .preprocess import preprocess, read_image, to_rgb_uint8
from .safetensors_io import load_file

ImageInput = np.ndarray | str | os.PathLike
COLOR_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Result:
    """One image's prediction; maps are float32 HxW at the input image's own size."""

    score: float | None  # normalised, 0.5 = threshold; None without thresholds
    raw_score: float
    is_anomalous: bool | None
    anomaly_map: np.ndarray  # normalised when a pixel threshold exists, else the raw map
    raw_map: np.ndarray
    mask: np.ndarray | None
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready summary (no maps)."""
        return {
            "score": self.score,
            "raw_score": self.raw_score,
            "is_anomalous": self.is_anomalous,
            "timings": dict(self.timings),
        }


def _ms(start: float) -> float:
    return (perf_counter() - start) * 1000.0


def _artifact_folder(path: str | os.PathLike) -> Path:
    if path is None or not isinstance(path, (str, os.PathLike)):
        raise DataError(f"artifact path is {path!r}: pass the folder written by `edgeiad export`")
    folder = Path(path)
    if folder.is_file() and folder.name == MANIFEST_NAME:
        return folder.parent  # accept the manifest itself as a handle on its folder
    if folder.exists() and not folder.is_dir():
        raise ArtifactError(f"{folder} is a file: pass the artifact folder (the one holding {MANIFEST_NAME})")
    if not folder.exists():
        raise DataNotFoundError(
            f"artifact folder not found: {folder} (check the path, or export one with `edgeiad export`)"
        )
    return folder


def _load_stats(folder: Path, manifest: dict) -> dict[str, np.ndarray]:
    stats = manifest["stats"]
    if stats["mode"] != "sidecar":
        return {}
    path = folder / stats["file"]
    tensors = load_file(path)
    if set(tensors) != set(stats["tensors"]):
        raise ArtifactError(
            f"{path} holds tensors {sorted(tensors)} but {MANIFEST_NAME} lists {sorted(stats['tensors'])}: re-export"
        )
    for name, value in tensors.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ArtifactError(f"{path} tensor {name!r} holds NaN or infinite values: re-export the artifact")
    return tensors


def _check_finite(anomaly_map: np.ndarray, pred_score: np.ndarray, first: int) -> None:
    """Fail closed: a NaN or infinite output is an error, never a result that could pass a part."""
    for offset in range(len(pred_score)):
        if not (np.isfinite(pred_score[offset]) and np.isfinite(anomaly_map[offset]).all()):
            raise NonFiniteScoreError(
                f"image {first + offset}: the model returned a NaN or infinite score or map, so the image is not "
                "scored (never a pass): the artifact, its statistics or the backend is faulty; re-export it"
            )


class Detector:
    """A loaded artifact: preprocessing, backend and score calibration, safe to share between threads."""

    default_color_order = "BGR"  # frames from OpenCV (cv2.VideoCapture, cv2.imread) are BGR

    def __init__(self, folder: Path, manifest: dict, backend: Backend, max_pixels: int | None = None) -> None:
        self.folder = folder
        self._label = str(folder)  # how errors name this detector (a RemoteDetector names its server and model)
        self._manifest = manifest
        self._backend: Backend | None = backend
        self._max_pixels = max_pixels
        self._calls = 0  # predictions in flight: close() frees the backend only once they are done
        self._closing = False
        self._lock = threading.Lock()
        self._spec = preprocessing_of(manifest)
        self._scores = ScoreSpec.from_manifest(manifest)
        batch = manifest["batch"]
        self._static = batch["mode"] == "static"
        self._chunk = batch["size"] if self._static else batch["max"]
        self._map_shape = tuple(manifest["outputs"]["anomaly_map"]["shape"][1:])

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        backend: str = "auto",
        device: str | None = None,
        threads: int | None = None,
        verify: bool = True,
        trusted_keys: Sequence | None = None,
        max_pixels: int | None = None,
    ) -> Detector:
        """Load an artifact folder, refusing anything that does not match its manifest.

        verify: check the manifest's digest and every file's sha256 first. trusted_keys: Ed25519 public keys
        (PEM paths or bytes); the artifact must be signed by one of them. max_pixels: refuse image files
        larger than this, from their header (default $EDGEIAD_MAX_PIXELS or 8192²).
        """
        folder = _artifact_folder(path)
        manifest = _load_manifest(folder, verify=verify, trusted_keys=trusted_keys)
        constants = _load_stats(folder, manifest)
        choice = choose_backend(manifest, folder, backend)
        created = create_backend(choice, folder, manifest, constants, device, threads)
        return cls(folder, manifest, created, max_pixels)

    @property
    def manifest(self) -> dict:
        """A copy of the artifact's manifest."""
        return copy.deepcopy(self._manifest)

    @property
    def backend_name(self) -> str:
        """'onnxruntime', 'openvino', 'tensorrt' (or 'triton' for a RemoteDetector)."""
        return self._live().name

    @property
    def backend_info(self) -> dict:
        """What the backend actually runs with (providers, device, effective precision hint, versions)."""
        return dict(self._live().info)

    @property
    def input_size(self) -> tuple[int, int]:
        """The model's input (height, width)."""
        return self._spec.height, self._spec.width

    def _live(self) -> Backend:
        backend = self._backend
        if backend is None or self._closing:
            raise EdgeiadError(f"the detector for {self._label} is closed: load it again")
        return backend

    @contextmanager
    def _in_use(self) -> Iterator[Backend]:
        """Hold the backend for one call; a close() meanwhile waits for the call to finish before freeing it."""
        with self._lock:
            backend = self._live()
            self._calls += 1
        try:
            yield backend
        finally:
            with self._lock:
                self._calls -= 1
                release = self._closing and self._calls == 0 and self._backend is not None
                if release:
                    backend, self._backend = self._backend, None
            if release:
                backend.close()

    def predict(self, image: ImageInput, color_order: str | None = None) -> Result:
        """Score one image (path or HxW / HxWx1 / HxWx3 array in `color_order`, default BGR)."""
        return self.predict_batch([image], color_order=color_order)[0]

    def predict_batch(self, images: Sequence[ImageInput], color_order: str | None = None) -> list[Result]:
        """Score several images, batched as the artifact allows; every image is validated before any inference."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)  # an NxHxWxC stack is a batch of HxWxC frames
        if not isinstance(images, (list, tuple)):
            raise DataError(f"images is a {type(images).__name__}: pass a list of arrays or paths")
        self._live()
        if not images:
            return []
        order = self._color_order(color_order)
        tensors, sizes, pre_ms = [], [], []
        for index, image in enumerate(images):
            start = perf_counter()
            rgb = self._to_rgb(image, order, f"image {index}" if len(images) > 1 else "image")
            sizes.append(rgb.shape[:2])
            tensors.append(self._prepare(rgb))
            del rgb  # large frames: keep only the small model input alive
            pre_ms.append(_ms(start))
        with self._in_use() as backend:
            maps, scores, infer_ms = self._run_prepared(backend, tensors)
        return [self._result(maps[i], float(scores[i]), sizes[i], pre_ms[i], infer_ms[i]) for i in range(len(images))]

    def _prepare(self, rgb: np.ndarray) -> np.ndarray:
        """What the model is fed for one RGB frame: its preprocessed 3xHxW float32 tensor."""
        return preprocess(rgb, self._spec)

    def _run_prepared(self, backend: Backend, tensors: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[float]]:
        return self._infer(backend, np.stack(tensors))

    def infer(self, batch: np.ndarray, check_finite: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs for an already preprocessed Nx3xHxW float32 batch: (NxHxW maps at model size, N scores).

        check_finite=False passes NaN/inf outputs on (a server whose clients' runtime refuses them) instead of raising.
        """
        batch = np.asarray(batch)
        expected = (3, *self.input_size)
        if batch.ndim != 4 or batch.shape[1:] != expected or batch.dtype != np.float32:
            want = "x".join(map(str, expected))
            raise DataError(f"batch is {batch.dtype} {batch.shape}: pass a preprocessed float32 Nx{want} array")
        if len(batch) == 0:
            return np.zeros((0, *expected[1:]), np.float32), np.zeros(0, np.float32)
        with self._in_use() as backend:
            maps, scores, _ = self._infer(backend, np.ascontiguousarray(batch), check_finite)
        return maps, scores

    def _color_order(self, color_order: str | None) -> str:
        order = self.default_color_order if color_order is None else color_order
        if not isinstance(order, str) or order.upper() not in COLOR_ORDERS:
            raise DataError(f"color_order is {order!r}: use 'RGB' or 'BGR' (the order of the array's channels)")
        return order.upper()

    def _to_rgb(self, image: ImageInput, order: str, source: str) -> np.ndarray:
        try:
            if isinstance(image, (str, os.PathLike)):
                return read_image(image, self._max_pixels)
            if isinstance(image, np.ndarray) and image.dtype != object and not image.flags.c_contiguous:
                image = np.ascontiguousarray(image)  # views, flips and crops become one unit-stride block
            return to_rgb_uint8(image, source=source, color_order=order)
        except (TypeError, OverflowError) as exc:
            first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{source} cannot be converted to an RGB image ({first_line})") from None
        except MemoryError:
            raise DataError(f"{source} is too large for the memory available: downscale it first") from None

    def _infer(
        self, backend: Backend, batch: np.ndarray, check_finite: bool = True
    ) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """Run the batch in chunks the artifact accepts; a static batch pads its last chunk by repetition."""
        total = len(batch)
        limits = [limit for limit in (self._chunk, backend.max_batch) if limit]
        step = self._chunk if self._static else min(limits, default=total)
        maps, scores, times = [], [], []
        for begin in range(0, total, step):
            part = batch[begin : begin + step]
            real = len(part)
            if self._static and real < step:
                part = np.concatenate([part, np.repeat(part[-1:], step - real, axis=0)])
            start = perf_counter()
            out = backend.run({"image": part})
            elapsed = _ms(start)
            anomaly_map, pred_score = self._check_outputs(out, len(part))
            if check_finite:
                _check_finite(anomaly_map[:real], pred_score[:real], begin)
            maps.append(anomaly_map[:real, 0])
            scores.append(pred_score[:real])
            times += [elapsed / real] * real  # each image is charged its share of the chunk
        return np.concatenate(maps), np.concatenate(scores), times

    def _check_outputs(self, out: dict[str, np.ndarray], count: int) -> tuple[np.ndarray, np.ndarray]:
        anomaly_map, pred_score = out["anomaly_map"], out["pred_score"]
        if anomaly_map.shape != (count, *self._map_shape):
            raise ArtifactError(
                f"the model returned anomaly_map {anomaly_map.shape}, the manifest promises "
                f"{(count, *self._map_shape)}: re-export the artifact"
            )
        if pred_score.size != count:
            raise ArtifactError(f"the model returned pred_score {pred_score.shape} for {count} images: re-export")
        return anomaly_map, pred_score.reshape(count)

    def _result(
        self, small_map: np.ndarray, raw_score: float, size: tuple[int, int], pre: float, infer: float
    ) -> Result:
        start = perf_counter()
        try:
            raw_map = resize_map(small_map, *size)
            anomaly_map = self._scores.map(raw_map)
            mask = self._scores.mask(raw_map)
        except MemoryError:
            raise DataError(f"a {size[0]}x{size[1]} anomaly map does not fit in memory: downscale the image") from None
        return Result(
            score=self._scores.score(raw_score),
            raw_score=raw_score,
            is_anomalous=self._scores.is_anomalous(raw_score),
            anomaly_map=anomaly_map,
            raw_map=raw_map,
            mask=mask,
            timings={"preprocess_ms": pre, "inference_ms": infer, "postprocess_ms": _ms(start)},
        )

    def close(self) -> None:
        """Release the backend (after the predictions still running); further predictions raise."""
        with self._lock:
            self._closing = True
            release = self._calls == 0 and self._backend is not None
            backend, self._backend = (self._backend, None) if release else (None, self._backend)
        if backend is not None:
            backend.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self._backend.name if self._backend is not None and not self._closing else "closed"
        return f"Detector({str(self.folder)!r}, model={self._manifest['model']['name']!r}, backend={state!r})"
