"""`edgeiad watch` and the camera-appliance example: sources, latest-frame semantics, reconnects, clean exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeiad.watch import Backoff, FrameSource, JsonlSink, SourceUnavailable, Watcher

from .conftest import textured, with_defect
from .test_cli import assert_one_line_error, run_cli

ROOT = Path(__file__).resolve().parents[1]
N_FRAMES = 20
DEFECT_FRAMES = {5, 12, 17}


@pytest.fixture(scope="module")
def artifact(trained_runs, tmp_path_factory) -> Path:
    from edgeiad.export import export_run

    out = tmp_path_factory.mktemp("watch") / "padim-onnx"
    return export_run(trained_runs["padim"], "onnx", "fp32", "baked", "dynamic:8", out=out)


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    frames = []
    for i in range(N_FRAMES):
        frame = textured(rng)
        if i in DEFECT_FRAMES:
            frame, _ = with_defect(frame, rng)
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "line.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (80, 80))
    assert writer.isOpened()
    for frame in _frames():
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    for i, frame in enumerate(_frames()[:8]):
        cv2.imwrite(str(root / f"{i:03d}.png"), frame)
    return root


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_video_file_is_scored_fully_with_evidence(artifact, video, tmp_path, capsys):
    jsonl, evidence, clip = tmp_path / "frames.jsonl", tmp_path / "evidence", tmp_path / "overlays.mp4"
    args = ["watch", artifact, "--source", video, "--jsonl", jsonl, "--save-anomalies", evidence]
    code, out, _ = run_cli([*args, "--overlay-video", clip, "--threads", "1"], capsys)
    assert code == 0
    records = _lines(jsonl.read_text())
    frames = [r for r in records if "frame" in r and "event" not in r]
    summary = records[-1]
    assert [r["frame"] for r in frames] == list(range(N_FRAMES))  # a file is processed fully: no drops
    assert summary["event"] == "summary" and summary["frames"] == N_FRAMES and summary["dropped"] == 0
    assert summary["reconnects"] == 0 and summary["stopped_by"] == "end"
    assert summary["latency_ms_p50"] > 0 and summary["latency_ms_p95"] >= summary["latency_ms_p50"]
    assert _lines(out)[-1] == summary  # events are echoed to stdout when lines go to a file
    for record in frames:
        assert set(record) >= {"frame", "time", "score", "raw_score", "is_anomalous", "latency_ms", "fps", "source"}
        assert record["source"] == str(video) and record["fps"] > 0
    flagged = {r["frame"] for r in frames if r["is_anomalous"]}
    assert len(flagged) >= 2 and flagged <= DEFECT_FRAMES, flagged
    assert summary["anomalous"] == len(flagged)
    overlays = sorted(evidence.glob("*_overlay.png"))
    assert len(overlays) == len(flagged) and len(list(evidence.glob("*.png"))) == 2 * len(flagged)
    assert all("_score" in p.name for p in overlays)
    assert cv2.imread(str(overlays[0])).shape == (80, 80, 3)
    capture = cv2.VideoCapture(str(clip))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == len(flagged)
    capture.release()


def test_folder_source_scores_each_image_once(artifact, folder, capsys):
    code, out, _ = run_cli(["watch", artifact, "--source", folder, "--threads", "1"], capsys)
    assert code == 0
    records = _lines(out)
    frames = [r for r in records if "event" not in r]
    assert [r["path"] for r in frames] == sorted(p.name for p in folder.glob("*.png"))
    assert records[-1]["event"] == "summary" and records[-1]["frames"] == 8
    code, out, _ = run_cli(["watch", artifact, "--source", folder, "--max-frames", "3"], capsys)
    assert code == 0 and _lines(out)[-1]["frames"] == 3 and _lines(out)[-1]["stopped_by"] == "max_frames"


class FlakyCamera(FrameSource):
    """A live source: refuses to open `refusals` times, gives `burst` frames, fails one read, recovers."""

    live = True
    name = "fake-camera"

    def __init__(self, refusals: int = 3, burst: int = 4) -> None:
        self.refusals, self.burst = refusals, burst
        self.opens = self.reads = 0
        self.frame = textured(np.random.default_rng(1))

    def open(self) -> bool:
        self.opens += 1
        if self.opens <= self.refusals:
            raise SourceUnavailable("camera not plugged in")
        return True

    def read(self):
        time.sleep(0.03)  # a 33 fps camera
        self.reads += 1
        if self.reads == self.burst + 1:  # the cable wobbles once
            return False, None
        return True, self.frame


def test_live_source_reconnects_with_exponential_backoff(artifact):
    from edgeiad_runtime import Detector

    stream, camera = _Lines(), FlakyCamera()
    with Detector.load(artifact, threads=1) as detector:
        watcher = Watcher(detector, camera, sink=JsonlSink(stream=stream), max_frames=8, backoff=Backoff(0.01, 0.03))
        summary = watcher.run(install_signals=False)
    events = [r for r in stream.records if r.get("event") == "reconnect"]
    assert [e["attempt"] for e in events] == [1, 2, 3, 1]  # the good frames reset the backoff
    assert [e["delay_s"] for e in events] == [0.01, 0.02, 0.03, 0.01]  # doubling, capped at the ceiling
    assert events[0]["reason"] == "camera not plugged in"
    frames = [r["frame"] for r in stream.records if "event" not in r]
    assert frames == sorted(frames) and len(frames) == 8 and camera.opens == 5
    last_reconnect = max(i for i, r in enumerate(stream.records) if r.get("event") == "reconnect")
    after = [r["frame"] for r in stream.records[last_reconnect:] if "event" not in r]
    assert after and min(after) >= camera.burst  # frames scored again after the drop-out
    assert summary["reconnects"] == 4 and summary["frames"] == 8 and summary["stopped_by"] == "max_frames"


class _Lines:
    """A text stream collecting JSON lines (written from two threads)."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def write(self, text: str) -> None:
        self.records += _lines(text)

    def flush(self) -> None:
        pass


