"""The bench report helps decide: a pick per latency budget, a readable plot, a table that fits 80 columns."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from edgeiad.bench.page import html_report
from edgeiad.bench.recommend import (
    budget_for,
    describe,
    precision_verdicts,
    recommendation_lines,
    recommendations,
    verdict_lines,
)
from edgeiad.bench.report import compare_table, mark_pareto, ordered, print_table
from edgeiad.bench.svg import _place_labels, boxes_svg, linear_ticks, log_ticks


def _case(model, target, precision, ms, auroc, rss=200.0, batch=1):
    key = f"{model}-{target}-{precision}-baked/b{batch}/t1"
    return {"key": key, "model": model, "target": target, "precision": precision, "stats": "baked", "batch": batch,
            "threads": 1, "status": "ok", "per_image_ms": ms, "size_mb": 3.0, "peak_rss_mb": rss,
            "latency": {"p50_ms": ms, "p95_ms": ms * 1.2, "p99_ms": ms * 1.5}, "throughput_ips": 1000 / ms,
            "accuracy": {"image_auroc": auroc}, "latencies_ms": [ms] * 50 + [ms * 40]}  # fmt: skip


@pytest.fixture
def document():
    cases = [
        _case("padim", "onnx", "fp32", 4.2, 0.91, rss=180),
        _case("padim", "openvino", "int8", 2.1, 0.90, rss=150),
        _case("patchcore", "onnx", "fp32", 16.0, 0.96, rss=320),
        _case("patchcore", "openvino", "fp32", 9.5, 0.96, rss=300),
        _case("patchcore", "openvino", "int8", 4.4, 0.91, rss=260),
        {"key": "padim-trt-fp32-baked/b1/t1", "model": "padim", "status": "skipped", "reason": "no TensorRT here"},
    ]
    mark_pareto(cases)
    env = {"cpu": {"model": "Test CPU", "cores": 2, "isa": ["avx2"]}, "memory_gb": 8, "gpus": [], "os": "Linux",
           "python": "3.11", "versions": {"edgeiad": "0.1.0"}}  # fmt: skip
    return {"created": "now", "environment": env, "settings": {"iters": 3}, "cases": ordered(cases)}


def test_one_pick_per_budget_most_accurate_then_lightest(document):
    picks = recommendations(document["cases"])
    assert [(p["budget_ms"], p["key"].split("/")[0]) for p in picks] == [
        (2.1, "padim-openvino-int8-baked"),
        (4.2, "padim-onnx-fp32-baked"),  # patchcore/openvino/int8 ties at 0.91 but is slower and heavier
        (9.5, "patchcore-openvino-fp32-baked"),  # patchcore/onnx is as accurate but slower
    ]
    line = recommendation_lines(picks)[-1]
    assert line == "for ≤ 9.5 ms on this box: patchcore/openvino/fp32, AUROC 0.960, 300 MB RSS"
    assert budget_for(4.13) == 4.2 and budget_for(0.0131) == pytest.approx(0.014) and budget_for(20) == 20


def test_bench_says_whether_a_reduced_precision_pays_against_fp32_of_the_same_case():
    cases = [
        _case("patchcore", "onnx", "fp32", 20.0, 0.960),
        _case("patchcore", "onnx", "int8", 14.0, 0.958),  # faster, AUROC kept: pays
        _case("padim", "openvino", "fp32", 10.0, 0.930),
        _case("padim", "openvino", "int8", 11.0, 0.930),  # slower: does not pay
        _case("padim", "onnx", "fp32", 10.0, 0.930),
        _case("padim", "onnx", "int8", 6.0, 0.900),  # faster but loses 0.03 AUROC: does not pay
        _case("efficientad", "onnx", "int8", 6.0, 0.900),  # no fp32 to compare with: no verdict
    ]
    verdicts = {(v["model"], v["target"]): v for v in precision_verdicts(cases)}
    assert set(verdicts) == {("patchcore", "onnx"), ("padim", "openvino"), ("padim", "onnx")}
    assert verdicts["patchcore", "onnx"]["pays"] and verdicts["patchcore", "onnx"]["latency_ratio"] == 0.7
    assert not verdicts["padim", "openvino"]["pays"] and not verdicts["padim", "onnx"]["pays"]
    lines = verdict_lines([verdicts["patchcore", "onnx"], verdicts["padim", "openvino"]])
    assert lines[0] == "patchcore/onnx int8 vs fp32 (1 thread, batch 1): 0.70x latency, AUROC -0.002: pays"
    assert lines[1].endswith("1.10x latency, AUROC +0.000: does not pay here: keep fp32")


def test_each_int8_scope_gets_its_own_verdict_against_fp32():
    search = _case("patchcore", "onnx", "int8", 16.0, 0.961) | {
        "key": "patchcore-onnx-int8-search-baked/b1/t1", "int8_scope": "search"
    }  # fmt: skip
    cases = [_case("patchcore", "onnx", "fp32", 20.0, 0.960), _case("patchcore", "onnx", "int8", 12.0, 0.957), search]
    verdicts = precision_verdicts(cases)
    assert [(v["precision"], v["int8_scope"], v["latency_ratio"]) for v in verdicts] == [
        ("int8", "all", 0.6),
        ("int8", "search", 0.8),
    ]
    lines = verdict_lines(verdicts)
    assert lines[1] == (
        "patchcore/onnx int8 (INT8 search only) vs fp32 (1 thread, batch 1): 0.80x latency, AUROC +0.001: pays"
    )
    assert describe(search) == "patchcore/onnx/int8 (INT8 search only)"


def test_the_verdict_divides_out_a_box_that_slowed_down_between_two_cases():
    # fp32 ran while the box was slow (its backbone too: 30 ms); INT8 ran later on a quiet box (backbone 20 ms)
    fp32 = _case("patchcore", "onnx", "fp32", 45.0, 0.960) | {"e2e_over_fp32_backbone": 45.0 / 30.0}
    int8 = _case("patchcore", "onnx", "int8", 18.0, 0.958) | {"e2e_over_fp32_backbone": 18.0 / 20.0}
    (verdict,) = precision_verdicts([fp32, int8])
    assert verdict["raw_latency_ratio"] == pytest.approx(0.4)  # what the clock said
    assert verdict["latency_ratio"] == pytest.approx(0.6)  # against the same graph timed beside each
    (verdict,) = precision_verdicts([_case("patchcore", "onnx", "fp32", 45.0, 0.96), int8])
    assert verdict["latency_ratio"] == pytest.approx(0.4)  # no reference in one of them: the clock's ratio


def test_a_slower_case_is_recommended_only_when_it_is_more_accurate(document):
    for case in document["cases"]:
        if case.get("accuracy"):
            case["accuracy"]["image_auroc"] = 1.0  # all perfect: the fastest one is the only pick
    assert [p["key"].split("/")[0] for p in recommendations(document["cases"])] == ["padim-openvino-int8-baked"]


def test_terminal_output_fits_80_columns_and_never_splits_numbers(document):
    buffer = io.StringIO()
    print_table(document, Console(file=buffer, width=80, color_system=None))
    text = buffer.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "for ≤ 9.5 ms on this box" in text and "skipped: padim-trt" in text
    for number in ("4.2", "0.96", "320", "16"):
        assert re.search(rf"(^|\s){re.escape(number)}(\s|$)", text, re.M), number


def test_served_model_table_fits_80_columns_with_batching_and_clients(document):
    def served(name, clients, batching, ips):
        return {"key": f"{name}/c{clients}", "model": "patchcore", "served_as": name, "target": "triton",
                "precision": "fp32", "stats": "baked", "batch": 1, "threads": 1, "clients": clients,
                "dynamic_batching": batching, "status": "ok", "throughput_ips": ips, "per_image_ms": 1000 / ips,
                "latency": {"p50_ms": 12.5, "p95_ms": 31.25, "p99_ms": 40.0}, "peak_rss_mb": None}  # fmt: skip

    cases = [served("patchcore-line3-nobatch", 16, False, 70.0), served("patchcore-line3", 16, True, 123.4)]
    cases.append({"key": "padim/c1", "model": "padim", "clients": 1, "status": "failed", "reason": "server down"})
    buffer = io.StringIO()
    print_table({**document, "cases": cases}, Console(file=buffer, width=80, color_system=None))
    lines = buffer.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = [line.split() for line in lines if line.strip().startswith("patchcore-line3")]
    assert rows == [
        ["patchcore-line3", "on", "16", "123", "12.5", "31.2", "40"],
        ["patchcore-line3-nobatch", "off", "16", "70", "12.5", "31.2", "40"],
    ]
    assert "failed: padim/c1: server down" in lines
    assert "3 clients" not in html_report({**document, "cases": cases}) and "16 clients, batching" in html_report(
        {**document, "cases": cases}
    )


def test_ticks_are_even_and_labels_do_not_overlap():
    assert log_ticks(0.7, 60) == [1, 2, 5, 10, 20, 50]
    ticks = linear_ticks(0.874, 0.982)
    steps = {round(b - a, 6) for a, b in zip(ticks, ticks[1:])}
    assert len(steps) == 1 and 3 <= len(ticks) <= 6
    crowded = [(300 + i, 200 + i % 3, f"patchcore openvino int8 {i}") for i in range(6)]
    placed = _place_labels(crowded, (60, 16, 576, 338))
    boxes = [(x, y - 8, x + len(label) * 5.5, y + 2) for x, y, label, _ in placed]
    for i, a in enumerate(boxes):
        assert 60 <= a[0] and a[2] <= 576, "label clipped"
        assert not any(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3] for b in boxes[i + 1 :])


def test_report_has_recommendation_step_front_model_labels_and_folded_table(document):
    page = html_report(document)
    assert page.index("Recommendation") < page.index("Latency vs AUROC") < page.index("<details>")
    assert 'class="front"' in page and ">patchcore openvino fp32<" in page
    front = re.search(r'class="front" points="([^"]+)"', page).group(1).split()
    ys = [float(p.split(",")[1]) for p in front]
    assert len(front) >= 3 and all(b <= a for a, b in zip(ys, ys[1:]))  # a staircase going up (SVG y down)
    assert page.count("<table>") == 3  # compact cases, the folded full table, the environment


def test_latency_boxes_are_clipped_at_p99_and_outliers_marked():
    svg = boxes_svg([("fast", [1.0] * 99 + [80.0], "#000"), ("slow", [5.0] * 100, "#111")])
    widths = [float(w) for w in re.findall(r'<rect x="[^"]+" y="[^"]+" width="([^"]+)"', svg)]
    assert "▸ max 80 ms" in svg and all(w >= 1 for w in widths)
    assert "axis ends at the largest p99" in svg


def test_compare_table_fits_80_columns_with_whole_numbers():
    rows = [{"key": "patchcore-openvino-int8-sidecar/b8/t2", "ratios": {"per_image_ms": 1.234, "peak_rss_mb": 0.97},
             "regressions": ["per_image_ms", "p95_ms"]}]  # fmt: skip
    buffer = io.StringIO()
    Console(file=buffer, width=80, color_system=None).print(compare_table(rows, "new vs base"))
    text = buffer.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "1.23" in text and "0.97" in text and "ms, p95" in text and "patchcore-openvino-int8" in text
