"""`edgeiad watch` under field faults: damaged files, NaN scores, full disks, double Ctrl-C, a FIFO that blocks
its open, and a stream that stalls. Uses the runtime tests' tiny torch-free artifact, so no training."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from edgeiad_runtime import Detector

from edgeiad.watch import CaptureSource, FolderSource, JsonlSink, Watcher, outputs

from .runtime.conftest import build_artifact
from .runtime.test_decode import claimed_png
from .runtime.test_field_faults import _nan_artifact

ROOT = Path(__file__).resolve().parents[1]


class _Lines:
    """A text stream collecting JSON lines."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def write(self, text: str) -> None:
        self.records += [json.loads(line) for line in text.splitlines() if line.strip()]

    def flush(self) -> None:
        pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_artifact(tmp_path_factory.mktemp("watch-faults") / "artifact")


def _frames(folder: Path, count: int, size: int = 48) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for index in range(count):
        cv2.imwrite(str(folder / f"{index:03d}.png"), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return folder


def _run(detector, source, **options) -> tuple[dict, list[dict]]:
    stream = _Lines()
    summary = Watcher(detector, source, sink=JsonlSink(stream=stream), **options).run(install_signals=False)
    return summary, stream.records


def test_damaged_files_are_skipped_by_name_and_the_rest_is_scored(tiny, tmp_path):
    folder = _frames(tmp_path / "parts", 2)
    (folder / "001-bomb.png").write_bytes(claimed_png(100_000, 100_000))  # used to end the folder: "end", exit 0
    ok, jpeg = cv2.imencode(".jpg", np.full((40, 40, 3), 128, np.uint8))
    (folder / "001-half.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])  # used to be scored as a part
    with Detector.load(tiny, threads=1) as detector:
        summary, records = _run(detector, FolderSource(folder))
    skipped = {Path(r["path"]).name: r["reason"] for r in records if r.get("event") == "skipped"}
    assert set(skipped) == {"001-bomb.png", "001-half.jpg"}
    assert "100000x100000 pixels" in skipped["001-bomb.png"] and "truncated" in skipped["001-half.jpg"]
    assert [r["path"] for r in records if "event" not in r] == ["000.png", "001.png"]
    assert summary["skipped"] == 2 and summary["frames"] == 2 and summary["stopped_by"] == "end"


def test_nan_scores_are_frame_errors_never_passes(tmp_path):
    folder = _frames(tmp_path / "parts", 3)
    with Detector.load(_nan_artifact(tmp_path / "nan"), threads=1) as detector:
        summary, records = _run(detector, FolderSource(folder))
    assert not [r for r in records if "is_anomalous" in r]
    assert [r["event"] for r in records if "NaN" in r.get("error", "")] == ["frame_error"] * 3
    assert summary["frame_errors"] == 3 and summary["frames"] == 0


def test_a_full_disk_under_jsonl_stops_cleanly_without_a_cut_line(tiny, tmp_path, monkeypatch):
    jsonl, budget = tmp_path / "frames.jsonl", [900]
    real_write = os.write

    def full_disk(descriptor: int, data) -> int:
        if descriptor > 2:  # the jsonl file; stdout/stderr keep working
            if budget[0] <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            data = bytes(data)[: budget[0]]  # a partial write, as a nearly full disk gives
            budget[0] -= len(data)
        return real_write(descriptor, data)

    monkeypatch.setattr(outputs.os, "write", full_disk)
    stream = _Lines()
    with Detector.load(tiny, threads=1) as detector:
        source = FolderSource(_frames(tmp_path / "parts", 4), loop=True)
        summary = Watcher(detector, source, sink=JsonlSink(jsonl, stream=stream)).run(install_signals=False)
    lines = jsonl.read_text().splitlines()
    assert lines and all(json.loads(line) for line in lines)  # every line complete: the cut one was removed
    assert summary["stopped_by"] == "output_error" and "No space left" in summary["output_error"]
    assert stream.records[-1] == summary and summary["frames"] >= len(lines)
    assert [r["event"] for r in stream.records if r.get("event") == "output_error"] == ["output_error"]


def _limited(max_bytes: int):
    def apply() -> None:  # in the child: files larger than this fail with EFBIG, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return apply


def _watch(args: list, **options) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "runtimes/python")]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    command = [sys.executable, "-m", "edgeiad", "watch", *map(str, args), "--threads", "1"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **options)


