"""`edgeiad study`: plan parsing, one table over models × datasets × variants, exported vs eager, resume."""

from __future__ import annotations

import json

import pytest

from edgeiad.errors import ConfigError
from edgeiad.study import StudyPlan, Variant, parse_settings, parse_vary, run_study
from edgeiad.study.report import summarise

from .conftest import SYNTH_SIZE
from .test_cli import assert_one_line_error, run_cli

SMALL = {"*": {"image_size": (SYNTH_SIZE, SYNTH_SIZE)}, "patchcore": {"coreset_ratio": 0.25}}


def test_settings_and_variants_parse():
    assert parse_settings(["image_size=320", "patchcore.coreset_ratio=0.1", "layers=[2,4]", "backbone=lite"]) == {
        "*": {"image_size": (320, 320), "layers": (2, 4), "backbone": "lite"},
        "patchcore": {"coreset_ratio": 0.1},
    }
    assert parse_settings(["image_size=160x416"])["*"]["image_size"] == (160, 416)
    variants = parse_vary("layers=[4,10],[2,4,10]")
    assert [v.name for v in variants] == ["layers=[4,10]", "layers=[2,4,10]"]
    assert variants[1].overrides == {"layers": (2, 4, 10)}
    assert parse_vary(None) == [Variant("default")]
    for bad in ("image_size", "=1", "image_size="):
        with pytest.raises(ConfigError, match="--vary"):
            parse_vary(bad)
    with pytest.raises(ConfigError, match="--set"):
        parse_settings(["no-equals-sign"])


def test_plan_validation_names_the_problem():
    with pytest.raises(ConfigError, match="patchcore has no setting 'n_features'"):
        StudyPlan(["patchcore"], ["d"], settings={"patchcore": {"n_features": 3}}).validate()
    with pytest.raises(ConfigError, match="applies to none of padim"):
        StudyPlan(["padim"], ["d"], variants=parse_vary("coreset_ratio=0.1,0.2")).validate()
    with pytest.raises(ConfigError, match="image size 100x100"):
        StudyPlan(["padim"], ["d"], settings=parse_settings(["image_size=100"])).validate()
    with pytest.raises(ConfigError, match="--scoring"):
        StudyPlan(["padim"], ["d"], scoring="fast").validate()
    # a shared setting is applied only to the models that have it
    plan = StudyPlan(["patchcore", "padim"], ["d"], settings=parse_settings(["coreset_ratio=0.5"]))
    plan.validate()
    assert plan.overrides("padim", Variant("default")) == {}


def test_summary_means_and_ranks():
    def case(model, dataset, auroc, pixel=None):
        metrics = {"image_auroc": auroc, **({"pixel_auroc": pixel} if pixel is not None else {})}
        return {"id": f"{model}|default|{dataset}", "model": model, "variant": "default", "dataset": dataset,
                "metrics": metrics, "fit_s": 1.0, "latency_ms": None}  # fmt: skip

    rows = summarise([case("a", "x", 0.9, 0.8), case("b", "x", 0.7, 0.9), case("a", "y", 0.6), case("b", "y", 0.6)])
    by_model = {row["model"]: row for row in rows}
    assert by_model["a"]["image_auroc"] == pytest.approx(0.75) and by_model["b"]["image_auroc"] == pytest.approx(0.65)
    assert by_model["a"]["rank_image_auroc"] == pytest.approx((1 + 1.5) / 2)  # tie on y shares rank 1.5
    assert by_model["a"]["pixel_auroc"] == pytest.approx(0.8) and by_model["a"]["pixel_auroc_datasets"] == 1
    assert by_model["b"]["rank_pixel_auroc"] == 1.0
    assert [row["model"] for row in rows] == ["a", "b"]


@pytest.mark.slow
def test_exported_study_matches_eager_and_resumes(synthetic_mvtec, tmp_path):
    pytest.importorskip("torch", reason="needs the [train] extra")
    plan = StudyPlan(["patchcore"], [str(synthetic_mvtec)], settings=SMALL, latency_images=2)
    document = run_study(plan, tmp_path / "exported", command="edgeiad study ...")
    eager = run_study(StudyPlan(["patchcore"], [str(synthetic_mvtec)], settings=SMALL, scoring="eager"), tmp_path / "e")
    (exported_case,), (eager_case,) = document["cases"], eager["cases"]
    for key in ("image_auroc", "image_ap", "pixel_auroc", "aupro"):
        assert exported_case["metrics"][key] == pytest.approx(eager_case["metrics"][key], abs=2e-3), key
    assert exported_case["latency_ms"] > 0 and eager_case["latency_ms"] is None
    assert exported_case["config"]["image_size"] == [SYNTH_SIZE, SYNTH_SIZE] and exported_case["n_test"] == 8
    saved = json.loads((tmp_path / "exported" / "study.json").read_text())
    assert saved["summary"][0]["image_auroc"] == exported_case["metrics"]["image_auroc"]
    markdown = (tmp_path / "exported" / "study.md").read_text()
    assert "| patchcore | 1 |" in markdown and "exported ONNX artifact" in markdown
    assert "<svg" in (tmp_path / "exported" / "study.html").read_text()
    lines = []
    run_study(plan, tmp_path / "exported", echo=lines.append)
    assert lines == [f"[1/1] patchcore|default|{synthetic_mvtec.name}: done before, kept"]


def test_cli_study_errors_are_one_line(synthetic_mvtec, tmp_path, capsys):
    code, _, err = run_cli(["study", "--models", "padim", "--data", synthetic_mvtec, "--set", "nope=1"], capsys)
    assert_one_line_error(code, err, r"setting 'nope' applies to none of padim")
    (tmp_path / "train" / "good").mkdir(parents=True)
    code, _, err = run_cli(["study", "--models", "padim", "--data", tmp_path, "--out", tmp_path / "s"], capsys)
    assert_one_line_error(code, err, r"no training images")
