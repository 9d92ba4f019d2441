"""`edgeiad watch`: score a camera, stream, video file or folder of images frame by frame, without torch.

Only numpy, OpenCV and `edgeiad_runtime` are imported here, so the loop runs on a runtime-only install.

Two threads share one frame slot:

- the reader thread grabs frames from the source and hands each one to the slot;
- the inference loop (the calling thread) takes the frame in the slot, scores it and writes a JSON line.

With several sources (`--source` repeated) each has its own reader thread and slot; the loop takes the newest
frame of each in one batched call per round (see Watcher).

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
from collections.abc import Sequence
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

DEFAULT_BATCH_WAIT_MS = 10.0  # several sources: how long a frame may wait for the other sources' frames


def check_batch_wait(milliseconds: float) -> float:
    """A batch wait in milliseconds, 0 (take what is there) to 1000."""
    if not isinstance(milliseconds, (int, float)) or not 0 <= milliseconds <= 1000:
        raise ConfigError(f"--batch-wait-ms is {milliseconds!r}: pass milliseconds from 0 to 1000")
    return float(milliseconds)


def check_max_batch(max_batch: int | None, sources: int) -> int:
    """Frames per scoring call: 1 .. the number of sources (None: all of them)."""
    if max_batch is None:
        return sources
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(f"--max-batch is {max_batch!r}: pass 1 (one frame per call) or more")
    return min(max_batch, sources)


class _Stream:
    """One source of a Watcher with its own slot, reader thread, stall flag and counts."""

    def __init__(self, number: int, source: FrameSource, keep_latest: bool, wake: threading.Event) -> None:
        self.number, self.source = number, source
        self.slot = FrameSlot(keep_latest=keep_latest, wake=wake)
        self.reader: FrameReader | None = None
        self.ended = False
        self.stalled = False
        self.counts = {"frames": 0, "anomalous": 0, "frame_errors": 0}


class Watcher:
    """Runs a detector over one FrameSource, or several, until they end, `max_frames` are scored, or `stop` is set.

    With several sources (cameras on one appliance) each has its own reader thread and one-frame slot, and the
    loop scores the newest frame of every source that has one in a single batched call (`predict_batch`), at most
    `max_batch` frames, starting after the source scored last (so at 1 the sources take turns). Batching lowers
    the cost per frame only where a call has fixed costs (PaDiM on a CPU, GPUs); see docs/speed.md. No camera
    waits behind another's backlog: each slot holds only its newest frame. After the first frame of a
    round arrives, the loop waits at most `batch_wait_ms` for the other sources' frames (the latency budget a
    frame may spend waiting for company); a source that has nothing by then is left for the next round. Lines
    carry `stream` (the source's position, from 0) and `source`; the summary adds one entry per stream. A
    frame that fails inside a batch (corrupt, NaN score) is re-scored on its own, so the other cameras' frames
    of that round are still scored and only the bad one is a `frame_error`.
    """

    def __init__(
        self,
        detector,
        source: FrameSource | Sequence[FrameSource],
        sink: JsonlSink | None = None,
        evidence: Evidence | None = None,
        max_frames: int | None = None,
        color_order: str = "BGR",
        realtime: bool = False,
        backoff: Backoff | None = None,
        stop: threading.Event | None = None,
        join_timeout: float = JOIN_TIMEOUT_S,
        stall_timeout: float = STALL_TIMEOUT_S,
        batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
        max_batch: int | None = None,
    ) -> None:
        self.color_order = check_color_order(color_order)
        if max_frames is not None and max_frames < 1:
            raise ConfigError(f"--max-frames is {max_frames}: pass 1 or more, or leave it out to run until stopped")
        sources = [source] if isinstance(source, FrameSource) else list(source)
        if not sources:
            raise ConfigError("no --source given: pass at least one camera index, stream URL, video file or folder")
        self.detector = detector
        self.sink = sink or JsonlSink()
        self.evidence = evidence
        self.max_frames = max_frames
        self.realtime = realtime
        self.backoff = backoff or Backoff()
        self.stop = stop or threading.Event()
        self.join_timeout = join_timeout
        self.stall_timeout = check_stall_timeout(stall_timeout)
        self.batch_wait = check_batch_wait(batch_wait_ms) / 1000.0
        self._wake = threading.Event()
        self.streams = [_Stream(i, s, s.live or realtime, self._wake) for i, s in enumerate(sources)]
        self.multi = len(self.streams) > 1
        self.max_batch = check_max_batch(max_batch, len(self.streams))
        self._next = 0  # round-robin start: with max_batch below the source count no camera is always last
        self.source, self.slot = self.streams[0].source, self.streams[0].slot  # the one source of a single watch
        self.stopped_by: str | None = None
        self.output_error: str | None = None
        self._hurry = threading.Event()  # a second Ctrl-C: stop waiting for a stuck reader
        self.counts = {"frames": 0, "anomalous": 0, "frame_errors": 0}
        self.batches: list[int] = []  # frames per scoring call
        self.latencies = _Reservoir()
        self.sink.on_error = self._output_failed
        for stream in self.streams:
            if isinstance(stream.source, FolderSource) and stream.source.on_event is None:
                stream.source.on_event = self.sink.event

    @property
    def reader(self) -> FrameReader | None:
        return self.streams[0].reader

    # signals -------------------------------------------------------------------------------------------
    def _install_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, _frame) -> None:
            if self.stop.is_set():
                self._hurry.set()  # never raise here: the summary must still be written
            self.stopped_by = self.stopped_by or signal.Signals(signum).name
            self.stop.set()
            self._wake.set()

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

        Signals are handled from the start and every source is opened by its reader thread, so a source
        that blocks while opening (a FIFO without writer, a dead stream) never blocks Ctrl-C.
        restore_signals=False keeps the handlers afterwards: a CLI that exits next must not die of a late
        second Ctrl-C with the default handler.
        """
        previous = self._install_signals() if install_signals else {}
        started = perf_counter()
        try:
            first = self.streams[0].source
            if self.evidence is not None and self.evidence.video_fps == DEFAULT_VIDEO_FPS and first.fps:
                self.evidence.video_fps = first.fps
            for stream in self.streams:
                source = stream.source
                pace = (source.fps or DEFAULT_VIDEO_FPS) if self.realtime and not source.live else None
                reader = FrameReader(source, stream.slot, self.stop, self.sink.event, self.backoff, pace_fps=pace)
                stream.reader = reader
                reader.start()
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
        for stream in self.streams:  # a finite source that cannot open is an error, not a quiet end
            reader = stream.reader
            if reader is None:
                continue
            if reader.open_error is not None and not stream.source.live and stream.counts["frames"] == 0:
                raise reader.open_error
        return self.summary

    def _loop(self, started: float) -> None:
        while not self.stop.is_set():
            batch = self._gather()
            self._check_stalls()  # every round: a silent camera is reported while the others keep delivering
            if batch is None:  # every source ended
                ended = [s for s in self.streams if s.reader.error]
                self.stopped_by = self.stopped_by or ("stop" if self.stop.is_set() else "error" if ended else "end")
                return
            if not batch:
                continue
            self._score(batch, started)
            if self.max_frames is not None and self.counts["frames"] >= self.max_frames:
                self.stopped_by = self.stopped_by or "max_frames"
                return
        self.stopped_by = self.stopped_by or "stop"

    def _gather(self) -> list[tuple[_Stream, Frame]] | None:
        """One frame from each source that has one, at most max_batch, starting after the source scored last
        (waiting up to the batch budget for the rest); [] when none came within 0.1 s, None once all ended."""
        batch: list[tuple[_Stream, Frame]] = []
        deadline = None
        count = len(self.streams)
        while True:
            self._wake.clear()  # cleared before looking: a frame put after this wakes the wait below
            taken = {stream.number for stream, _ in batch}
            for offset in range(count):
                stream = self.streams[(self._next + offset) % count]
                if len(batch) >= self.max_batch:
                    break
                if stream.ended or stream.number in taken:
                    continue
                item = stream.slot.get(0)
                if item is FrameSlot.END:
                    stream.ended = True
                elif item is not None:
                    stream.stalled = False
                    batch.append((stream, item))
            taken = {stream.number for stream, _ in batch}
            waiting = [s for s in self.streams if not s.ended and s.number not in taken]
            if not batch and not waiting:
                return None
            full = len(batch) >= self.max_batch or not waiting
            if batch and (full or self.max_frames is not None and self._room() <= len(batch)):
                return self._taken(batch)
            now = perf_counter()
            if batch and deadline is None:
                deadline = now + self.batch_wait
            timeout = 0.1 if not batch else deadline - now
            if batch and timeout <= 0:
                return self._taken(batch)
            if not self._wake.wait(timeout) and not batch:
                return []
            if self.stop.is_set():
                return self._taken(batch) if batch else []

    def _taken(self, batch: list) -> list:
        """The round's frames (trimmed to --max-frames); the next round starts after the last source taken."""
        batch = self._trim(batch)
        self._next = (batch[-1][0].number + 1) % len(self.streams)
        return batch

    def _room(self) -> int:
        return self.max_frames - self.counts["frames"]

    def _trim(self, batch: list) -> list:
        """No more frames than --max-frames leaves room for (a trimmed frame counts as dropped)."""
        if self.max_frames is None or len(batch) <= self._room():
            return batch
        for stream, _ in batch[self._room() :]:
            stream.slot.dropped += 1
        return batch[: self._room()]

    def _check_stalls(self) -> None:
        for stream in self.streams:
            if stream.ended or not stream.source.live or stream.stalled or stream.reader is None:
                continue
            silent = perf_counter() - stream.reader.last_frame_at
            if silent > self.stall_timeout:
                stream.stalled = True  # once per stall: the reader's own reconnect follows when read() returns
                self.sink.event({"event": "stalled", "seconds": round(silent, 1), "source": stream.source.name})

    def _predict(self, images: list) -> list:
        if len(images) == 1 or not hasattr(self.detector, "predict_batch"):
            return [self.detector.predict(image, color_order=self.color_order) for image in images]
        return self.detector.predict_batch(images, color_order=self.color_order)

    def _score(self, batch: list[tuple[_Stream, Frame]], started: float) -> None:
        begin = perf_counter()
        try:
            results = self._predict([frame.image for _, frame in batch])
        except (DataError, NonFiniteScoreError, ServerError) as exc:  # a bad frame or a server blip: keep watching
            if len(batch) > 1:
                for pair in batch:  # find the bad frame: the other cameras' frames are still scored
                    self._score([pair], started)
                return
            stream, item = batch[0]
            self._frame_error(stream, item, exc)
            return
        done = perf_counter()
        latency = (done - begin) * 1000.0
        self.batches.append(len(batch))
        for (stream, item), result in zip(batch, results):
            self._write(stream, item, result, latency, done, started)

    def _frame_error(self, stream: _Stream, item: Frame, exc: Exception) -> None:
        self.counts["frame_errors"] += 1
        stream.counts["frame_errors"] += 1
        event = {"event": "frame_error", "frame": item.index, "error": str(exc), "path": item.label}
        if self.multi:
            event.update(stream=stream.number, source=stream.source.name)
        self.sink.event(event)

    def _write(self, stream: _Stream, item: Frame, result, latency: float, done: float, started: float) -> None:
        self.counts["frames"] += 1
        stream.counts["frames"] += 1
        self.latencies.add(latency)
        flagged = bool(result.is_anomalous)
        self.counts["anomalous"] += flagged
        stream.counts["anomalous"] += flagged
        line = {
            "frame": item.index,
            "time": _now_iso(item.captured),
            "score": None if result.score is None else round(float(result.score), 6),
            "raw_score": float(result.raw_score),
            "is_anomalous": result.is_anomalous,
            "latency_ms": round(latency, 3),
            "age_ms": round((done - item.captured_at) * 1000.0, 3),
            "fps": round(self.counts["frames"] / max(done - started, 1e-9), 3),
            "source": stream.source.name,
        }
        if self.multi:
            line["stream"] = stream.number
        if item.label is not None:
            line["path"] = item.label
        self.sink.write(line)
        if flagged and self.evidence is not None and self.evidence.active:
            try:
                self.evidence.record(item, result, stream=stream.number if self.multi else None)
            except OutputError as exc:
                self._output_failed(str(exc))

    def _summary(self, elapsed: float) -> dict:
        frames = self.counts["frames"]
        readers = [s.reader for s in self.streams if s.reader is not None]
        summary = {
            "event": "summary",
            **self.counts,
            "skipped": sum(s.source.skipped for s in self.streams),
            "dropped": sum(s.slot.dropped for s in self.streams),
            "reconnects": sum(r.reconnects for r in readers),
            "fps": round(frames / elapsed, 3) if elapsed > 0 and frames else 0.0,
            "latency_ms_p50": self.latencies.percentile(50),
            "latency_ms_p95": self.latencies.percentile(95),
            "read": sum(r.read_count for r in readers),
            "stopped_by": self.stopped_by or "error",
            "source": self.source.name if not self.multi else ", ".join(s.source.name for s in self.streams),
            "time": _now_iso(),
        }
        errors = [(s.source.name, s.reader.error) for s in self.streams if s.reader is not None and s.reader.error]
        if errors:
            summary["source_error"] = "; ".join(f"{n}: {e}" for n, e in errors) if self.multi else errors[0][1]
        if self.multi:
            summary["mean_batch"] = round(sum(self.batches) / len(self.batches), 3) if self.batches else 0.0
            summary["streams"] = [self._stream_summary(s, elapsed) for s in self.streams]
        if self.evidence is not None and self.evidence.active:
            summary["evidence_saved"] = self.evidence.saved
            summary["overlay_video_frames"] = self.evidence.video_frames
        if self.output_error is not None:
            summary["output_error"] = self.output_error
        return summary

    @staticmethod
    def _stream_summary(stream: _Stream, elapsed: float) -> dict:
        reader = stream.reader
        entry = {
            "stream": stream.number,
            "source": stream.source.name,
            **stream.counts,
            "fps": round(stream.counts["frames"] / elapsed, 3) if elapsed > 0 else 0.0,
            "dropped": stream.slot.dropped,
            "skipped": stream.source.skipped,
            "reconnects": reader.reconnects if reader is not None else 0,
            "read": reader.read_count if reader is not None else 0,
        }
        if reader is not None and reader.error:
            entry["source_error"] = reader.error
        return entry

    def _shutdown(self) -> None:
        deadline = perf_counter() + self.join_timeout
        for stream in self.streams:
            reader = stream.reader
            if reader is not None and reader.is_alive():
                while reader.is_alive() and perf_counter() < deadline and not self._hurry.is_set():
                    reader.join(0.05)  # in slices: a second Ctrl-C ends the wait at once
                if reader.is_alive():
                    why = "a second interrupt" if self._hurry.is_set() else f"{self.join_timeout:g} s"
                    message = f"reader still busy in open() or read() after {why}: not waiting for it"
                    event = {"event": "warning", "message": message, "time": _now_iso()}
                    if self.multi:
                        event["source"] = stream.source.name
                    self.sink.event(event)
            elif reader is None:
                try:
                    stream.source.close()
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
    source: str | FrameSource | Sequence[str | FrameSource],
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
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
    max_batch: int | None = None,
) -> dict:
    """Load `artifact` (or with `server`, its model on that Triton server), score `source`; return the summary.

    `source` may be a list: several cameras on one box, scored together in one batched call per round."""
    order = check_color_order(color_order)
    check_stall_timeout(stall_timeout)
    if threads is not None and threads < 0:
        raise ConfigError(f"--threads is {threads}: pass 1 or more (0 or nothing: the backend's default)")
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"--max-frames is {max_frames}: pass 1 or more, or leave it out to run until stopped")
    check_batch_wait(batch_wait_ms)
    check_max_batch(max_batch, 1)
    specs = [source] if isinstance(source, (str, Path, FrameSource)) else list(source)
    if not specs:
        raise ConfigError("no --source given: pass at least one camera index, stream URL, video file or folder")
    if len({str(spec) for spec in specs if not isinstance(spec, FrameSource)}) < sum(
        not isinstance(spec, FrameSource) for spec in specs
    ):
        raise ConfigError("the same --source is given twice: pass each camera, stream, file or folder once")
    frame_sources = [
        spec if isinstance(spec, FrameSource) else open_source(spec, loop=loop, stall_timeout=stall_timeout)
        for spec in specs
    ]
    frame_source = frame_sources[0] if len(frame_sources) == 1 else frame_sources
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
            batch_wait_ms=batch_wait_ms,
            max_batch=max_batch,
        ).run(install_signals=install_signals, restore_signals=restore_signals)
    finally:
        if sink is not None:
            sink.close()  # already closed after a run; needed when setting up the run failed
        detector.close()


__all__ = [
    "COLOR_ORDERS",
    "DEFAULT_BATCH_WAIT_MS",
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
