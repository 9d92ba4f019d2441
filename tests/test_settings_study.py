"""`edgeiad study --setting fewshot|noisy|continual`: the data each case sees, refusals, resume, FM, the reports."""

from __future__ import annotations

import json

import pytest

from edgeiad.data import load_dataset
from edgeiad.errors import ConfigError, DataError
from edgeiad.study.continual import forgetting
from edgeiad.study.settings import SettingPlan, evaluation_pool, setting_dataset

from .conftest import SYNTH_SIZE, make_mvtec
from .test_cli import assert_one_line_error, run_cli

SMALL = {"*": {"image_size": (SYNTH_SIZE, SYNTH_SIZE)}, "efficientad": {"epochs": 2}, "npad": {"shift": 1}}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return make_mvtec(tmp_path_factory.mktemp("data") / "parts", n_train=12, n_good=6, n_bad=10)


def test_fewshot_draws_m_images_per_seed_and_keeps_the_test_set(parts):
    base = load_dataset(parts)
    pool = evaluation_pool(base, 0)
    first, info = setting_dataset(base, pool, "fewshot", 4, 0, 0)
    again, _ = setting_dataset(base, pool, "fewshot", 4, 0, 0)
    other, _ = setting_dataset(base, pool, "fewshot", 4, 1, 0)
    assert len(first.train) == 4 and info == {"n_train": 4, "n_test": 16}
    assert [s.path for s in first.train] == [s.path for s in again.train] != [s.path for s in other.train]
    assert first.test == pool
    with pytest.raises(DataError, match="m=13 exceeds the 12"):
        setting_dataset(base, pool, "fewshot", 13, 0, 0)


def test_noisy_moves_defects_from_the_test_set_into_training(parts):
    base = load_dataset(parts)
    pool = evaluation_pool(base, 12)  # 12 of 16 test images: noise comes first from the 4 left out
    assert len(pool) == 12 and {s.label for s in pool} == {0, 1}
    dataset, info = setting_dataset(base, pool, "noisy", 0.2, 0, 10)
    noise = [s for s in dataset.train if s.label == 1]
    assert info["n_noise"] == len(noise) == 3 and info["noise_share"] == pytest.approx(3 / 13, abs=1e-4)
    assert len(dataset.train) == 13 and not {s.path for s in noise} & {s.path for s in dataset.test}
    assert len(dataset.test) == 12 - sum(s.path in {p.path for p in pool} for s in noise)
    clean, info = setting_dataset(base, pool, "noisy", 0.0, 0, 10)
    assert info["n_noise"] == 0 and clean.test == pool and len(clean.train) == 10
    with pytest.raises(DataError, match="noise 45% of 12 good images needs 10 defective images"):
        setting_dataset(base, pool, "noisy", 0.45, 0, 0)


def test_plan_validation():
    with pytest.raises(ConfigError, match="not a manufacturing setting"):
        SettingPlan("noise", ["padim"], ["d"]).validate()
    with pytest.raises(ConfigError, match="whole numbers"):
        SettingPlan("fewshot", ["padim"], ["d"], levels=(0.5,)).validate()
    with pytest.raises(ConfigError, match=r"shares in \[0, 0.5\)"):
        SettingPlan("noisy", ["padim"], ["d"], levels=(0.6,)).validate()
    plan = SettingPlan("noisy", ["patchcore", "npad"], ["d"])
    plan.validate()
    assert plan.levels == (0.0, 0.05, 0.1, 0.2)
    assert plan.entries() == [("patchcore", "patchcore", False), ("patchcore +robust", "patchcore", True),
                              ("npad", "npad", False)]  # fmt: skip
    assert plan.overrides("patchcore", True, 0.1) == {"denoise": 0.1}


