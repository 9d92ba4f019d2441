"""Several cameras on one box: frames/s of `edgeiad watch` with 1, 2, 4, 8 live sources scored in batched calls.

The cameras and the measurement are `edgeiad bench --streams`'s (edgeiad/bench/streams.py): in-memory cameras that
always have a fresh frame (real test images, 100 fps), so the number is what the box can score, not what the
cameras deliver. One stream is the batch-1 baseline: N cameras scored one frame per call get the same total
frames/s as one camera, split N ways.

Full size: EDGEIAD_BENCH_ARTIFACT=path/to/artifact EDGEIAD_BENCH_FULL=1 (an artifact exported with a dynamic
batch of at least 8, e.g. the default dynamic:16) and EDGEIAD_BENCH_DATA=the data it was trained on.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from .conftest import full_only, run_isolated

STREAMS_CODE = """
import numpy as np
from edgeiad_runtime import Detector
from edgeiad.bench.streams import stream_case

with np.load({frames!r}, allow_pickle=False) as archive:
    frames = [archive[name] for name in sorted(archive.files)]
with Detector.load({artifact!r}, threads={threads}) as detector:
    for _ in range(3):
        detector.predict_batch([frames[i % len(frames)] for i in range({streams})], color_order="RGB")
    result = dict(stream_case(detector, frames, {streams}, {seconds}, {max_batch}), threads={threads})
"""


def streams_case(artifact, data: str, streams: int, seconds: float, threads: int, tmp_path, max_batch=None) -> dict:
    from edgeiad.bench.runner import bench_frames
    from edgeiad.data import load_dataset

    frames = tmp_path / "frames.npz"
    if not frames.is_file():
        np.savez(frames, **{f"f{i:02d}": f for i, f in enumerate(bench_frames(load_dataset(data), 8))})
    code = STREAMS_CODE.format(frames=str(frames), artifact=str(artifact), streams=streams, seconds=seconds,
                               threads=threads, max_batch=max_batch)  # fmt: skip
    return run_isolated(code, timeout=int(seconds) + 300)


@pytest.fixture(scope="module")
def tiny_artifact(synthetic_mvtec, tmp_path_factory):
    pytest.importorskip("torch", reason="making the artifact needs the [train] extra")
    from edgeiad.engine import train
    from edgeiad.export import export_run
    from tests.conftest import model_overrides

    run = train("padim", synthetic_mvtec, out=tmp_path_factory.mktemp("run") / "r",
                overrides=model_overrides("padim"), progress=False)  # fmt: skip
    return export_run(run, "onnx", "fp32", "baked", "dynamic:8", out=tmp_path_factory.mktemp("a") / "padim")


def test_streams_tiny(benchmark, tiny_artifact, synthetic_mvtec, tmp_path):
    result = benchmark.pedantic(
        streams_case, args=(tiny_artifact, str(synthetic_mvtec), 2, 1.5, 1, tmp_path), rounds=1, iterations=1
    )
    assert result["frames"] > 0 and result["fps"] > 0 and result["mean_batch"] > 1.0


@full_only
def test_streams_full(benchmark, tmp_path):
    artifact, data = os.environ.get("EDGEIAD_BENCH_ARTIFACT"), os.environ.get("EDGEIAD_BENCH_DATA", "elpv-mono")
    if not artifact:
        pytest.skip("set EDGEIAD_BENCH_ARTIFACT to an artifact folder with a dynamic batch (e.g. PatchCore)")
    threads = int(os.environ.get("EDGEIAD_BENCH_THREADS", "2"))

    def sweep() -> list[dict]:
        rows = []
        for count in (1, 2, 4, 8):  # batched (one call per round) and round-robin (one frame per call)
            rows += [streams_case(artifact, data, count, 15.0, threads, tmp_path, m) for m in (None, 1)[:count]]
        return rows

    rows = benchmark.pedantic(sweep, rounds=1, iterations=1)
    benchmark.extra_info["streams"] = rows
    base = rows[0]["fps"]
    for row in rows:
        mode = "one frame per call" if row["max_batch"] == 1 and row["streams"] > 1 else "batched"
        print(
            f"\n{row['streams']} streams {mode}, {threads} threads: {row['fps']:.1f} frames/s ({row['fps'] / base:.2f}x"
            f" one stream), mean batch {row['mean_batch']:.2f}, latency p50 {row['latency_ms_p50']:.1f} ms"
            f" p95 {row['latency_ms_p95']:.1f} ms"
        )
