"""`edgeiad bench`: a tiny real run (harness correctness, not timing), the report in headless Chromium, compare."""

from __future__ import annotations

import copy
import csv
import json
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from edgeiad.bench.cases import ArtifactKey, plan, skip_reason
from edgeiad.bench.compare import compare
from edgeiad.bench.report import COLUMNS, mark_pareto, ordered
from edgeiad.errors import ConfigError

from .test_cli import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def bench_out(trained_runs, exported, synthetic_mvtec):
    """One tiny bench over every model × onnx/openvino/trt at fp32, reusing the session's trained runs and their
    exported artifacts (bench re-exports only an artifact that is missing or from another run)."""
    from edgeiad.cli import main

    out, runs_dir = exported, next(iter(trained_runs.values())).parent
    argv = [
        "bench", "--models", "all", "--targets", "onnx,openvino,trt", "--precisions", "fp32",
        "--data", str(synthetic_mvtec), "--runs", str(runs_dir), "--iters", "3", "--warmup", "1",
        "--batch", "1,2", "--out", str(out),
    ]  # fmt: skip
    manifests = sorted(out.glob("artifacts/*/manifest.json"))
    before = [path.stat().st_mtime_ns for path in manifests]
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code in (0, None)
    assert manifests and [path.stat().st_mtime_ns for path in manifests] == before  # reused, not exported again
    return out