def _summary(out: str) -> dict:
    return [json.loads(line) for line in out.splitlines() if line.strip()][-1]


@pytest.mark.parametrize("output", ["--jsonl", "--overlay-video"])
def test_full_disk_in_the_cli_is_one_error_line_after_the_summary(tiny, tmp_path, output):
    folder = _frames(tmp_path / "parts", 30, size=96)  # noise: every frame is anomalous, the video grows
    target = tmp_path / ("frames.jsonl" if output == "--jsonl" else "anomalies.mp4")
    process = _watch([tiny, "--source", folder, output, target], preexec_fn=_limited(6000))
    out, err = process.communicate(timeout=120)
    assert process.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err and str(target) in errors[0]
    summary = _summary(out)
    assert summary["event"] == "summary" and str(target) in summary["output_error"]
    if output == "--jsonl":
        assert summary["stopped_by"] == "output_error"
        assert all(json.loads(line) for line in target.read_text().splitlines())
    else:  # OpenCV's writer reports nothing: the video is read back when it is closed
        assert summary["overlay_video_frames"] < summary["anomalous"]  # never claims frames it lost


def _wait_for_lines(path: Path, count: int, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"watch wrote fewer than {count} lines: {process.poll()}")


def test_two_quick_sigints_still_write_the_summary(tiny, tmp_path):
    jsonl = tmp_path / "frames.jsonl"
    process = _watch([tiny, "--source", _frames(tmp_path / "parts", 4), "--loop", "--jsonl", jsonl])
    try:
        _wait_for_lines(jsonl, 6, process)
        process.send_signal(signal.SIGINT)
        time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert _summary(out)["stopped_by"] == "SIGINT" and _summary(jsonl.read_text()) == _summary(out)


def test_sigint_works_while_the_source_blocks_in_open(tiny, tmp_path):
    fifo = tmp_path / "camera.mp4"
    os.mkfifo(fifo)  # no writer: opening it blocks forever
    process = _watch([tiny, "--source", fifo])
    try:
        time.sleep(3)  # past the artifact load, into the blocking open
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, err
    summary = _summary(out)
    assert summary["stopped_by"] == "SIGINT" and summary["frames"] == 0


class _StallingStream:
    """A local MJPEG-over-HTTP camera: `burst` frames per connection, then silence (a hung encoder)."""

    def __init__(self, burst: int = 8) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        ok, jpeg = cv2.imencode(".jpg", np.full((32, 32, 3), 90, np.uint8))
        self.part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%b\r\n" % (len(jpeg), jpeg)
        self.burst, self.connections = burst, []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}/camera.mjpg"

    def _accept(self) -> None:
        while True:
            connection, _ = self.server.accept()
            self.connections.append(connection)
            connection.recv(4096)
            connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=frame\r\n\r\n")
            for _ in range(self.burst):
                connection.sendall(self.part)
                time.sleep(0.02)


def test_a_stalled_stream_is_reported_and_reopened_within_the_stall_timeout(tiny):
    camera, stream, stop = _StallingStream(), _Lines(), threading.Event()
    source = CaptureSource(camera.url, stall_timeout=1.0)

    def stop_after_reconnect() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(r.get("event") == "reconnect" for r in stream.records):
            time.sleep(0.05)
        stop.set()

    threading.Thread(target=stop_after_reconnect, daemon=True).start()
    started = time.monotonic()
    with Detector.load(tiny, threads=1) as detector:
        watcher = Watcher(detector, source, sink=JsonlSink(stream=stream), stop=stop, stall_timeout=1.0)
        summary = watcher.run(install_signals=False)
    reconnects = [r for r in stream.records if r.get("event") == "reconnect"]
    assert reconnects and "stalled" in reconnects[0]["reason"], stream.records[-3:]
    assert time.monotonic() - started < 15  # OpenCV's own timeout is ~30 s
    assert summary["frames"] >= 1 and summary["reconnects"] >= 1
