"""What `edgeiad watch` writes: JSON lines, evidence images, overlay video, latency statistics."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

import cv2
import numpy as np
from edgeiad_runtime.errors import ConfigError, DataError, OutputError
from edgeiad_runtime.postprocess import heat_overlay
from edgeiad_runtime.preprocess import to_rgb_uint8

from .reader import Frame
from .sources import DEFAULT_VIDEO_FPS, LATENCY_SAMPLES, VIDEO_SUFFIXES


def _clean(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON: NaN/inf become null
    return value


class JsonlSink:
    """JSON lines to stdout, or appended to a file (events are then also echoed to stdout); thread-safe.

    A write the disk refuses (full, read-only, I/O error) never leaves a cut line: the file is truncated
    back to its last complete line and closed, `error` says why, and `on_error` is called once, so the
    watcher can stop cleanly; later events (the summary) still reach stdout.
    """

    def __init__(self, path: str | Path | None = None, stream: IO[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None  # raw descriptor: a failed write leaves no buffered half line to flush later
        self._stream = stream
        self.path = Path(path) if path is not None else None
        self.error: str | None = None
        self.on_error = None  # called with the message when an output fails
        if path is not None:
            path = Path(path)
            if path.is_dir():
                raise DataError(f"--jsonl {path} is a folder: pass a file name")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # closed in close()
            except OSError as exc:
                raise DataError(f"cannot write --jsonl {path} ({exc.strerror or exc})") from None

    def _out(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stdout

    def write(self, record: dict, event: bool = False) -> None:
        line = json.dumps({k: _clean(v) for k, v in record.items()}) + "\n"
        failed = None
        with self._lock:
            if self._fd is not None:
                failed = self._append(line.encode("utf-8"))
            if self._fd is None or event:
                failed = self._echo(line) or failed
        if failed and self.on_error is not None:
            self.on_error(failed)

    def _append(self, data: bytes) -> str | None:
        descriptor, position = self._fd, None
        try:
            position = os.lseek(descriptor, 0, os.SEEK_END)
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            return None
        except OSError as exc:
            self._fd = None
            self.error = f"cannot write --jsonl {self.path} ({exc.strerror or exc}): free disk space or move it"
            if position is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(descriptor, position)  # shrinking works on a full disk: no half line is left
            os.close(descriptor)
            return self.error

    def _echo(self, line: str) -> str | None:
        try:
            self._out().write(line)
            self._out().flush()
        except BrokenPipeError:  # stdout piped into `head`: keep scoring, stop echoing
            pass
        except OSError as exc:  # stdout redirected to a full disk
            if self.error is None:
                self.error = f"cannot write to stdout ({exc.strerror or exc}): free disk space"
                return self.error
        return None

    def event(self, record: dict) -> None:
        self.write(record, event=True)

    def close(self) -> None:
        with self._lock:
            descriptor, self._fd = self._fd, None
            if descriptor is not None:
                os.close(descriptor)


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

    def record(self, frame: Frame, result, stream: int | None = None) -> None:
        """Save the frame and its overlay (and add the overlay to the video); `stream` prefixes the file names
        when several sources are watched, so two cameras' frames of the same number never overwrite each other."""
        bgr = cv2.cvtColor(to_rgb_uint8(frame.image, source="frame", color_order=self.color_order), cv2.COLOR_RGB2BGR)
        overlay = heat_overlay(bgr, self.scaler(result))
        if self.folder is not None:
            score = result.score if result.score is not None else result.raw_score
            stamp = datetime.fromtimestamp(frame.captured, timezone.utc).strftime("%Y%m%dT%H%M%S.%f")[:-3]
            camera = "" if stream is None else f"_stream{stream}"
            stem = f"{stamp}Z{camera}_frame{frame.index:06d}_score{score:.3f}"
            for name, image in ((f"{stem}.png", bgr), (f"{stem}_overlay.png", overlay)):
                if not cv2.imwrite(str(self.folder / name), image):
                    (self.folder / name).unlink(missing_ok=True)  # a cut PNG must not look like evidence
                    raise OutputError(f"cannot write {self.folder / name}: free disk space or check permissions")
            self.saved += 1
        if self.video is not None:
            self._write_video(overlay)

    def _write_video(self, overlay: np.ndarray) -> None:
        if self._writer is None:
            self._size = (overlay.shape[1], overlay.shape[0])
            self._writer = cv2.VideoWriter(str(self.video), cv2.VideoWriter_fourcc(*"mp4v"), self.video_fps, self._size)
            if not self._writer.isOpened():
                self._writer = None
                raise OutputError(f"cannot write --overlay-video {self.video}: OpenCV has no mp4v encoder here")
        if (overlay.shape[1], overlay.shape[0]) != self._size:
            overlay = cv2.resize(overlay, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(overlay)
        self.video_frames += 1

    def close(self) -> None:
        """Finish the video and check it: OpenCV's writer reports no write error, so read it back."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        writer.release()
        capture = cv2.VideoCapture(str(self.video))
        readable = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
        capture.release()
        if readable != self.video_frames:
            written, self.video_frames = self.video_frames, readable
            raise OutputError(
                f"--overlay-video {self.video} is damaged ({readable} of {written} frames readable): "
                "free disk space or write it elsewhere"
            )


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
