"""The runtime never imports torch or the toolkit, and its CLI prints one JSON line per image."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import cv2
import numpy as np
from edgeiad_runtime.__main__ import main

_PROBE = textwrap.dedent(
    """
    import sys
    import numpy as np
    import edgeiad_runtime
    for folder in sys.argv[1:]:
        with edgeiad_runtime.Detector.load(folder, threads=1) as det:
            result = det.predict(np.zeros((40, 50, 3), np.uint8))
            assert result.anomaly_map.shape == (40, 50), result.anomaly_map.shape
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "edgeiad"))
    assert not leaked, leaked
    print("clean")
    """
)


def test_runtime_imports_neither_torch_nor_the_toolkit(onnx_artifact, artifact_factory):
    openvino_artifact = artifact_factory(target="openvino", precision_hint="f32")
    sidecar_artifact = artifact_factory(stats="sidecar", stats_dtype="fp16")
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(onnx_artifact), str(openvino_artifact), str(sidecar_artifact)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "clean"


def test_cli_prints_one_json_line_per_image(onnx_artifact, images, tmp_path, capsys):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), images[0])
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    code = main([str(onnx_artifact), str(good), str(bad), "--threads", "1"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1 and [line["path"] for line in lines] == [str(good), str(bad)]
    assert set(lines[0]) == {"path", "score", "raw_score", "is_anomalous", "timings"}
    assert 0.0 <= lines[0]["score"] <= 1.0 and isinstance(lines[0]["is_anomalous"], bool)
    assert "not an image" in lines[1]["error"]
    assert main([str(onnx_artifact), str(good)]) == 0


def test_cli_reports_a_broken_artifact_on_stderr(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "x.png"]) == 2
    assert "artifact folder not found" in capsys.readouterr().err


def test_cli_runs_as_a_module(onnx_artifact, tmp_path):
    frame = tmp_path / "frame.png"
    cv2.imwrite(str(frame), np.full((20, 30), 90, np.uint8))
    done = subprocess.run(
        [sys.executable, "-m", "edgeiad_runtime", str(onnx_artifact), str(frame), "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["path"] == str(frame)