def test_bench_writes_one_record_per_case_and_never_drops_one(bench_out, trained_runs):
    document = json.loads((bench_out / "results.json").read_text())
    assert document["schema_version"] == 1
    env = document["environment"]
    assert env["cpu"]["cores"] >= 1 and "onnxruntime" in env["versions"]
    cases = document["cases"]
    assert len(cases) == len(trained_runs) * 3 * 2  # models × targets × batches
    by_status = {}
    for case in cases:
        by_status.setdefault(case["status"], []).append(case)
    assert all(c["target"] == "trt" for c in by_status.get("skipped", []))
    assert all("TensorRT" in c["reason"] or "GPU" in c["reason"] for c in by_status.get("skipped", []))
    for case in by_status["ok"]:
        assert case["torch_imported"] is False  # the runtime measured is the torch-free one
        assert 0 < case["latency"]["p50_ms"] <= case["latency"]["p99_ms"]
        assert case["peak_rss_mb"] > 0 and case["size_mb"] > 0 and case["load_s"] > 0
        assert case["backbone"]["p50_ms"] > 0 and case["e2e_over_backbone"] > 0
        assert 0.5 <= case["accuracy"]["image_auroc"] <= 1.0 and "aupro" in case["accuracy"]
        assert set(case["split_ms"]) == {"preprocess_ms", "inference_ms", "postprocess_ms"}
    assert {run.name for run in trained_runs.values()} == {m for m in document["fits"]}
    assert {model: fit["run"] for model, fit in document["fits"].items()} == {  # --runs reused, nothing retrained
        model: str(run) for model, run in trained_runs.items()
    }
    with open(bench_out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(COLUMNS) and len(rows) == len(cases)


def test_report_renders_its_plots_in_headless_chromium(bench_out, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium binary: .ci/run installs the Debian package 'chromium'")
    html = (bench_out / "report.html").read_text()
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "<script" not in html
    shot = tmp_path / "report.png"
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,900",
        f"--screenshot={shot}", (bench_out / "report.html").as_uri(),
    ]  # fmt: skip
    subprocess.run(command, capture_output=True, timeout=120, check=False)
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (900, 1200)
    plot = image[:520]  # the two scatter plots sit at the top of the page
    # The first model's points are drawn in #1f77b4 (BGR 180,119,31): rendered plot, not an empty page.
    blue = np.all(np.abs(plot.astype(int) - (180, 119, 31)) < 30, axis=2)
    assert blue.sum() > 50, "no plotted points found in the screenshot"


def _record(key, latency, auroc, status="ok", **extra):
    model = key.split("-")[0]
    return {"key": key, "model": model, "status": status, "per_image_ms": latency, "size_mb": 1.0,
            "peak_rss_mb": 100.0, "latency": {"p50_ms": latency, "p95_ms": latency * 1.1},
            "throughput_ips": 1000 / latency, "accuracy": {"image_auroc": auroc}, **extra}  # fmt: skip


def test_pareto_front_and_order():
    records = [
        _record("a-fast", 5.0, 0.80),
        _record("a-good", 20.0, 0.95),
        _record("a-dominated", 25.0, 0.90),
        {"key": "a-trt", "model": "a", "status": "skipped", "reason": "no TensorRT"},
    ]
    mark_pareto(records)
    assert [r.get("pareto") for r in records[:3]] == [True, True, False]
    assert [r["key"] for r in ordered(records)] == ["a-fast", "a-good", "a-dominated", "a-trt"]


def test_compare_flags_regressions_only(tmp_path, capsys):
    base = {"schema_version": 1, "cases": [_record("m-x", 10.0, 0.9), _record("m-y", 10.0, 0.9)]}
    new = copy.deepcopy(base)
    new["cases"][0] = _record("m-x", 12.0, 0.9)  # 20 % slower
    rows = {row["key"]: row for row in compare(base, new)}
    assert "per_image_ms" in rows["m-x"]["regressions"] and rows["m-y"]["regressions"] == []
    assert rows["m-x"]["ratios"]["per_image_ms"] == pytest.approx(1.2)
    (tmp_path / "a.json").write_text(json.dumps(base))
    (tmp_path / "b.json").write_text(json.dumps(new))
    code, out, _ = run_cli(["bench", "compare", tmp_path / "a.json", tmp_path / "b.json"], capsys)
    assert code == 1 and "2 cases compared, 1 with regressions" in out  # a CI gate: non-zero on a regression
    code, out, _ = run_cli(
        ["bench", "compare", tmp_path / "a.json", tmp_path / "b.json", "--threshold", "0.25"], capsys
    )
    assert code == 0 and "0 with regressions" in out
    code, out, _ = run_cli(["bench", "compare", tmp_path / "a.json", tmp_path / "b.json", "--json"], capsys)
    assert code == 1 and json.loads(out)["regressions"] == 1
    (tmp_path / "c.json").write_text("{}")
    code, _, err = run_cli(["bench", "compare", tmp_path / "a.json", tmp_path / "c.json"], capsys)
    assert_one_line_error(code, err, "not an edgeiad bench results.json")


def test_plan_and_skip_reasons():
    cases = plan("patchcore", "onnx", "fp32,int8", "baked", "1,8", "1,2")
    assert len(cases) == 8 and cases[0].key == "patchcore-onnx-fp32-baked/b1/t1"
    with pytest.raises(ConfigError, match="--targets"):
        plan("patchcore", "tflite", "fp32", "baked", "1", "1")
    with pytest.raises(ConfigError, match="--batch"):
        plan("patchcore", "onnx", "fp32", "baked", "0", "1")
    reason = skip_reason(ArtifactKey("patchcore", "trt", "fp32", "baked"))
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        assert "TensorRT is not installed" in reason


def test_int8_scopes_multiply_the_int8_artifacts_only():
    cases = plan("patchcore,padim", "onnx,trt", "fp32,int8", "baked", "1", "1", "all,search")
    keys = [case.key for case in cases]
    assert keys[:4] == [
        "patchcore-onnx-fp32-baked/b1/t1",  # fp32 has nothing to scope: one artifact
        "patchcore-onnx-int8-baked/b1/t1",  # scope "all" keeps the name earlier benches used (bench compare)
        "patchcore-onnx-int8-search-baked/b1/t1",
        "patchcore-trt-fp32-baked/b1/t1",
    ]
    assert len(cases) == 2 * 2 * 3
    reasons = {case.artifact.name: skip_reason(case.artifact) for case in cases if case.artifact.int8_scope != "all"}
    assert reasons["patchcore-onnx-int8-search-baked"] is None
    # refused before any export, with export's own reason: nothing to quantize, or a target that keeps it fp32
    assert "padim has no nearest-neighbour search" in reasons["padim-onnx-int8-search-baked"]
    assert "TensorRT keeps the search fp32" in reasons["patchcore-trt-int8-search-baked"]
    assert "use --stats baked" in skip_reason(ArtifactKey("patchcore", "onnx", "int8", "sidecar", "search"))
    with pytest.raises(ConfigError, match="--int8-scopes 'both': unknown both"):
        plan("patchcore", "onnx", "int8", "baked", "1", "1", "both")
    with pytest.raises(ConfigError, match="applies to INT8 cases only; add int8 to --precisions"):
        plan("patchcore", "onnx", "fp32", "baked", "1", "1", "search")


def test_bench_streams_scores_live_cameras_through_the_watch_loop(trained_runs, synthetic_mvtec, tmp_path, capsys):
    runs_dir, out = next(iter(trained_runs.values())).parent, tmp_path / "bench"
    args = [
        "bench", "--models", "padim", "--targets", "onnx", "--data", synthetic_mvtec, "--runs", runs_dir,
        "--iters", "2", "--warmup", "0", "--accuracy-images", "4", "--batch", "1,2", "--streams", "1,2",
        "--stream-seconds", "1", "--out", out,
    ]  # fmt: skip
    code, stdout, _ = run_cli(args, capsys)
    assert code in (0, None)
    document = json.loads((out / "results.json").read_text())
    assert document["settings"]["streams"] == [1, 2] and document["settings"]["stream_seconds"] == 1.0
    single, double = sorted(document["cases"], key=lambda case: case["batch"])
    assert single["status"] == "ok" and not double.get("streams")  # the loop batches by itself: batch-1 cases only
    rows = single["streams"]
    assert [(row["streams"], row["max_batch"]) for row in rows] == [(1, 1), (2, 2), (2, 1)]
    for row in rows:
        assert row["frames"] > 0 and row["fps"] > 0 and row["latency_ms_p50"] > 0 and row["frame_errors"] == 0
    assert rows[1]["mean_batch"] > 1.0 and rows[2]["mean_batch"] == 1.0  # batched, then one frame per call
    with open(out / "streams.csv") as handle:
        written = [(row["key"], row["streams"], row["max_batch"]) for row in csv.DictReader(handle)]
    assert written == [(single["key"], "1", "1"), (single["key"], "2", "2"), (single["key"], "2", "1")]
    assert "frames/s" in stdout and "--max-batch 1" in stdout
    assert "Several cameras" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--streams", "0"], "--streams '0' is invalid"),
        (["--streams", "2,100"], "camera counts from 1 to 64"),
        (["--streams", "2", "--stream-seconds", "0"], "--stream-seconds 0.0"),
        (["--streams", "2", "--server", "http://127.0.0.1:9"], "measured with --clients"),
    ],
)
def test_bench_streams_refuses_bad_settings_in_one_line(extra, pattern, synthetic_mvtec, tmp_path, capsys):
    args = ["bench", "--models", "padim", "--data", synthetic_mvtec, "--out", tmp_path / "bench", *extra]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "bench" / "results.json").exists()