class FastCamera(FrameSource):
    """A live source producing `total` frames `interval` s apart, then nothing (read fails, reopen works)."""

    live = True
    name = "fast-camera"

    def __init__(self, total: int = 200, name: str = "fast-camera", interval: float = 0.001) -> None:
        self.total, self.produced, self.name, self.interval = total, 0, name, interval
        self.done = threading.Event()

    def open(self) -> bool:
        return True

    def read(self):
        if self.produced >= self.total:
            self.done.set()
            time.sleep(0.005)
            return False, None
        time.sleep(self.interval)
        self.produced += 1
        return True, np.full((8, 8, 3), self.produced % 256, dtype=np.uint8)


class SlowDetector:
    """Takes 20 ms per frame; scores the frame's brightness."""

    manifest: dict = {}

    def __init__(self) -> None:
        self.seen: list[int] = []

    def predict(self, image, color_order=None):
        from edgeiad_runtime import Result

        time.sleep(0.02)
        self.seen.append(int(image[0, 0, 0]))
        zeros = np.zeros(image.shape[:2], np.float32)
        return Result(0.1, 0.1, False, zeros, zeros, None)


def test_latest_frame_semantics_drop_instead_of_queueing():
    stop, camera, detector, stream = threading.Event(), FastCamera(200), SlowDetector(), _Lines()
    watcher = Watcher(detector, camera, sink=JsonlSink(stream=stream), stop=stop, backoff=Backoff(0.01, 0.01))

    def stop_when_drained() -> None:
        camera.done.wait(20)
        while watcher.slot.pending:  # the loop takes the last frame; it finishes the frame in hand before stopping
            time.sleep(0.005)
        stop.set()

    threading.Thread(target=stop_when_drained, daemon=True).start()
    summary = watcher.run(install_signals=False)
    assert camera.produced == 200 and watcher.reader.read_count == 200
    assert summary["dropped"] > 0 and summary["frames"] < 200
    assert watcher.slot.max_pending == 1  # never a backlog: one slot, newest frame wins
    assert summary["frames"] + summary["dropped"] == 200  # every frame was scored or dropped, none queued
    assert detector.seen == sorted(detector.seen)  # always the newest frame, in capture order
    assert detector.seen[-1] == 200 % 256  # the very last frame was scored, not a stale one
    assert summary["stopped_by"] == "stop"


def test_sigterm_stops_cleanly_with_a_summary(artifact, folder, tmp_path):
    jsonl = tmp_path / "frames.jsonl"
    command = [sys.executable, "-m", "edgeiad", "watch", str(artifact), "--source", str(folder), "--loop"]
    process = subprocess.Popen(
        [*command, "--jsonl", str(jsonl), "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 12:  # past the folder's end: looping
                break
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    summary = _lines(out)[-1]
    assert summary["event"] == "summary" and summary["stopped_by"] == "SIGTERM" and summary["frames"] >= 12
    records = _lines(jsonl.read_text())  # flushed and complete: every line parses
    assert records[-1] == summary and sum("event" not in r for r in records) == summary["frames"]


def test_bad_sources_and_options_give_one_line(artifact, tmp_path, capsys):
    code, _, err = run_cli(["watch", artifact, "--source", tmp_path / "nope.mp4"], capsys)
    assert_one_line_error(code, err, r"source not found: .*nope\.mp4")
    (tmp_path / "fake.mp4").write_text("not a video")
    code, _, err = run_cli(["watch", artifact, "--source", tmp_path / "fake.mp4"], capsys)
    assert_one_line_error(code, err, r"cannot (open|read a frame from) video .*fake\.mp4")
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["watch", artifact, "--source", tmp_path / "empty"], capsys)
    assert_one_line_error(code, err, r"no images in .*empty")
    code, _, err = run_cli(["watch", tmp_path / "no-artifact", "--source", "0"], capsys)
    assert_one_line_error(code, err, r"artifact folder not found")
    code, _, err = run_cli(["watch", artifact, "--source", tmp_path, "--max-frames", "0"], capsys)
    assert_one_line_error(code, err, r"--max-frames is 0")
    code, _, err = run_cli(["watch", artifact, "--source", tmp_path, "--color-order", "YUV"], capsys)
    assert_one_line_error(code, err, r"--color-order 'YUV'")
    code, _, err = run_cli(["watch", artifact, "--source", tmp_path / "empty", "--overlay-video", "x.gif"], capsys)
    assert_one_line_error(code, err, r"--overlay-video x\.gif")


def test_watch_module_does_not_import_torch():
    code = "import sys, edgeiad.watch, edgeiad.cli.watch; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_appliance_example_runs_on_a_video_without_torch(artifact, video, tmp_path):
    script = ROOT / "examples/camera_appliance/appliance.py"
    evidence = tmp_path / "evidence"
    argv = [str(script), str(artifact), "--source", str(video), "--evidence", str(evidence), "--threads", "1"]
    code = (
        "import runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        f"    runpy.run_path({str(script)!r}, run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "assert 'torch' not in sys.modules, 'the appliance imported torch'\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "EDGEIAD_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    saved = sorted(evidence.glob("*.jpg"))
    assert lines and len(lines) == len(saved)
    assert all("ANOMALY score=" in line for line in lines)
    assert all("_score" in p.name and float(p.stem.rsplit("_score", 1)[1]) >= 0.5 for p in saved)
    assert f"stopped after {N_FRAMES} frames" in result.stderr
