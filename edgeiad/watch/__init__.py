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
(0.5 s doubling to 30 s, reset by the next good frame); every attempt is a `reconnect` JSON event. A
stream silent for `stall_timeout` seconds (default 10) gets a `stalled` event and, through OpenCV's
open/read timeouts, a reconnect. A finite source that ends stops the loop cleanly; a folder's file that
cannot be decoded is a `skipped` event (counted in the summary) and the rest is still scored.
SIGINT/SIGTERM are handled from the start (the reader thread opens the source, so a blocking open never
blocks them) and set a stop event: the reader thread is joined (a second Ctrl-C stops waiting), files are
closed, a `summary` JSON line is written, and the command exits 0. An output that cannot be written
(disk full, read-only) is an `output_error` event and a clean stop with the summary on stdout; the
command then exits 2 with one `error:` line. A NaN/inf score is a `frame_error`, never a pass.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from time import perf_counter

from edgeiad_runtime.errors import ConfigError, DataError, NonFiniteScoreError, OutputError, ServerError

from .outputs import Evidence, JsonlSink, MapScaler, _Reservoir, heat_overlay
from .reader import Backoff, Frame, FrameReader, FrameSlot
from .sources import (
    COLOR_ORDERS,
    DEFAULT_VIDEO_FPS,
    JOIN_TIMEOUT_S,
    STALL_TIMEOUT_S,
    CaptureSource,
    FolderSource,
    FrameSource,
    ImageFileSource,
    SourceUnavailable,
    _now_iso,
    open_source,
)


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
        stall_timeout: float = STALL_TIMEOUT_S,
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
        self.stall_timeout = check_stall_timeout(stall_timeout)
        self.slot = FrameSlot(keep_latest=source.live or realtime)
        self.reader: FrameReader | None = None
        self.stopped_by: str | None = None
        self.output_error: str | None = None
        self._hurry = threading.Event()  # a second Ctrl-C: stop waiting for a stuck reader
        self.counts = {"frames": 0, "anomalous": 0, "frame_errors": 0}
        self.latencies = _Reservoir()
        self.sink.on_error = self._output_failed
        if isinstance(source, FolderSource) and source.on_event is None:
            source.on_event = self.sink.event

    # signals -------------------------------------------------------------------------------------------
    def _install_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, _frame) -> None:
            if self.stop.is_set():
                self._hurry.set()  # never raise here: the summary must still be written
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

    def _output_failed(self, message: str) -> None:
        """An output (jsonl, evidence, video) cannot be written: report it once and stop cleanly."""
        if self.output_error is None:
            self.output_error = message
            self.stopped_by = self.stopped_by or "output_error"
            self.sink.event({"event": "output_error", "error": message, "time": _now_iso()})
        self.stop.set()

    # run -----------------------------------------------------------------------------------------------
    def run(self, install_signals: bool = True, restore_signals: bool = True) -> dict:
        """Score frames until the end; returns (and writes) the summary line.

        Signals are handled from the start and every source is opened by the reader thread, so a source
        that blocks while opening (a FIFO without writer, a dead stream) never blocks Ctrl-C.
        restore_signals=False keeps the handlers afterwards: a CLI that exits next must not die of a late
        second Ctrl-C with the default handler.
        """
        previous = self._install_signals() if install_signals else {}
        started = perf_counter()
        try:
            if self.evidence is not None and self.evidence.video_fps == DEFAULT_VIDEO_FPS and self.source.fps:
                self.evidence.video_fps = self.source.fps
            pace = (self.source.fps or DEFAULT_VIDEO_FPS) if self.realtime and not self.source.live else None
            self.reader = FrameReader(self.source, self.slot, self.stop, self.sink.event, self.backoff, pace_fps=pace)
            self.reader.start()
            started = perf_counter()
            self._loop(started)
        finally:
            self.stop.set()
            self._shutdown()
            self.summary = self._summary(perf_counter() - started)
            try:
                self.sink.event(self.summary)
            finally:
                self.sink.close()
                if restore_signals:
                    self._restore_signals(previous)
        if self.reader.open_error is not None and not self.source.live and self.counts["frames"] == 0:
            raise self.reader.open_error  # a finite source that cannot open is an error, not a quiet end
        return self.summary

    def _loop(self, started: float) -> None:
        stalled = False
        while not self.stop.is_set():
            item = self.slot.get(0.1)
            if item is None:
                silent = perf_counter() - self.reader.last_frame_at
                if self.source.live and silent > self.stall_timeout and not stalled:
                    stalled = True  # once per stall: the reader's own reconnect follows when read() returns
                    self.sink.event({"event": "stalled", "seconds": round(silent, 1), "source": self.source.name})
                continue
            if item is FrameSlot.END:
                ended = "stop" if self.stop.is_set() else "error" if self.reader.error else "end"
                self.stopped_by = self.stopped_by or ended
                return
            stalled = False
            self._score(item, started)
            if self.max_frames is not None and self.counts["frames"] >= self.max_frames:
                self.stopped_by = self.stopped_by or "max_frames"
                return
        self.stopped_by = self.stopped_by or "stop"

    def _score(self, item: Frame, started: float) -> None:
        begin = perf_counter()
        try:
            result = self.detector.predict(item.image, color_order=self.color_order)
        except (DataError, NonFiniteScoreError, ServerError) as exc:  # a bad frame or a server blip: keep watching
            self.counts["frame_errors"] += 1
            self.sink.event({"event": "frame_error", "frame": item.index, "error": str(exc), "path": item.label})
            return
        done = perf_counter()
        self.counts["frames"] += 1
        latency = (done - begin) * 1000.0
        self.latencies.add(latency)
        flagged = bool(result.is_anomalous)
        self.counts["anomalous"] += flagged
        line = {
            "frame": item.index,
            "time": _now_iso(item.captured),
            "score": None if result.score is None else round(float(result.score), 6),
            "raw_score": float(result.raw_score),
            "is_anomalous": result.is_anomalous,
            "latency_ms": round(latency, 3),
            "age_ms": round((done - item.captured_at) * 1000.0, 3),
            "fps": round(self.counts["frames"] / max(done - started, 1e-9), 3),
            "source": self.source.name,
        }
        if item.label is not None:
            line["path"] = item.label
        self.sink.write(line)
        if flagged and self.evidence is not None and self.evidence.active:
            try:
                self.evidence.record(item, result)
            except OutputError as exc:
                self._output_failed(str(exc))

    def _summary(self, elapsed: float) -> dict:
        frames, reader = self.counts["frames"], self.reader
        summary = {
            "event": "summary",
            **self.counts,
            "skipped": self.source.skipped,
            "dropped": self.slot.dropped,
            "reconnects": reader.reconnects if reader is not None else 0,
            "fps": round(frames / elapsed, 3) if elapsed > 0 and frames else 0.0,
            "latency_ms_p50": self.latencies.percentile(50),
            "latency_ms_p95": self.latencies.percentile(95),
            "read": reader.read_count if reader is not None else 0,
            "stopped_by": self.stopped_by or "error",
            "source": self.source.name,
            "time": _now_iso(),
        }
        if reader is not None and reader.error:
            summary["source_error"] = reader.error
        if self.evidence is not None and self.evidence.active:
            summary["evidence_saved"] = self.evidence.saved
            summary["overlay_video_frames"] = self.evidence.video_frames
        if self.output_error is not None:
            summary["output_error"] = self.output_error
        return summary

    def _shutdown(self) -> None:
        reader = self.reader
        if reader is not None and reader.is_alive():
            deadline = perf_counter() + self.join_timeout
            while reader.is_alive() and perf_counter() < deadline and not self._hurry.is_set():
                reader.join(0.05)  # in slices: a second Ctrl-C ends the wait at once
            if reader.is_alive():
                why = "a second interrupt" if self._hurry.is_set() else f"{self.join_timeout:g} s"
                message = f"reader still busy in open() or read() after {why}: not waiting for it"
                self.sink.event({"event": "warning", "message": message, "time": _now_iso()})
        elif reader is None:
            try:
                self.source.close()
            except Exception:
                pass
        if self.evidence is not None:
            try:
                self.evidence.close()
            except OutputError as exc:
                self._output_failed(str(exc))