def test_forgetting_measure():
    scores = [
        [{"image_auroc": 0.9}],
        [{"image_auroc": 0.8}, {"image_auroc": 0.95}],
        [{"image_auroc": 0.7}, {"image_auroc": 0.9}, {"image_auroc": 0.6}],
    ]
    result = forgetting(scores, "image_auroc")
    assert result["final_average"] == pytest.approx((0.7 + 0.9 + 0.6) / 3)
    assert result["forgetting"] == pytest.approx(((0.9 - 0.7) + (0.95 - 0.9)) / 2)
    assert forgetting(scores, "pixel_auroc") == {"final_average": None, "forgetting": None}


@pytest.mark.slow
def test_fewshot_study_refuses_records_and_resumes(parts, tmp_path, capsys):
    pytest.importorskip("torch", reason="needs the [train] extra")
    args = ["study", "--setting", "fewshot", "--models", "patchcore,efficientad", "--data", parts, "--levels",
            "1,4", "--seeds", "0,1", "--set", f"image_size={SYNTH_SIZE}", "--set", "efficientad.epochs=2",
            "--latency-images", "2", "--out", tmp_path]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code in (0, None), err
    document = json.loads((tmp_path / "fewshot.json").read_text())
    assert len(document["cases"]) == 8
    refused = [c for c in document["cases"] if "refused" in c]
    assert {(c["model"], c["level"]) for c in refused} == {("efficientad", 1)}
    case = next(c for c in document["cases"] if c["model"] == "patchcore" and c["level"] == 4)
    assert 0.0 <= case["metrics"]["image_auroc"] <= 1.0 and case["latency_ms"] > 0 and case["model_mb"] > 0
    assert case["infer_peak_mb"] > 0 and case["n_train"] == 4
    summary = document["summary"]
    assert summary["mean"]["patchcore"]["4"]["image_auroc"][2] == 2  # mean ± std over 2 seeds
    assert summary["refused"]["efficientad"]["1"] == "needs >= 4 images"
    markdown = (tmp_path / "fewshot.md").read_text()
    assert "| efficientad | needs >= 4 images |" in markdown and "± " in markdown
    assert (tmp_path / "fewshot.html").read_text().startswith("<!doctype html>")
    code, out, _ = run_cli(args, capsys)  # resumed: nothing left to run
    assert code in (0, None) and "[" not in out.split("written")[0]


@pytest.mark.slow
def test_continual_study_compares_the_two_designs(tmp_path, capsys):
    pytest.importorskip("torch", reason="needs the [train] extra")
    first = make_mvtec(tmp_path / "first", n_train=6, n_good=4, n_bad=4, seed=1)
    second = make_mvtec(tmp_path / "second", n_train=6, n_good=4, n_bad=4, seed=2)
    args = ["study", "--setting", "continual", "--models", "padim,efficientad", "--data", f"{first},{second}",
            "--seeds", "0", "--set", f"image_size={SYNTH_SIZE}", "--set", "padim.n_features=16", "--set",
            "efficientad.epochs=2", "--out", tmp_path / "out"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code in (0, None), err
    document = json.loads((tmp_path / "out" / "continual.json").read_text())
    runs = document["runs"]
    assert set(runs) == {f"{m}|{d}|seed=0" for m in ("padim", "efficientad") for d in ("per-product", "shared")}
    per_product, shared = runs["padim|per-product|seed=0"], runs["padim|shared|seed=0"]
    assert per_product["result"]["image_auroc"]["forgetting"] == 0.0
    assert [len(row) for row in shared["scores"]] == [1, 2]
    # one model per product holds two sets of statistics; the shared model one
    assert per_product["steps"][-1]["statistics_mb"] == pytest.approx(2 * shared["steps"][-1]["statistics_mb"])
    assert "| padim | shared | 1 |" in (tmp_path / "out" / "continual.md").read_text()
    code, _, err = run_cli(["study", "--setting", "continual", "--models", "padim", "--data", first], capsys)
    assert_one_line_error(code, err, "needs at least two tasks")
