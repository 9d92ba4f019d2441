"""Frame sources for `edgeiad watch`: cameras, streams, video files, folders, single images."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
from edgeiad_runtime.decode import decode_image_file
from edgeiad_runtime.errors import ConfigError, DataError, DataNotFoundError, EdgeiadError
from edgeiad_runtime.preprocess import IMAGE_SUFFIXES

COLOR_ORDERS = ("BGR", "RGB")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv")
DEFAULT_VIDEO_FPS = 10.0  # overlay video / --realtime pacing when the source does not say its rate
LATENCY_SAMPLES = 20_000  # latency percentiles come from a uniform reservoir of this many frames
JOIN_TIMEOUT_S = 5.0  # a camera driver stuck in read() must not keep the process alive on shutdown
STALL_TIMEOUT_S = 10.0  # a live source silent this long is reopened (OpenCV's own default is ~30 s)
URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://", "srt://")

EventSink = Callable[[dict], None]


class SourceUnavailable(DataError):
    """A frame source cannot be opened (or a finite one holds no frame)."""


def _now_iso(epoch: float | None = None) -> str:
    stamp = datetime.now(timezone.utc) if epoch is None else datetime.fromtimestamp(epoch, timezone.utc)
    return stamp.isoformat(timespec="milliseconds")


class _QuietOpenCV:
    """Silence OpenCV's own log lines (failed opens, missing codecs): our errors and events say it once."""

    def __enter__(self) -> None:
        self._previous = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

    def __exit__(self, *exc_info: object) -> None:
        cv2.utils.logging.setLogLevel(self._previous)


# ----------------------------------------------------------------------------------------------- sources


class FrameSource:
    """Where frames come from: open() raises (or returns False) when it cannot, read() → (ok, frame).

    `live` sources (cameras, streams) may drop frames and are reopened with backoff when they fail;
    finite ones (files, folders) end when read() returns (False, None). `label` names the last frame
    read (a folder's file name), `fps` is the source's own rate when known. The reader thread is the
    only caller of open/read/close once the loop runs.
    """

    name: str = "source"
    live: bool = False
    fps: float | None = None
    label: str | None = None
    skipped: int = 0  # files refused as unreadable (folder sources)

    def open(self) -> bool | None:
        raise NotImplementedError

    def read(self) -> tuple[bool, np.ndarray | None]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file; safe to call twice."""


class CaptureSource(FrameSource):
    """cv2.VideoCapture over a camera index ("0"), a stream URL (rtsp://, http://) or a video file."""

    def __init__(self, spec: str, loop: bool = False, stall_timeout: float = STALL_TIMEOUT_S) -> None:
        self.name = spec
        self.live = spec.isdigit() or "://" in spec
        self._target: int | str = int(spec) if spec.isdigit() else spec
        self._loop = loop and not self.live
        self._capture: cv2.VideoCapture | None = None
        self._first: np.ndarray | None = None
        self._params: list[int] = []
        if spec.lower().startswith(URL_SCHEMES):  # FFmpeg's own timeouts; other backends refuse unknown params
            milliseconds = max(int(stall_timeout * 1000), 1)
            self._params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, milliseconds, cv2.CAP_PROP_READ_TIMEOUT_MSEC, milliseconds]

    def open(self) -> bool:
        self.close()
        with _QuietOpenCV():
            if self._params:
                capture = cv2.VideoCapture(self._target, cv2.CAP_ANY, self._params)
            else:
                capture = cv2.VideoCapture(self._target)
            if not capture.isOpened():
                capture.release()
                if isinstance(self._target, int):
                    hint = "check the device index, the cable, and that no other process holds the camera"
                elif self.live:
                    hint = "check the URL, the credentials and the network"
                else:
                    hint = "the file is not a video or its codec is not supported by this OpenCV build"
                kind = "camera" if isinstance(self._target, int) else "stream" if self.live else "video"
                raise SourceUnavailable(f"cannot open {kind} {self.name}: {hint}")
            if not self.live:  # a file that opens but yields nothing is refused now, not after a silent 0 frames
                ok, frame = capture.read()
                if not ok or frame is None:
                    capture.release()
                    raise SourceUnavailable(
                        f"cannot read a frame from video {self.name}: it is empty, corrupt or uses a codec "
                        "this OpenCV build lacks"
                    )
                self._first = frame
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and math.isfinite(fps) and 0.0 < fps < 1000.0 else None
        self._capture = capture
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self._first is not None:
            frame, self._first = self._first, None
            return True, frame
        if self._capture is None:
            return False, None
        ok, frame = self._capture.read()
        if (not ok or frame is None) and self._loop:
            self.open()  # back to the first frame (reopening is more robust than seeking)
            return self.read()
        return (True, frame) if ok and frame is not None else (False, None)

    def close(self) -> None:
        capture, self._capture, self._first = self._capture, None, None
        if capture is not None:
            capture.release()