def open_remote(server: str, artifact: str | Path, model: str | None, trusted_keys: list | None = None):
    """A RemoteDetector: `artifact` is a served model's name, or a local artifact / repository model folder
    (its manifest is used and its folder name is the model name unless `model` says otherwise)."""
    from edgeiad_runtime import RemoteDetector

    path = Path(artifact)
    if not path.exists():
        return RemoteDetector(server, model or str(artifact), trusted_keys=trusted_keys)
    name = model or (path.parent if path.is_file() else path).resolve().name
    return RemoteDetector(server, name, manifest=path, trusted_keys=trusted_keys)


def check_stall_timeout(seconds: float) -> float:
    """A positive, finite stall timeout in seconds."""
    if not isinstance(seconds, (int, float)) or not 0.1 <= seconds <= 3600:
        raise ConfigError(f"--stall-timeout is {seconds!r}: pass seconds from 0.1 to 3600")
    return float(seconds)


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
    stall_timeout: float = STALL_TIMEOUT_S,
    trusted_keys: list | None = None,
    restore_signals: bool = True,
    server: str | None = None,
    model: str | None = None,
) -> dict:
    """Load `artifact` (or with `server`, its model on that Triton server), score `source`; return the summary."""
    order = check_color_order(color_order)
    check_stall_timeout(stall_timeout)
    if threads is not None and threads < 0:
        raise ConfigError(f"--threads is {threads}: pass 1 or more (0 or nothing: the backend's default)")
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"--max-frames is {max_frames}: pass 1 or more, or leave it out to run until stopped")
    if isinstance(source, FrameSource):
        frame_source = source
    else:
        frame_source = open_source(source, loop=loop, stall_timeout=stall_timeout)
    if server is None:
        from edgeiad_runtime import Detector

        detector = Detector.load(
            artifact, backend=backend, device=device, threads=threads or None, trusted_keys=trusted_keys
        )
    else:
        if backend != "auto" or device is not None or threads:
            raise ConfigError("--backend, --device and --threads set local inference: drop them with --server")
        detector = open_remote(server, artifact, model, trusted_keys)
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
            stall_timeout=stall_timeout,
        ).run(install_signals=install_signals, restore_signals=restore_signals)
    finally:
        if sink is not None:
            sink.close()  # already closed after a run; needed when setting up the run failed
        detector.close()


__all__ = [
    "COLOR_ORDERS",
    "Backoff",
    "CaptureSource",
    "Evidence",
    "FolderSource",
    "Frame",
    "FrameReader",
    "FrameSlot",
    "FrameSource",
    "ImageFileSource",
    "JsonlSink",
    "MapScaler",
    "SourceUnavailable",
    "Watcher",
    "heat_overlay",
    "open_source",
    "watch",
]
