"""Several cameras on one box: total frames/s of `edgeiad watch`'s loop with N live sources (`bench --streams`).

Each source is an in-memory camera that always has a fresh frame (the bench's frames, one every 10 ms), so the
number is what the box can score, not what cameras deliver. A count above one runs twice: batched (the newest
frame of every camera in one call, `edgeiad watch`'s default) and round-robin (`--max-batch 1`, one frame per
call). Only numpy, the runtime and edgeiad.watch are imported: it runs in the bench's torch-free worker.
"""

from __future__ import annotations

import threading
import time

from edgeiad_runtime.errors import ConfigError

from ..watch import FrameSource, JsonlSink, Watcher

FRAME_INTERVAL_S = 0.01  # 100 frames/s per camera: more than any case here scores, so a camera never starves


class _Camera(FrameSource):
    """A live source that hands out the bench frames in turn, always fresh."""

    live = True

    def __init__(self, number: int, frames: list) -> None:
        self.name, self.frames, self.count = f"camera{number}", frames, number

    def open(self) -> bool:
        return True

    def read(self):
        time.sleep(FRAME_INTERVAL_S)
        self.count += 1
        return True, self.frames[self.count % len(self.frames)]


class _Discard(JsonlSink):
    """Counts are all the bench needs: per-frame lines and events are dropped, not printed."""

    def write(self, record: dict, event: bool = False) -> None:
        pass


def check_stream_counts(counts: tuple[int, ...], seconds: float) -> None:
    if not counts or any(not isinstance(c, int) or c < 1 or c > 64 for c in counts):
        raise ConfigError(f"--streams {list(counts)}: pass camera counts from 1 to 64, e.g. 1,2,4,8")
    if not 1.0 <= seconds <= 600.0:
        raise ConfigError(f"--stream-seconds {seconds}: pass 1 to 600 seconds per count, e.g. 10")


def stream_case(detector, frames: list, count: int, seconds: float, max_batch: int | None = None) -> dict:
    """One Watcher run of `seconds` with `count` cameras; its totals (frames/s of all cameras together, the
    p50/p95 of one scoring call, the mean frames per call). `frames` are RGB."""
    stop = threading.Event()
    cameras = [_Camera(number, frames) for number in range(count)]
    watcher = Watcher(detector, cameras, sink=_Discard(), stop=stop, color_order="RGB", max_batch=max_batch)
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        summary = watcher.run(install_signals=False)
    finally:
        timer.cancel()
    return {
        "streams": count,
        "max_batch": watcher.max_batch,
        "fps": summary["fps"],
        "frames": summary["frames"],
        "frame_errors": summary["frame_errors"],
        "mean_batch": summary.get("mean_batch", 1.0),
        "latency_ms_p50": summary["latency_ms_p50"],
        "latency_ms_p95": summary["latency_ms_p95"],
        "dropped": summary["dropped"],
    }


def measure_streams(detector, frames: list, counts: tuple[int, ...], seconds: float) -> list[dict]:
    """`stream_case` for each count, batched, and round-robin as well above one camera."""
    check_stream_counts(counts, seconds)
    detector.predict_batch([frames[i % len(frames)] for i in range(max(counts))], color_order="RGB")  # warm
    rows = []
    for count in counts:
        rows.append(stream_case(detector, frames, count, seconds))
        if count > 1:
            rows.append(stream_case(detector, frames, count, seconds, max_batch=1))
    return rows