def test_int8_cases_are_timed_against_the_backbone_quantized_as_their_artifact(
    trained_runs, exported, synthetic_mvtec, tmp_path, capsys
):
    pytest.importorskip("nncf", reason="OpenVINO INT8 needs the openvino extra (nncf)")
    import onnx
    import openvino as ov

    runs_dir, out = trained_runs["patchcore"].parent, tmp_path / "bench"
    for target in ("onnx", "openvino"):  # the session's fp32 artifacts: only the INT8 ones are exported here
        name = f"patchcore-{target}-fp32-baked"
        shutil.copytree(exported / "artifacts" / name, out / "artifacts" / name)
    args = [
        "bench", "--models", "patchcore", "--targets", "onnx,openvino", "--precisions", "fp32,int8",
        "--data", synthetic_mvtec, "--runs", runs_dir, "--iters", "2", "--warmup", "0", "--accuracy-images", "4",
        "--out", out,
    ]  # fmt: skip
    code, _, _ = run_cli(args, capsys)
    assert code in (0, None)
    cases = {
        (case["target"], case["precision"]): case for case in json.loads((out / "results.json").read_text())["cases"]
    }
    for target in ("onnx", "openvino"):
        fp32, int8 = cases[(target, "fp32")], cases[(target, "int8")]
        assert fp32["status"] == int8["status"] == "ok"
        assert fp32["backbone"] == fp32["backbone_fp32"] and fp32["e2e_over_fp32_backbone"] == fp32["e2e_over_backbone"]
        assert int8["backbone"] != int8["backbone_fp32"]  # two graphs timed, not one copied
        latency = int8["latency"]["p50_ms"]
        assert int8["e2e_over_backbone"] == pytest.approx(latency / int8["backbone"]["p50_ms"])
        assert int8["e2e_over_fp32_backbone"] == pytest.approx(latency / int8["backbone_fp32"]["p50_ms"])

    def count(nodes, kind):
        return sum(node == kind for node in nodes)

    def search_matmuls(target):
        export = json.loads((out / "artifacts" / f"patchcore-{target}-int8-baked" / "manifest.json").read_text())
        export = export["export"]
        return export["int8_search_matmuls"] if target == "onnx" else export["openvino"]["int8"]["search_matmuls"]

    # Quantized as the artifact is: the same backbone convolutions get int8 weights (the same DequantizeLinear /
    # FakeQuantize count, beside the artifact's INT8 search MatMuls: models/patchcore/lifted.py), the stem and
    # first blocks none in either. The reference is the backbone alone: the search is what it is compared with.
    reference = [n.op_type for n in onnx.load(str(out / "backbones" / "patchcore-int8.onnx")).graph.node]
    artifact = [
        n.op_type for n in onnx.load(str(out / "artifacts" / "patchcore-onnx-int8-baked" / "model.onnx")).graph.node
    ]
    assert search_matmuls("onnx") == 5  # 4 region banks and the coarse bank
    # two DequantizeLinear per search MatMul: its lifted queries and its weights
    assert count(reference, "DequantizeLinear") + 2 * 5 == count(artifact, "DequantizeLinear") > 10
    core = ov.Core()
    reference = [
        op.get_type_name()
        for op in core.read_model(out / "backbones" / "patchcore-int8-openvino" / "model.xml").get_ops()
    ]
    artifact = [
        op.get_type_name()
        for op in core.read_model(out / "artifacts" / "patchcore-openvino-int8-baked" / "model.xml").get_ops()
    ]
    assert search_matmuls("openvino") == 5
    # one FakeQuantize per search MatMul, on its lifted queries (the saved IR keeps weights as int8 constants)
    assert count(reference, "FakeQuantize") + 5 == count(artifact, "FakeQuantize") > 5
    with open(out / "results.csv") as handle:
        assert all(row["e2e_over_fp32_backbone"] for row in csv.DictReader(handle))


