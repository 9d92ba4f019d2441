"""`edgeiad watch` with several sources: one batched call per round, per-camera lines, isolation of bad frames."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
from edgeiad_runtime import Result
from edgeiad_runtime.errors import DataError

from edgeiad.watch import Backoff, FrameSource, JsonlSink, Watcher

from .conftest import textured, with_defect
from .test_cli import assert_one_line_error, run_cli
from .test_watch import FastCamera, _Lines, _lines


@pytest.fixture(scope="module")
def artifact(trained_runs, tmp_path_factory):
    from edgeiad.export import export_run

    out = tmp_path_factory.mktemp("streams") / "padim-onnx"
    return export_run(trained_runs["padim"], "onnx", "fp32", "baked", "dynamic:8", out=out)


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    """Two production lines as folders: line a has defects in frames 2 and 5, line b in frame 4."""
    rng = np.random.default_rng(11)
    roots = {}
    for name, defects in (("a", {2, 5}), ("b", {4})):
        root = roots[name] = tmp_path_factory.mktemp(f"line-{name}")
        for i in range(7):
            frame = textured(rng)
            if i in defects:
                frame, _ = with_defect(frame, rng)
            cv2.imwrite(str(root / f"{i:03d}.png"), frame)
    return roots


def test_two_folders_are_scored_together_in_batches(artifact, lines, tmp_path, capsys):
    evidence = tmp_path / "evidence"
    args = ["watch", artifact, "--source", lines["a"], "--source", lines["b"], "--save-anomalies", evidence]
    code, out, _ = run_cli([*args, "--threads", "1", "--batch-wait-ms", "200"], capsys)
    assert code == 0
    records = _lines(out)
    summary, frames = records[-1], [r for r in records if "event" not in r]
    assert summary["frames"] == 14 and summary["stopped_by"] == "end" and summary["frame_errors"] == 0
    for number, name in enumerate("ab"):
        mine = [r for r in frames if r["stream"] == number]
        assert [r["path"] for r in mine] == [f"{i:03d}.png" for i in range(7)]  # every frame, in order
        assert {r["source"] for r in mine} == {str(lines[name])}
        entry = summary["streams"][number]
        assert entry["frames"] == 7 and entry["source"] == str(lines[name]) and entry["dropped"] == 0
    flagged = {(r["stream"], r["path"]) for r in frames if r["is_anomalous"]}
    assert flagged <= {(0, "002.png"), (0, "005.png"), (1, "004.png")} and len(flagged) >= 2, flagged
    assert summary["mean_batch"] > 1.5  # the two lines' frames shared one call per round
    saved = sorted(p.name for p in evidence.glob("*_overlay.png"))
    assert len(saved) == len(flagged) and all("_stream0_" in n or "_stream1_" in n for n in saved)


def test_batched_scores_equal_one_by_one_scores(artifact, lines):
    from edgeiad_runtime import Detector

    stream = _Lines()
    sources = [_Folder(lines["a"]), _Folder(lines["b"])]
    with Detector.load(artifact, threads=1) as detector:
        Watcher(detector, sources, sink=JsonlSink(stream=stream), batch_wait_ms=200).run(install_signals=False)
        for record in (r for r in stream.records if "event" not in r):
            alone = detector.predict(cv2.imread(str(lines["ab"[record["stream"]]] / record["path"])))
            assert record["raw_score"] == pytest.approx(alone.raw_score, rel=1e-5)


class _Folder(FrameSource):
    """A finite in-memory source over a folder's PNGs (the frames as cv2 reads them)."""

    live = False

    def __init__(self, root) -> None:
        self.name, self.paths, self.position = str(root), sorted(root.glob("*.png")), 0

    def open(self) -> bool:
        return True

    def read(self):
        if self.position >= len(self.paths):
            return False, None
        path = self.paths[self.position]
        self.position += 1
        self.label = path.name
        return True, cv2.imread(str(path))


class _Frames(FrameSource):
    """A finite source of given frames; frames marked None are all-NaN float images (a broken converter)."""

    live = False

    def __init__(self, name: str, frames: list) -> None:
        self.name, self.frames = name, list(frames)

    def open(self) -> bool:
        return True

    def read(self):
        if not self.frames:
            return False, None
        frame = self.frames.pop(0)
        return True, np.full((16, 16, 3), np.nan, np.float32) if frame is None else frame


class _BatchDetector:
    """Scores brightness; refuses NaN frames (like the runtime) and records the size of every call."""

    manifest: dict = {}

    def __init__(self) -> None:
        self.calls: list[int] = []

    def _one(self, image) -> Result:
        if not np.isfinite(image).all():
            raise DataError("image contains NaN or infinite values: clean the frame before predicting")
        zeros = np.zeros(image.shape[:2], np.float32)
        return Result(None, float(image.mean()), None, zeros, zeros, None)

    def predict(self, image, color_order=None) -> Result:
        self.calls.append(1)
        return self._one(image)

    def predict_batch(self, images, color_order=None) -> list[Result]:
        self.calls.append(len(images))
        return [self._one(image) for image in images]


