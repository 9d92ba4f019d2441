"""`edgeiad watch`: score a camera, stream, video file or folder of images frame by frame, without torch.

Only numpy, OpenCV and `edgeiad_runtime` are imported here, so the loop runs on a runtime-only install.

Two threads share one frame slot:

- the reader thread grabs frames from the source and hands each one to the slot;
- the inference loop (the calling thread) takes the frame in the slot, scores it and writes a JSON line.

Live sources (camera index, rtsp:// / http:// URLs) use latest-frame semantics: the slot holds only the
newest frame, a frame the loop did not take in time is replaced and counted as dropped, and no backlog
ever builds up. Finite sources (video files, folders of images) are processed fully by default: the
reader waits until the loop took the previous frame. `realtime=True` (`--realtime`) plays a finite source
at its own frame rate with live semantics instead, to see what a camera of that rate would drop.

A live source that fails to open or stops delivering frames is reopened with exponential backoff
(0.5 s doubling to 30 s, reset by the next good frame); every attempt is a `reconnect` JSON event.
A finite source that ends stops the loop cleanly. SIGINT/SIGTERM set a stop event: the reader thread is
joined, files are flushed and closed, a `summary` JSON line is written, and the command exits 0.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from time import perf_counter
from typing import IO

import cv2
import numpy as np
from edgeiad_runtime.errors import ConfigError, DataError, DataNotFoundError
from edgeiad_runtime.preprocess import IMAGE_SUFFIXES, to_rgb_uint8

COLOR_ORDERS = ("BGR", "RGB")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv")
DEFAULT_VIDEO_FPS = 10.0  # overlay video / --realtime pacing when the source does not say its rate
LATENCY_SAMPLES = 20_000  # latency percentiles come from a uniform reservoir of this many frames
JOIN_TIMEOUT_S = 5.0  # a camera driver stuck in read() must not keep the process alive on shutdown

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

    def open(self) -> bool | None:
        raise NotImplementedError

    def read(self) -> tuple[bool, np.ndarray | None]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file; safe to call twice."""


class CaptureSource(FrameSource):
    """cv2.VideoCapture over a camera index ("0"), a stream URL (rtsp://, http://) or a video file."""

    def __init__(self, spec: str, loop: bool = False) -> None:
        self.name = spec
        self.live = spec.isdigit() or "://" in spec
        self._target: int | str = int(spec) if spec.isdigit() else spec
        self._loop = loop and not self.live
        self._capture: cv2.VideoCapture | None = None
        self._first: np.ndarray | None = None

    def open(self) -> bool:
        self.close()
        with _QuietOpenCV():
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
    """The images of a folder (sorted by name, each once; `loop` starts again at the end)."""

    live = False

    def __init__(self, folder: str | Path, loop: bool = False, on_event: EventSink | None = None) -> None:
        self.folder = Path(folder)
        self.name = str(folder)
        self._loop = loop
        self._files: list[Path] = []
        self._index = 0
        self._unreadable: set[Path] = set()
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
            with _QuietOpenCV():
                frame = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if frame is not None and frame.size:
                self.label = path.name
                return True, frame
            self._unreadable.add(path)
            if self.on_event is not None:
                self.on_event({"event": "skipped", "path": str(path), "reason": "not a readable image"})


class ImageFileSource(FolderSource):
    """A single image file, scored once (or forever with `loop`)."""

    def __init__(self, path: str | Path, loop: bool = False, on_event: EventSink | None = None) -> None:
        super().__init__(Path(path).parent, loop, on_event)
        self.name = str(path)
        self._path = Path(path)

    def open(self) -> bool:
        self._files, self._index = [self._path], 0
        return True


def open_source(spec: str, loop: bool = False, on_event: EventSink | None = None) -> FrameSource:
    """Turn --source into a FrameSource: camera index, URL, folder of images, image file or video file."""
    spec = str(spec).strip()
    if not spec:
        raise ConfigError("--source is empty: pass a camera index (0), a video file, an rtsp:// URL or a folder")
    if spec.isdigit() or "://" in spec:
        return CaptureSource(spec)
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path, loop=loop, on_event=on_event)
    if not path.exists():
        raise DataNotFoundError(
            f"source not found: {spec} (pass a camera index such as 0, a video file, an rtsp:// or http:// URL, "
            "or a folder of images)"
        )
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFileSource(path, loop=loop, on_event=on_event)
    return CaptureSource(spec, loop=loop)


# ----------------------------------------------------------------------------------------- frame hand-off


