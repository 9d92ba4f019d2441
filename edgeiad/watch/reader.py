"""The reader thread and its one-frame slot: latest-frame semantics, reconnects with backoff."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from time import perf_counter

import numpy as np

from .sources import (
    EventSink,
    FrameSource,
    _now_iso,
)


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

    def __init__(self, keep_latest: bool, wake: threading.Event | None = None) -> None:
        self.keep_latest = keep_latest
        self.wake = wake  # set on every put and close: one event wakes a loop that serves several slots
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
        if self.wake is not None:
            self.wake.set()
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
        if self.wake is not None:
            self.wake.set()


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
        self.open_error: Exception | None = None  # a finite source that could not open: raised by the watcher
        self.last_frame_at = perf_counter()  # for the watcher's stall check

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
            began = perf_counter()
            try:
                ok, image = self.source.read()
            except Exception as exc:
                ok, image, reason = False, None, f"read failed: {type(exc).__name__}: {exc}"
            else:
                waited = perf_counter() - began
                reason = f"no frame for {waited:.1f} s (stalled)" if waited >= 1.0 else "read returned no frame"
            if not ok or image is None:
                if not self.source.live:
                    return  # end of the file or folder: a clean stop
                self.source.close()
                self._opened = False
                failures += 1
                self._wait(failures, reason)
                continue
            failures = 0  # a good frame resets the backoff
            self.last_frame_at = perf_counter()
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
            self.open_error = exc
            return str(exc) or type(exc).__name__
        if opened is False:
            return "open() returned False"
        self._opened = True
        self.open_error = None
        self.last_frame_at = perf_counter()  # a fresh connection gets a full stall timeout
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