def test_a_bad_frame_in_a_batch_fails_alone():
    good = [np.full((16, 16, 3), v, np.uint8) for v in (10, 20, 30)]
    sources = [_Frames("cam-a", good), _Frames("cam-b", [good[0], None, good[2]])]
    stream, detector = _Lines(), _BatchDetector()
    summary = Watcher(detector, sources, sink=JsonlSink(stream=stream), batch_wait_ms=500).run(install_signals=False)
    errors = [r for r in stream.records if r.get("event") == "frame_error"]
    assert len(errors) == 1 and errors[0]["stream"] == 1 and errors[0]["frame"] == 1 and "NaN" in errors[0]["error"]
    assert summary["frames"] == 5 and summary["frame_errors"] == 1  # cam-a's frame of that round was still scored
    assert [s["frames"] for s in summary["streams"]] == [3, 2]
    assert [s["frame_errors"] for s in summary["streams"]] == [0, 1]
    assert max(detector.calls) == 2  # batched rounds, and the failed round re-scored frame by frame


class _SlowBatchDetector(_BatchDetector):
    """20 ms per call whatever the batch: what batching buys on a box whose calls have a fixed cost."""

    def predict_batch(self, images, color_order=None) -> list[Result]:
        time.sleep(0.02)
        return super().predict_batch(images, color_order)

    def predict(self, image, color_order=None) -> Result:
        time.sleep(0.02)
        return super().predict(image, color_order)


def test_live_cameras_share_calls_and_keep_their_newest_frame():
    cameras = [FastCamera(60, name=f"cam{i}", interval=0.005) for i in range(3)]  # ~200 fps each
    stop, stream, detector = threading.Event(), _Lines(), _SlowBatchDetector()
    watcher = Watcher(detector, cameras, sink=JsonlSink(stream=stream), stop=stop, backoff=Backoff(0.01, 0.01))

    def stop_when_done() -> None:
        for camera in cameras:
            camera.done.wait(20)
        time.sleep(0.1)
        stop.set()

    threading.Thread(target=stop_when_done, daemon=True).start()
    summary = watcher.run(install_signals=False)
    assert summary["stopped_by"] == "stop" and summary["mean_batch"] > 2.0
    for number, camera in enumerate(cameras):
        seen = [r["raw_score"] for r in stream.records if "event" not in r and r["stream"] == number]
        entry = summary["streams"][number]
        assert seen == sorted(seen) and seen[-1] == 60  # newest frames, in order, up to the very last
        assert entry["frames"] + entry["dropped"] == entry["read"] == 60  # scored or dropped, never queued
        assert entry["source"] == camera.name


def test_several_sources_refuse_bad_options(artifact, lines, capsys):
    code, _, err = run_cli(["watch", artifact, "--source", lines["a"], "--source", lines["a"]], capsys)
    assert_one_line_error(code, err, "the same --source is given twice")
    code, _, err = run_cli(["watch", artifact, "--source", lines["a"], "--batch-wait-ms", "-1"], capsys)
    assert_one_line_error(code, err, "--batch-wait-ms is -1")


def test_max_batch_one_scores_the_cameras_round_robin():
    good = [np.full((16, 16, 3), v, np.uint8) for v in (10, 20, 30, 40)]
    sources = [_Frames(f"cam-{i}", good) for i in range(3)]
    stream, detector = _Lines(), _BatchDetector()
    watcher = Watcher(detector, sources, sink=JsonlSink(stream=stream), batch_wait_ms=500, max_batch=1)
    summary = watcher.run(install_signals=False)
    assert set(detector.calls) == {1} and summary["frames"] == 12 and summary["mean_batch"] == 1.0
    for number in range(3):
        mine = [r["raw_score"] for r in stream.records if "event" not in r and r["stream"] == number]
        assert mine == [10.0, 20.0, 30.0, 40.0]
    # with every camera's slot full, the rounds take them in turn: none waits behind the others twice
    from edgeiad.watch import Frame

    rounds = Watcher(detector, [_Frames(f"c{i}", []) for i in range(3)], sink=JsonlSink(stream=_Lines()), max_batch=1)
    never = threading.Event()
    order = []
    for _ in range(6):
        for stream_ in rounds.streams:
            if not stream_.slot.pending:
                stream_.slot.put(Frame(0, good[0], 0.0, time.perf_counter()), never)
        order += [s.number for s, _ in rounds._gather()]
    assert order == [0, 1, 2, 0, 1, 2]


def test_max_batch_caps_the_call_size_and_rotates_the_start():
    good = [np.full((16, 16, 3), v, np.uint8) for v in (10, 20, 30)]
    sources = [_Frames(f"cam-{i}", good) for i in range(3)]
    stream, detector = _Lines(), _BatchDetector()
    Watcher(detector, sources, sink=JsonlSink(stream=stream), batch_wait_ms=500, max_batch=2).run(install_signals=False)
    assert max(detector.calls) == 2 and sum(detector.calls) == 9
    counts = [sum(1 for r in stream.records if r.get("stream") == i and "event" not in r) for i in range(3)]
    assert counts == [3, 3, 3]


def test_max_batch_must_be_positive(artifact, lines, capsys):
    code, _, err = run_cli(["watch", artifact, "--source", lines["a"], "--max-batch", "0"], capsys)
    assert_one_line_error(code, err, "--max-batch is 0")
