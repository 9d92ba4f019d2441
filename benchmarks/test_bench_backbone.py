"""Backbone-only vs end-to-end latency per target: how much PatchCore's kNN (or PaDiM's Mahalanobis) adds.

Full size: EDGEIAD_BENCH_RUN=path/to/run EDGEIAD_BENCH_FULL=1 (exports onnx + openvino fp32, batch 1).
"""

from __future__ import annotations

import os

import pytest

from .conftest import full_only


def backbone_case(run, out, target: str, threads: int, iters: int) -> dict:
    """Export `run` to `target` plus its backbone-only graph, then time both in one torch-free worker."""
    from edgeiad.bench.backbone import export_backbone
    from edgeiad.bench.runner import bench_frames, run_worker
    from edgeiad.data import load_dataset
    from edgeiad.export import export_run
    from edgeiad.runs import read_json, run_data_spec

    artifact = out / f"artifact-{target}"
    if not (artifact / "manifest.json").is_file():
        export_run(run, target, "fp32", "baked", "1", out=artifact)
    backbone = out / "backbone.onnx"
    if not backbone.is_file():
        export_backbone(run, backbone)
    data = run_data_spec(read_json(run / "config.json"))
    spec = {"artifact": str(artifact), "data": data, "batch": 1, "threads": threads, "iters": iters, "warmup": 3,
            "backbone": {"fp32": str(backbone)}, "accuracy": False}  # fmt: skip
    record = run_worker(spec, threads, bench_frames(load_dataset(data), 1))
    record["e2e_over_backbone"] = record["latency"]["p50_ms"] / record["backbone"]["p50_ms"]
    return record


@pytest.fixture(scope="module")
def tiny_patchcore_run(tmp_path_factory):
    pytest.importorskip("torch", reason="making the run needs the [train] extra")
    from edgeiad.engine import train
    from tests.conftest import make_mvtec, model_overrides

    root = make_mvtec(tmp_path_factory.mktemp("data") / "parts", n_train=4, n_good=2, n_bad=2)
    out = tmp_path_factory.mktemp("run") / "r"
    return train("patchcore", root, out=out, overrides=model_overrides("patchcore"), progress=False)


def test_backbone_vs_end_to_end_tiny(benchmark, tiny_patchcore_run, tmp_path):
    result = benchmark.pedantic(
        backbone_case, args=(tiny_patchcore_run, tmp_path, "onnx", 1, 3), rounds=1, iterations=1
    )
    assert result["torch_imported"] is False
    assert result["backbone"]["p50_ms"] > 0 and result["e2e_over_backbone"] > 0


@full_only
@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_backbone_vs_end_to_end_full(benchmark, target, tmp_path):
    from pathlib import Path

    run = os.environ.get("EDGEIAD_BENCH_RUN")
    if not run:
        pytest.skip("set EDGEIAD_BENCH_RUN to a run folder (e.g. PatchCore on elpv-mono)")
    result = benchmark.pedantic(backbone_case, args=(Path(run), tmp_path, target, 1, 100), rounds=1, iterations=1)
    benchmark.extra_info.update({k: result[k] for k in ("latency", "backbone", "e2e_over_backbone", "peak_rss_mb")})
    print(
        f"\n{target}: e2e p50 {result['latency']['p50_ms']:.2f} ms, backbone p50 {result['backbone']['p50_ms']:.2f}"
        f" ms, ratio {result['e2e_over_backbone']:.2f}, peak RSS {result['peak_rss_mb']:.0f} MB"
    )
