"""What SegAD adds to inference: its graph against its own base detector(s), alone and together.

All graphs are exported from the same fitted run (the bases' weights are SegAD's own, so the bank sizes
match), fed the same input and timed in one fresh process through ONNX Runtime, batch 1:
- `bases_ms`: the bases in one graph, sharing the backbone pass as SegAD does, without the second stage;
- `added_ms` = SegAD − that: the segmentation (k-means: early backbone blocks and a nearest-centroid search),
  the per-segment statistics (TopK per segment) and the tree ensemble;
- each base alone (`base0_patchcore_ms`, ...): what a one-class deployment of that base costs.

Full size: EDGEIAD_BENCH_FULL=1 EDGEIAD_BENCH_RUN=path/to/segad_run [EDGEIAD_BENCH_THREADS=1].
"""

from __future__ import annotations

import os

import pytest

from .conftest import full_only, run_isolated

TIMING_CODE = """
import time
import numpy as np
import onnxruntime as ort

options = ort.SessionOptions()
options.intra_op_num_threads = {threads}
options.inter_op_num_threads = 1
result = {{}}
image = np.random.default_rng(0).normal(size=(1, 3, {height}, {width})).astype(np.float32)
for name, path in {paths!r}.items():
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for _ in range({warmup}):
        session.run(None, {{"image": image}})
    times = []
    for _ in range({iters}):
        start = time.perf_counter()
        session.run(None, {{"image": image}})
        times.append((time.perf_counter() - start) * 1000.0)
    result[name + "_ms"] = float(np.median(times))
"""


def _bases_only(model):
    torch = __import__("torch")

    class BasesOnly(torch.nn.Module):
        """SegAD's bases exactly as SegAD runs them (shared backbone), their maps and scores, no second stage."""

        stats_names: tuple[str, ...] = ()
        resizable_stats: dict[str, int] = {}

        def __init__(self, inner) -> None:
            super().__init__()
            self.inner, self.image_size = inner, inner.image_size

        def forward(self, image):
            outputs = self.inner._run_bases(image, eager=False)
            return torch.cat([m for m, _ in outputs], 1), torch.stack([s for _, s in outputs], 1)

    return BasesOnly(model)


def stage_cost(run, tmp_path, threads: int = 1, iters: int = 50, warmup: int = 5) -> dict:
    """Median ms of the SegAD graph and of its base detectors' graphs (each exported from the run)."""
    from edgeiad.export.onnx import export_onnx
    from edgeiad.runs import load_model

    _record, model = load_model(run)
    batch = {"mode": "static", "size": 1, "max": 1}
    paths = {"segad": str(tmp_path / "segad.onnx")}
    export_onnx(model, tmp_path / "segad.onnx", batch, "baked", "fp32")
    for index, base in enumerate(model.bases):
        name = f"base{index}_{model.config.bases[index]}"
        paths[name] = str(tmp_path / f"{name}.onnx")
        export_onnx(base, tmp_path / f"{name}.onnx", batch, "baked", "fp32")
    paths["bases"] = str(tmp_path / "bases.onnx")
    export_onnx(_bases_only(model), tmp_path / "bases.onnx", batch, "baked", "fp32")
    height, width = model.image_size
    code = TIMING_CODE.format(
        paths=paths, threads=threads, height=height, width=width, iters=iters, warmup=warmup
    )  # fmt: skip
    result = run_isolated(code, timeout=1800)
    result.update(added_ms=result["segad_ms"] - result["bases_ms"], image_size=[height, width], threads=threads)
    result["shared_backbone"] = bool(model.shared_backbone)
    result["trees"] = model.config.rounds * model.config.parallel_trees
    result["segmentation"] = model.config.segmentation
    return result


def test_segad_stage_cost_tiny(benchmark, synthetic_mvtec, tmp_path):
    pytest.importorskip("xgboost", reason="segad's trees are trained with xgboost-cpu ([train] extra)")
    from edgeiad.engine import train
    from tests.conftest import model_overrides

    run = train("segad", synthetic_mvtec, out=tmp_path / "run", overrides=model_overrides("segad"), progress=False)
    result = benchmark.pedantic(stage_cost, args=(run, tmp_path, 1, 5, 1), rounds=1, iterations=1)
    assert result["segad_ms"] > 0 and result["bases_ms"] > 0 and "base0_patchcore_ms" in result
    assert result["shared_backbone"] is True and "base1_padim_ms" in result


@full_only
def test_segad_stage_cost_full(benchmark, tmp_path):
    run = os.environ.get("EDGEIAD_BENCH_RUN")
    if not run:
        pytest.skip("set EDGEIAD_BENCH_RUN to a segad run folder")
    threads = int(os.environ.get("EDGEIAD_BENCH_THREADS", "1"))
    result = benchmark.pedantic(stage_cost, args=(run, tmp_path, threads, 100, 10), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    alone = ", ".join(f"{k[:-3]} alone {v:.1f} ms" for k, v in result.items() if k[:4] == "base" and k[4].isdigit())
    print(
        f"\nsegad {result['segad_ms']:.1f} ms vs its bases in one graph {result['bases_ms']:.1f} ms at "
        f"{result['image_size'][0]}x{result['image_size'][1]}, {threads} thread(s): the second stage adds "
        f"{result['added_ms']:.1f} ms ({result['segmentation']} segmentation, {result['trees']} trees); {alone}"
    )
