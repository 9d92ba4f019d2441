"""What `edgeiad watch` writes: JSON lines, evidence images, overlay video, latency statistics."""

from __future__ import annotations

import json
import math
import random
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

import cv2
import numpy as np
from edgeiad_runtime.errors import ConfigError, DataError
from edgeiad_runtime.postprocess import heat_overlay
from edgeiad_runtime.preprocess import to_rgb_uint8

from .reader import Frame
from .sources import DEFAULT_VIDEO_FPS, LATENCY_SAMPLES, VIDEO_SUFFIXES


def _clean(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON: NaN/inf become null
    return value


class JsonlSink:
    """JSON lines to stdout, or appended to a file (events are then also echoed to stdout); thread-safe."""

    def __init__(self, path: str | Path | None = None, stream: IO[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._stream = stream
        if path is not None:
            path = Path(path)
            if path.is_dir():
                raise DataError(f"--jsonl {path} is a folder: pass a file name")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(path, "a", buffering=1, encoding="utf-8")  # closed in close()
            except OSError as exc:
                raise DataError(f"cannot write --jsonl {path} ({exc.strerror or exc})") from None

    def _out(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stdout

    def write(self, record: dict, event: bool = False) -> None:
        line = json.dumps({k: _clean(v) for k, v in record.items()})
        with self._lock:
            targets = [self._file] if self._file is not None else [self._out()]
            if event and self._file is not None:
                targets.append(self._out())
            for target in targets:
                try:
                    target.write(line + "\n")
                    target.flush()
                except BrokenPipeError:  # stdout piped into `head`: keep scoring, stop echoing
                    pass

    def event(self, record: dict) -> None:
        self.write(record, event=True)

    def close(self) -> None:
        with self._lock:
            file, self._file = self._file, None
            if file is not None:
                file.flush()
                file.close()


class MapScaler:
    """Brings an anomaly map to 0..1 for display: the artifact's normalised map (0.5 = pixel threshold if centred)
    when it has one, else the raw map scaled by the calibration range, else by the frame's own range."""

    def __init__(self, manifest: dict | None) -> None:
        manifest = manifest or {}
        thresholds = manifest.get("thresholds") or {}
        norm = manifest.get("normalization") or {}
        self.normalised = thresholds.get("pixel") is not None and norm.get("method") in ("minmax_threshold", "minmax")
        low, high = norm.get("pixel_min"), norm.get("pixel_max")
        self.range = (float(low), float(high)) if low is not None and high is not None and high > low else None

    def __call__(self, result) -> np.ndarray:
        if self.normalised:
            return np.clip(result.anomaly_map, 0.0, 1.0)
        raw = np.asarray(result.raw_map, dtype=np.float32)
        low, high = self.range if self.range is not None else (float(raw.min()), float(raw.max()))
        return np.clip((raw - low) / max(high - low, 1e-12), 0.0, 1.0)


class Evidence:
    """Anomalous frames as PNGs (frame + overlay) and/or an mp4 of their overlays."""

    def __init__(
        self,
        folder: str | Path | None,
        video: str | Path | None,
        scaler: MapScaler,
        color_order: str = "BGR",
        video_fps: float | None = None,
    ) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.video = Path(video) if video is not None else None
        self.scaler, self.color_order = scaler, color_order
        self.video_fps = video_fps or DEFAULT_VIDEO_FPS
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self.saved = 0
        self.video_frames = 0
        if self.folder is not None:
            if self.folder.exists() and not self.folder.is_dir():
                raise DataError(f"--save-anomalies {self.folder} is a file: pass a folder")
            self._mkdir(self.folder, "--save-anomalies")
        if self.video is not None:
            if self.video.suffix.lower() not in VIDEO_SUFFIXES:
                raise ConfigError(
                    f"--overlay-video {self.video}: use one of {', '.join(VIDEO_SUFFIXES)} (written as mp4v)"
                )
            if self.video.is_dir():
                raise DataError(f"--overlay-video {self.video} is a folder: pass a file name")
            self._mkdir(self.video.parent, "--overlay-video")

    @staticmethod
    def _mkdir(folder: Path, option: str) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create {option} folder {folder} ({exc.strerror or exc})") from None

    @property
    def active(self) -> bool:
        return self.folder is not None or self.video is not None

    def record(self, frame: Frame, result) -> None:
        bgr = cv2.cvtColor(to_rgb_uint8(frame.image, source="frame", color_order=self.color_order), cv2.COLOR_RGB2BGR)
        overlay = heat_overlay(bgr, self.scaler(result))
        if self.folder is not None:
            score = result.score if result.score is not None else result.raw_score
            stamp = datetime.fromtimestamp(frame.captured, timezone.utc).strftime("%Y%m%dT%H%M%S.%f")[:-3]
            stem = f"{stamp}Z_frame{frame.index:06d}_score{score:.3f}"
            for name, image in ((f"{stem}.png", bgr), (f"{stem}_overlay.png", overlay)):
                if not cv2.imwrite(str(self.folder / name), image):
                    raise DataError(f"cannot write {self.folder / name}: check free space and permissions")
            self.saved += 1
        if self.video is not None:
            self._write_video(overlay)

    def _write_video(self, overlay: np.ndarray) -> None:
        if self._writer is None:
            self._size = (overlay.shape[1], overlay.shape[0])
            self._writer = cv2.VideoWriter(str(self.video), cv2.VideoWriter_fourcc(*"mp4v"), self.video_fps, self._size)
            if not self._writer.isOpened():
                self._writer = None
                raise DataError(f"cannot write --overlay-video {self.video}: OpenCV has no mp4v encoder here")
        if (overlay.shape[1], overlay.shape[0]) != self._size:
            overlay = cv2.resize(overlay, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(overlay)
        self.video_frames += 1

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()


# ---------------------------------------------------------------------------------------------- the loop


class _Reservoir:
    """Uniform sample of at most `size` values (percentiles over an appliance's whole uptime in bounded memory)."""

    def __init__(self, size: int = LATENCY_SAMPLES) -> None:
        self.size, self.seen, self.values = size, 0, []
        self._rng = random.Random(0)

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
        else:
            slot = self._rng.randrange(self.seen)
            if slot < self.size:
                self.values[slot] = value

    def percentile(self, q: float) -> float | None:
        return round(float(np.percentile(self.values, q)), 3) if self.values else None
