"""Bounded fuzzing of what reaches the runtime from the field: damaged image files, manifests and stats files.

Every case ends in a finite result of the input's size or in the runtime's own EdgeiadError (one line);
never another exception, never a hang (hypothesis' deadline). EDGEIAD_FUZZ_EXAMPLES scales the runs
(the closing note of issue 15 used 1000; CI keeps the default); `--hypothesis-show-statistics` counts events.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from edgeiad_runtime import Detector
from edgeiad_runtime.decode import decode_image_file
from edgeiad_runtime.errors import EdgeiadError
from edgeiad_runtime.manifest import MANIFEST_NAME
from edgeiad_runtime.safetensors_io import load_file
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from .conftest import build_artifact

EXAMPLES = int(os.environ.get("EDGEIAD_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=10_000,  # ms per case: a hang or a multi-GB decode fails the test
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
HOSTILE = [None, True, -1, 0, 1, 3, 2**63, 10**400, 1e308, -1e308, 0.5, "", "batch", "../x", [], [1], {}, {"a": 1}]


def _outcome(call, stage: str) -> object:
    """Run `call`; return its value, or record the EdgeiadError it raised (anything else fails the test)."""
    try:
        return call()
    except EdgeiadError as error:
        assert str(error) and "\n" not in str(error), repr(error)
        event(f"clear error at {stage}: {type(error).__name__}")
        return None


def _assert_result(result, shape: tuple[int, int]) -> None:
    assert result.anomaly_map.shape == result.raw_map.shape == shape
    assert np.isfinite(result.raw_score) and np.isfinite(result.anomaly_map).all() and np.isfinite(result.raw_map).all()
    assert result.score is None or 0.0 <= result.score <= 1.0


@st.composite
def damaged_files(draw) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from([".png", ".jpg", ".bmp", ".tif"]))
    height, width = draw(st.integers(2, 40)), draw(st.integers(2, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    ok, buffer = cv2.imencode(suffix, rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    data = bytearray(buffer.tobytes())
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "truncate":
            data = data[:at]
        elif kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "overwrite":
            data[at : at + 4] = draw(st.binary(min_size=1, max_size=4))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return suffix, bytes(data)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(case=damaged_files())
def test_fuzz_damaged_image_files(detector, scratch, case):
    suffix, data = case
    path = scratch / f"frame{suffix}"
    path.write_bytes(data)
    result = _outcome(lambda: detector.predict(path), "predict")
    if result is not None:
        _assert_result(result, decode_image_file(path).shape[:2])  # the frame the runtime decoded
        event("result")


def _paths(value, prefix=()) -> list[tuple]:
    """Every key path of a JSON object, parents before children."""
    found = []
    if isinstance(value, dict):
        for key, child in value.items():
            found.append((*prefix, key))
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.append((*prefix, index))
            found += _paths(child, (*prefix, index))
    return found


@st.composite
def damaged_manifests(draw, original: dict) -> tuple[bytes, bool]:
    data = json.loads(json.dumps(original))
    paths = _paths(data)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        parent = data
        try:
            for key in path[:-1]:
                parent = parent[key]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(st.sampled_from(HOSTILE))
        except (KeyError, IndexError, TypeError):  # an earlier change removed or replaced the parent
            continue
    text = json.dumps(data).encode()
    if draw(st.booleans()):  # or raw byte damage of the original file
        text = bytearray(json.dumps(original, indent=2).encode())
        at = draw(st.integers(0, len(text) - 1))
        text[at] ^= draw(st.integers(1, 255))
    return bytes(text), draw(st.booleans())


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return build_artifact(tmp_path_factory.mktemp("pristine") / "artifact", stats="sidecar")


def _fresh_copy(pristine: Path, scratch: Path) -> Path:
    folder = scratch / "artifact"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(pristine, folder)
    return folder


def _load_and_predict(folder: Path, verify: bool) -> None:
    detector = _outcome(lambda: Detector.load(folder, threads=1, verify=verify), "load")
    if detector is not None:
        with detector:
            result = _outcome(lambda: detector.predict(np.full((20, 30, 3), 77, np.uint8)), "predict")
            if result is not None:
                _assert_result(result, (20, 30))
                event("result")


@FUZZ
@given(data=st.data())
def test_fuzz_damaged_manifests(pristine, scratch, data):
    original = json.loads((pristine / MANIFEST_NAME).read_text())
    text, verify = data.draw(damaged_manifests(original))
    folder = _fresh_copy(pristine, scratch)
    (folder / MANIFEST_NAME).write_bytes(text)
    _load_and_predict(folder, verify)


@FUZZ
@given(cut=st.integers(0, 400), flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=4))
def test_fuzz_damaged_stats_files(pristine, scratch, cut, flips):
    folder = _fresh_copy(pristine, scratch)
    blob = bytearray((folder / "stats.safetensors").read_bytes())
    for at, mask in flips:
        blob[at % len(blob)] ^= mask
    if cut < len(blob) and cut % 3 == 0:
        blob = blob[:cut]
    (folder / "stats.safetensors").write_bytes(bytes(blob))
    try:
        tensors = load_file(folder / "stats.safetensors")
        assert all(isinstance(value, np.ndarray) for value in tensors.values())
    except EdgeiadError as error:  # the reader alone: the same rule
        assert "\n" not in str(error)
    _load_and_predict(folder, verify=False)  # with verify=True the hash refuses every change