def test_an_int8_search_case_keeps_the_fp32_backbone_and_is_timed_against_it(
    trained_runs, synthetic_mvtec, tmp_path, capsys
):
    import onnx

    runs_dir, out = trained_runs["patchcore"].parent, tmp_path / "bench"
    args = [
        "bench", "--models", "patchcore", "--targets", "onnx", "--precisions", "int8", "--int8-scopes", "search",
        "--data", synthetic_mvtec, "--runs", runs_dir, "--iters", "2", "--warmup", "0", "--accuracy-images", "4",
        "--out", out,
    ]  # fmt: skip
    code, stdout, _ = run_cli(args, capsys)
    assert code in (0, None)
    (case,) = json.loads((out / "results.json").read_text())["cases"]
    assert case["status"] == "ok" and case["key"] == "patchcore-onnx-int8-search-baked/b1/t1"
    assert case["int8_scope"] == "search" and case["precision"] == "int8"
    # no INT8 backbone was made to time it against: its backbone is the fp32 one
    assert case["backbone"] == case["backbone_fp32"] and not (out / "backbones" / "patchcore-int8.onnx").exists()
    assert case["e2e_over_backbone"] == case["e2e_over_fp32_backbone"]
    manifest = json.loads((out / "artifacts" / "patchcore-onnx-int8-search-baked" / "manifest.json").read_text())
    assert manifest["export"]["int8_search_matmuls"] == 5 and "backbone fp32" in manifest["export"]["int8"]
    nodes = onnx.load(str(out / "artifacts" / "patchcore-onnx-int8-search-baked" / "model.onnx")).graph.node
    assert sum(node.op_type == "DequantizeLinear" for node in nodes) == 2 * 5  # the search's MatMuls, no Conv
    with open(out / "results.csv") as handle:
        (row,) = csv.DictReader(handle)
    assert row["int8_scope"] == "search"
    assert "INT8 search only" in stdout  # the recommendation names what was quantized


def test_a_backbone_reference_from_another_run_is_rebuilt(tmp_path):
    from edgeiad.bench.backbone import made_from, record_source

    graph, run_a, run_b = tmp_path / "patchcore.onnx", tmp_path / "a", tmp_path / "b"
    assert not made_from(graph, run_a)  # nothing there yet
    graph.write_bytes(b"graph")
    assert not made_from(graph, run_a)  # a graph of unknown origin (an older bench folder) is not trusted
    record_source(graph, run_a)
    assert made_from(graph, run_a) and not made_from(graph, run_b)
    graph.with_name("patchcore.onnx.source.json").write_text("{not json")
    assert not made_from(graph, run_a)


def test_the_e2e_and_backbone_calls_are_timed_in_interleaved_blocks():
    from edgeiad.bench import worker

    order = []
    runners = {name: (lambda name=name: order.append(name)) for name in ("e2e", "fp32", "int8")}
    calls = worker._timed(runners, iters=25)
    assert {name: len(times) for name, times in calls.items()} == {"e2e": 25, "fp32": 25, "int8": 25}
    blocks = [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name]
    # 10 rounds of e2e, fp32, int8 (3 calls each in the first 5 rounds, 2 after): a slow stretch of the box
    # falls on every graph alike, not on whichever happened to run then
    assert blocks == ["e2e", "fp32", "int8"] * worker.ROUNDS and order[:4] == ["e2e"] * 3 + ["fp32"]
    assert len(worker._timed({"e2e": runners["e2e"]}, iters=2)["e2e"]) == 2  # fewer calls than rounds
