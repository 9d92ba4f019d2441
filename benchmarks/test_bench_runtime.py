"""Runtime: load time, peak RSS of a Detector process, and its overhead over a bare onnxruntime session.run.

Full size: EDGEIAD_BENCH_ARTIFACT=path/to/artifact (e.g. a PatchCore ELPV export) EDGEIAD_BENCH_FULL=1.
"""

from __future__ import annotations

import os

import pytest

from .conftest import full_only, run_isolated

RUNTIME_CODE = """
import sys, time, numpy as np
start = time.perf_counter()
from edgeiad_runtime import Detector
det = Detector.load({artifact!r}, backend="onnxruntime", threads={threads})
load_s = time.perf_counter() - start
height, width = det.input_size
frame = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
det.predict(frame)  # warm-up
import onnxruntime as ort
from edgeiad_runtime.preprocess import preprocess, to_rgb_uint8, Preprocessing
options = ort.SessionOptions(); options.intra_op_num_threads = {threads}; options.inter_op_num_threads = 1
session = ort.InferenceSession({artifact!r} + "/model.onnx", options, providers=["CPUExecutionProvider"])
spec = Preprocessing.from_dict(det.manifest["preprocessing"])
tensor = preprocess(to_rgb_uint8(frame, color_order="BGR"), spec)[None]
session.run(None, {{"image": tensor}})
bare, full = [], []
for _ in range({iters}):  # interleaved so load changes on a shared machine hit both alike
    t = time.perf_counter(); session.run(None, {{"image": tensor}}); bare.append(time.perf_counter() - t)
    t = time.perf_counter(); det.predict(frame); full.append(time.perf_counter() - t)
result = dict(load_s=load_s, bare_ms=1e3 * float(np.median(bare)), detector_ms=1e3 * float(np.median(full)),
              torch_imported="torch" in sys.modules)
result["overhead"] = result["detector_ms"] / result["bare_ms"] - 1
"""


def runtime_case(artifact: str, threads: int = 1, iters: int = 30) -> dict:
    return run_isolated(RUNTIME_CODE.format(artifact=str(artifact), threads=threads, iters=iters))


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory):
    pytest.importorskip("torch", reason="making the artifact needs the [train] extra")
    from edgeiad.engine import train
    from edgeiad.export import export_run
    from tests.conftest import make_mvtec, model_overrides

    root = make_mvtec(tmp_path_factory.mktemp("data") / "parts", n_train=4, n_good=2, n_bad=2)
    run = train(
        "padim", root, out=tmp_path_factory.mktemp("run") / "r", overrides=model_overrides("padim"), progress=False
    )
    return export_run(run, "onnx", "fp32", "baked", "1", out=tmp_path_factory.mktemp("a") / "a")


def test_runtime_overhead_tiny(benchmark, tiny_artifact):
    result = benchmark.pedantic(runtime_case, args=(tiny_artifact, 1, 5), rounds=1, iterations=1)
    assert result["torch_imported"] is False
    assert result["bare_ms"] > 0 and result["detector_ms"] > 0 and result["peak_rss_mb"] > 0


@full_only
@pytest.mark.parametrize("threads", [1, 2])
def test_runtime_overhead_full(benchmark, threads):
    artifact = os.environ.get("EDGEIAD_BENCH_ARTIFACT")
    if not artifact:
        pytest.skip("set EDGEIAD_BENCH_ARTIFACT to an exported artifact folder")
    result = benchmark.pedantic(runtime_case, args=(artifact, threads, 100), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(f"\nruntime {artifact} threads={threads}: {result}")