class FolderSource(FrameSource):
    """The images of a folder (sorted by name, each once; `loop` starts again at the end).

    A file that cannot be decoded (damaged, truncated, larger than the pixel cap) is skipped with a
    `skipped` event naming it, and counted; the rest of the folder is still scored.
    """

    live = False

    def __init__(
        self,
        folder: str | Path,
        loop: bool = False,
        on_event: EventSink | None = None,
        max_pixels: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.name = str(folder)
        self._loop = loop
        self._files: list[Path] = []
        self._index = 0
        self._unreadable: set[Path] = set()
        self._max_pixels = max_pixels
        self.on_event = on_event

    def open(self) -> bool:
        if not self.folder.is_dir():
            raise DataNotFoundError(f"source folder not found: {self.folder}")
        self._files = sorted(p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise SourceUnavailable(f"no images in {self.folder} (looked for {', '.join(IMAGE_SUFFIXES)})")
        self._index = 0
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        while True:
            if self._index >= len(self._files):
                if not self._loop or len(self._unreadable) == len(self._files):
                    return False, None
                self._index = 0
            path = self._files[self._index]
            self._index += 1
            if path in self._unreadable:
                continue
            try:
                frame = decode_image_file(path, self._max_pixels)
            except (EdgeiadError, OSError, MemoryError, cv2.error) as exc:  # one bad file must not end the folder
                self._skip(path, str(exc) or type(exc).__name__)
                continue
            self.label = path.name
            return True, frame

    def _skip(self, path: Path, reason: str) -> None:
        self._unreadable.add(path)
        self.skipped += 1
        if self.on_event is not None:
            self.on_event({"event": "skipped", "path": str(path), "reason": reason, "time": _now_iso()})


class ImageFileSource(FolderSource):
    """A single image file, scored once (or forever with `loop`)."""

    def __init__(
        self, path: str | Path, loop: bool = False, on_event: EventSink | None = None, max_pixels: int | None = None
    ) -> None:
        super().__init__(Path(path).parent, loop, on_event, max_pixels)
        self.name = str(path)
        self._path = Path(path)

    def open(self) -> bool:
        self._files, self._index = [self._path], 0
        return True


def open_source(
    spec: str,
    loop: bool = False,
    on_event: EventSink | None = None,
    stall_timeout: float = STALL_TIMEOUT_S,
    max_pixels: int | None = None,
) -> FrameSource:
    """Turn --source into a FrameSource: camera index, URL, folder of images, image file or video file."""
    spec = str(spec).strip()
    if not spec:
        raise ConfigError("--source is empty: pass a camera index (0), a video file, an rtsp:// URL or a folder")
    if spec.isdigit() or "://" in spec:
        return CaptureSource(spec, stall_timeout=stall_timeout)
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path, loop=loop, on_event=on_event, max_pixels=max_pixels)
    if not path.exists():
        raise DataNotFoundError(
            f"source not found: {spec} (pass a camera index such as 0, a video file, an rtsp:// or http:// URL, "
            "or a folder of images)"
        )
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFileSource(path, loop=loop, on_event=on_event, max_pixels=max_pixels)
    return CaptureSource(spec, loop=loop, stall_timeout=stall_timeout)


# ----------------------------------------------------------------------------------------- frame hand-off