@dataclass(frozen=True)
class Frame:
    index: int  # 0-based count of frames read from the source: gaps in the JSON lines are dropped frames
    image: np.ndarray
    captured: float  # epoch seconds
    captured_at: float  # perf_counter() at capture
    label: str | None = None


class FrameSlot:
    """A one-frame hand-off. keep_latest: put() replaces an untaken frame (counted as dropped); otherwise
    put() waits until the loop took the previous one. Either way at most one frame is ever pending."""

    END = object()

    def __init__(self, keep_latest: bool) -> None:
        self.keep_latest = keep_latest
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False
        self.dropped = 0
        self.max_pending = 0

    def put(self, frame: Frame, stop: threading.Event) -> bool:
        with self._cond:
            if self._frame is not None:
                if self.keep_latest:
                    self.dropped += 1
                else:
                    while self._frame is not None and not stop.is_set():
                        self._cond.wait(0.1)
                    if stop.is_set():
                        return False
            self._frame = frame
            self.max_pending = max(self.max_pending, 1)
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> Frame | object | None:
        """The pending frame, FrameSlot.END once closed and empty, or None after `timeout` seconds."""
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout)
            if self._frame is not None:
                frame, self._frame = self._frame, None
                self._cond.notify_all()
                return frame
            return FrameSlot.END if self._closed else None

    @property
    def pending(self) -> int:
        with self._cond:
            return int(self._frame is not None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: base, 2·base, 4·base … capped at ceiling (seconds)."""

    base: float = 0.5
    ceiling: float = 30.0

    def delay(self, attempt: int) -> float:
        return min(self.base * 2.0 ** max(attempt - 1, 0), self.ceiling)


class FrameReader(threading.Thread):
    """Reads the source into the slot; reopens live sources with backoff; closes the slot when it ends."""

    def __init__(
        self,
        source: FrameSource,
        slot: FrameSlot,
        stop: threading.Event,
        emit: EventSink,
        backoff: Backoff,
        opened: bool = False,
        pace_fps: float | None = None,
    ) -> None:
        super().__init__(name="edgeiad-watch-reader", daemon=True)
        self.source, self.slot, self.stop, self.emit, self.backoff = source, slot, stop, emit, backoff
        self._opened = opened
        self._interval = 1.0 / pace_fps if pace_fps else None
        self.read_count = 0
        self.reconnects = 0
        self.error: str | None = None  # why a finite source ended early

    def run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # never die silently: the loop reports it and stops
            self.error = f"reader thread failed: {type(exc).__name__}: {exc}"
        finally:
            try:
                self.source.close()
            except Exception:  # a driver failing to release must not hide the summary
                pass
            self.slot.close()

    def _loop(self) -> None:
        failures, due = 0, perf_counter()
        while not self.stop.is_set():
            if not self._opened:
                reason = self._try_open()
                if reason is not None:
                    if not self.source.live:
                        self.error = reason
                        return
                    failures += 1
                    self._wait(failures, reason)
                    continue
            try:
                ok, image = self.source.read()
            except Exception as exc:
                ok, image, reason = False, None, f"read failed: {type(exc).__name__}: {exc}"
            else:
                reason = "read returned no frame"
            if not ok or image is None:
                if not self.source.live:
                    return  # end of the file or folder: a clean stop
                self.source.close()
                self._opened = False
                failures += 1
                self._wait(failures, reason)
                continue
            failures = 0  # a good frame resets the backoff
            if self._interval is not None:
                due = max(due + self._interval, perf_counter())
                self.stop.wait(max(due - perf_counter(), 0.0))
            frame = Frame(
                self.read_count, image, datetime.now(timezone.utc).timestamp(), perf_counter(), self.source.label
            )
            self.read_count += 1
            if not self.slot.put(frame, self.stop):
                return

    def _try_open(self) -> str | None:
        try:
            opened = self.source.open()
        except Exception as exc:
            return str(exc) or type(exc).__name__
        if opened is False:
            return "open() returned False"
        self._opened = True
        return None

    def _wait(self, attempt: int, reason: str) -> None:
        delay = self.backoff.delay(attempt)
        self.reconnects += 1
        self.emit(
            {
                "event": "reconnect",
                "attempt": attempt,
                "delay_s": round(delay, 3),
                "reason": reason,
                "source": self.source.name,
                "time": _now_iso(),
            }
        )
        self.stop.wait(delay)


# ------------------------------------------------------------------------------------------------ outputs


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
    """Brings an anomaly map to 0..1 for display: the artifact's normalised map (0.5 = pixel threshold)
    when it has one, else the raw map scaled by the calibration range, else by the frame's own range."""

    def __init__(self, manifest: dict | None) -> None:
        manifest = manifest or {}
        thresholds = manifest.get("thresholds") or {}
        norm = manifest.get("normalization") or {}
        self.normalised = thresholds.get("pixel") is not None and norm.get("method") == "minmax_threshold"
        low, high = norm.get("pixel_min"), norm.get("pixel_max")
        self.range = (float(low), float(high)) if low is not None and high is not None and high > low else None

    def __call__(self, result) -> np.ndarray:
        if self.normalised:
            return np.clip(result.anomaly_map, 0.0, 1.0)
        raw = np.asarray(result.raw_map, dtype=np.float32)
        low, high = self.range if self.range is not None else (float(raw.min()), float(raw.max()))
        return np.clip((raw - low) / max(high - low, 1e-12), 0.0, 1.0)


def heat_overlay(bgr: np.ndarray, unit_map: np.ndarray) -> np.ndarray:
    """JET colour map of a 0..1 map blended 50/50 over a BGR frame of the same size."""
    heat = cv2.applyColorMap(np.rint(unit_map * 255.0).astype(np.uint8), cv2.COLORMAP_JET)
    if heat.shape[:2] != bgr.shape[:2]:
        heat = cv2.resize(heat, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(bgr, 0.5, heat, 0.5, 0)


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


class Watcher:
    """Runs a detector over a FrameSource until it ends, `max_frames` are scored, or `stop` is set."""

    def __init__(
        self,
        detector,
        source: FrameSource,
        sink: JsonlSink | None = None,
        evidence: Evidence | None = None,
        max_frames: int | None = None,
        color_order: str = "BGR",
        realtime: bool = False,
        backoff: Backoff | None = None,
        stop: threading.Event | None = None,
        join_timeout: float = JOIN_TIMEOUT_S,
    ) -> None:
        self.color_order = check_color_order(color_order)
        if max_frames is not None and max_frames < 1:
            raise ConfigError(f"--max-frames is {max_frames}: pass 1 or more, or leave it out to run until stopped")
        self.detector, self.source = detector, source
        self.sink = sink or JsonlSink()
        self.evidence = evidence
        self.max_frames = max_frames
        self.realtime = realtime
        self.backoff = backoff or Backoff()
        self.stop = stop or threading.Event()
        self.join_timeout = join_timeout
        self.slot = FrameSlot(keep_latest=source.live or realtime)
        self.reader: FrameReader | None = None
        self.stopped_by: str | None = None
        if isinstance(source, FolderSource) and source.on_event is None:
            source.on_event = self.sink.event

    # signals -------------------------------------------------------------------------------------------
    def _install_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, _frame) -> None:
            if self.stop.is_set() and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for the reader
            self.stopped_by = self.stopped_by or signal.Signals(signum).name
            self.stop.set()

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        return previous

    @staticmethod
    def _restore_signals(previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    # run -----------------------------------------------------------------------------------------------
    def run(self, install_signals: bool = True) -> dict:
        """Score frames until the end; returns (and writes) the summary line."""
        opened = False
        if not self.source.live:
            self.source.open()  # a finite source that cannot open is an error now, not a reconnect loop
            opened = True
        previous = self._install_signals() if install_signals else {}
        frames = anomalous = 0
        latencies = _Reservoir()
        started = perf_counter()
        try:
            if self.evidence is not None and self.evidence.video_fps == DEFAULT_VIDEO_FPS and self.source.fps:
                self.evidence.video_fps = self.source.fps
            pace = (self.source.fps or DEFAULT_VIDEO_FPS) if self.realtime and not self.source.live else None
            self.reader = FrameReader(
                self.source, self.slot, self.stop, self.sink.event, self.backoff, opened=opened, pace_fps=pace
            )
            self.reader.start()
            started = perf_counter()
            while not self.stop.is_set():
                item = self.slot.get(0.1)
                if item is None:
                    continue
                if item is FrameSlot.END:
                    ended = "stop" if self.stop.is_set() else "error" if self.reader.error else "end"
                    self.stopped_by = self.stopped_by or ended
                    break
                begin = perf_counter()
                try:
                    result = self.detector.predict(item.image, color_order=self.color_order)
                except DataError as exc:  # one bad frame (wrong shape, NaN) must not stop a camera
                    self.sink.event({"event": "frame_error", "frame": item.index, "error": str(exc)})
                    continue
                done = perf_counter()
                frames += 1
                latency = (done - begin) * 1000.0
                latencies.add(latency)
                flagged = bool(result.is_anomalous)
                anomalous += flagged
                line = {
                    "frame": item.index,
                    "time": _now_iso(item.captured),
                    "score": None if result.score is None else round(float(result.score), 6),
                    "raw_score": float(result.raw_score),
                    "is_anomalous": result.is_anomalous,
                    "latency_ms": round(latency, 3),
                    "age_ms": round((done - item.captured_at) * 1000.0, 3),
                    "fps": round(frames / max(done - started, 1e-9), 3),
                    "source": self.source.name,
                }
                if item.label is not None:
                    line["path"] = item.label
                self.sink.write(line)
                if flagged and self.evidence is not None and self.evidence.active:
                    self.evidence.record(item, result)
                if self.max_frames is not None and frames >= self.max_frames:
                    self.stopped_by = self.stopped_by or "max_frames"
                    break
            else:
                self.stopped_by = self.stopped_by or "stop"
        finally:
            self.stop.set()
            self._shutdown()
            elapsed = perf_counter() - started
            summary = {
                "event": "summary",
                "frames": frames,
                "anomalous": anomalous,
                "dropped": self.slot.dropped,
                "reconnects": self.reader.reconnects if self.reader is not None else 0,
                "fps": round(frames / elapsed, 3) if elapsed > 0 and frames else 0.0,
                "latency_ms_p50": latencies.percentile(50),
                "latency_ms_p95": latencies.percentile(95),
                "read": self.reader.read_count if self.reader is not None else 0,
                "stopped_by": self.stopped_by or "error",
                "source": self.source.name,
                "time": _now_iso(),
            }
            if self.reader is not None and self.reader.error:
                summary["source_error"] = self.reader.error
            if self.evidence is not None and self.evidence.active:
                summary["evidence_saved"] = self.evidence.saved
                summary["overlay_video_frames"] = self.evidence.video_frames
            self.summary = summary
            try:
                self.sink.event(summary)
            finally:
                self.sink.close()
                self._restore_signals(previous)
        return summary

    def _shutdown(self) -> None:
        reader = self.reader
        if reader is not None and reader.is_alive():
            reader.join(self.join_timeout)
            if reader.is_alive():
                self.sink.event(
                    {
                        "event": "warning",
                        "message": f"reader still blocked in read() after {self.join_timeout:g} s: not waiting",
                        "time": _now_iso(),
                    }
                )
        elif reader is None:
            try:
                self.source.close()
            except Exception:
                pass
        if self.evidence is not None:
            self.evidence.close()


def check_color_order(color_order: str) -> str:
    order = str(color_order).upper()
    if order not in COLOR_ORDERS:
        raise ConfigError(f"--color-order {color_order!r}: use BGR (OpenCV cameras and files) or RGB")
    return order


def watch(
    artifact: str | Path,
    source: str | FrameSource,
    jsonl: str | Path | None = None,
    save_anomalies: str | Path | None = None,
    overlay_video: str | Path | None = None,
    backend: str = "auto",
    device: str | None = None,
    threads: int | None = None,
    max_frames: int | None = None,
    color_order: str = "BGR",
    realtime: bool = False,
    loop: bool = False,
    backoff: Backoff | None = None,
    stop: threading.Event | None = None,
    install_signals: bool = True,
) -> dict:
    """Load `artifact`, score `source` until it ends or a signal arrives; return the summary dict."""
    from edgeiad_runtime import Detector

    order = check_color_order(color_order)
    if threads is not None and threads < 0:
        raise ConfigError(f"--threads is {threads}: pass 1 or more (0 or nothing: the backend's default)")
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"--max-frames is {max_frames}: pass 1 or more, or leave it out to run until stopped")
    frame_source = source if isinstance(source, FrameSource) else open_source(source, loop=loop)
    detector = Detector.load(artifact, backend=backend, device=device, threads=threads or None)
    sink = None
    try:
        evidence = Evidence(save_anomalies, overlay_video, MapScaler(detector.manifest), order)
        sink = JsonlSink(jsonl)
        return Watcher(
            detector,
            frame_source,
            sink=sink,
            evidence=evidence,
            max_frames=max_frames,
            color_order=order,
            realtime=realtime,
            backoff=backoff,
            stop=stop,
        ).run(install_signals=install_signals)
    finally:
        if sink is not None:
            sink.close()  # already closed after a run; needed when setting up the run failed
        detector.close()
