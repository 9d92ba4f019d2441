"""CLI tests: the commands users type, and one red line + exit 2 for every bad-data case."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeiad.cli import main

from .conftest import SYNTH_SIZE, make_mvtec

SMALL = ["--image-size", str(SYNTH_SIZE)]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert re.search(pattern, errors[0]), errors[0]


def test_models_lists_the_registry(capsys):
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0
    assert "patchcore" in out and "padim" in out


def test_train_evaluate_predict_round_trip(synthetic_mvtec, tmp_path, capsys):
    pytest.importorskip("torch", reason="needs the [train] extra")
    run = tmp_path / "run"
    code, out, _ = run_cli(["train", "padim", "--data", synthetic_mvtec, "--out", run, *SMALL], capsys)
    assert code == 0 and "image_auroc" in out
    code, out, _ = run_cli(["evaluate", run, "--json"], capsys)
    assert code == 0
    evaluated = json.loads(out)
    assert evaluated["image_auroc"] == json.loads((run / "metrics.json").read_text())["image_auroc"]
    assert evaluated["pixel_eval"] == "original" and len(evaluated["images"]) == 8
    code, out, _ = run_cli(["evaluate", run, "--csv", "--fast"], capsys)
    assert code == 0 and "\r" not in out
    stored = {row["path"]: row["score"] for row in csv.DictReader(io.StringIO((run / "scores.csv").read_text()))}
    assert {row["path"]: row["score"] for row in csv.DictReader(io.StringIO(out))} == stored
    image = next((synthetic_mvtec / "test/blob").glob("*.png"))
    code, out, _ = run_cli(["predict", run, image, "--save-maps", tmp_path / "maps"], capsys)
    assert code == 0
    line = json.loads(out.strip().splitlines()[0])
    assert line["path"] == str(image) and line["is_anomalous"] is True and 0.5 <= line["score"] <= 1.0
    assert (tmp_path / "maps" / f"{image.stem}_overlay.png").is_file()
    assert line["raw_score"] == pytest.approx(
        evaluated["images"][[i["path"] for i in evaluated["images"]].index(str(image))]["score"]
    )


def test_train_set_overrides_any_config_field_and_records_it(synthetic_mvtec, tmp_path, capsys):
    pytest.importorskip("torch", reason="needs the [train] extra")
    run = tmp_path / "run"
    args = ["train", "patchcore", "--data", synthetic_mvtec, "--out", run, *SMALL]
    code, _, err = run_cli([*args, "--set", "neighbourhood=3", "--set", "layers=[4, 10]", "--set", "sigma=2"], capsys)
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())["model"]
    assert config["neighbourhood"] == 3 and config["layers"] == [4, 10] and config["sigma"] == 2
    default = tmp_path / "default"
    assert run_cli(["train", "patchcore", "--data", synthetic_mvtec, "--out", default, *SMALL], capsys)[0] == 0
    assert json.loads((default / "config.json").read_text())["model"]["neighbourhood"] == 1


@pytest.mark.parametrize(
    ("setting", "pattern"),
    [
        (["--set", "colour=red"], r"patchcore has no setting 'colour': use one of .*neighbourhood"),
        (["--set", "neighbourhood"], r"--set 'neighbourhood' is invalid: use key=value"),
        (["--set", "neighbourhood=4"], r"neighbourhood 4 is invalid: use an odd side"),
        (["--set", "sigma=1", "--set", "sigma=2"], r"--set sigma is given twice"),
        (["--set", "seed=1", "--seed", "2"], r"seed is given both as --set and as its own option"),
    ],
)
def test_train_set_rejects_unknown_or_bad_settings_before_training(setting, pattern, synthetic_mvtec, tmp_path, capsys):
    pytest.importorskip("torch", reason="needs the [train] extra")
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "patchcore", "--data", synthetic_mvtec, "--out", run, *SMALL, *setting], capsys)
    assert_one_line_error(code, err, pattern)
    assert not run.exists()


def test_predict_keeps_folder_structure_and_writes_raw_maps_at_the_images_size(
    trained_runs, synthetic_mvtec, tmp_path, capsys
):
    run, out = trained_runs["padim"], tmp_path / "out"
    code, text, _ = run_cli(
        ["predict", run, synthetic_mvtec / "test", "--save-raw", out, "--save-maps", out, "--csv"], capsys
    )
    assert code == 0 and "\r" not in text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 8  # test/good/000.png and test/blob/000.png share a name: both kept
    for row in rows:
        relative = Path(row["path"]).relative_to(synthetic_mvtec / "test").with_suffix("")
        raw = np.load(out / relative.parent / f"{relative.name}.npy")
        assert row["raw_map"] == str(out / relative.parent / f"{relative.name}.npy")
        assert raw.dtype == np.float32 and raw.shape == cv2.imread(row["path"]).shape[:2]
        assert (out / relative.parent / f"{relative.name}_overlay.png").is_file()
        assert row["is_anomalous"] in ("0", "1") and float(row["raw_score"]) == float(np.float32(row["raw_score"]))
    assert {p.name for p in out.iterdir()} == {"good", "blob"}


def test_predict_failure_leaves_no_empty_folder(trained_runs, synthetic_mvtec, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(next((synthetic_mvtec / "test/good").glob("*.png")), images / "a.png")
    (images / "b.png").write_bytes(b"not a png")
    out = tmp_path / "deep/out"
    code, _, err = run_cli(["predict", trained_runs["padim"], images, "--save-raw", out], capsys)
    assert_one_line_error(code, err, r"cannot read image .*b\.png")
    assert not (tmp_path / "deep").exists()
    code, _, err = run_cli(["predict", trained_runs["padim"], images, "--json", "--csv"], capsys)
    assert code == 2 and "exclude each other" in err


def corrupt_image(root: Path) -> Path:
    target = root / "train/good/005.png"
    target.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    return target


def empty_train(root: Path) -> Path:
    for file in (root / "train/good").iterdir():
        file.unlink()
    return root / "train/good"


def missing_mask(root: Path) -> Path:
    mask = root / "ground_truth/blob/001_mask.png"
    mask.unlink()
    return mask


def wrong_size_mask(root: Path) -> Path:
    mask = root / "ground_truth/blob/002_mask.png"
    cv2.imwrite(str(mask), np.zeros((10, 12), dtype=np.uint8))
    return mask


@pytest.mark.parametrize(
    ("damage", "pattern"),
    [
        (corrupt_image, r"cannot read image .*005\.png: the file is corrupt"),
        (empty_train, r"no training images in .*train/good"),
        (missing_mask, r"001_mask\.png"),
        (wrong_size_mask, r"002_mask\.png is 10x12 pixels but image .* is 80x80"),
    ],
    ids=["corrupt-image", "empty-train", "missing-mask", "mask-size"],
)
def test_bad_data_gives_one_line_and_exit_2(tmp_path, capsys, damage, pattern):
    pytest.importorskip("torch", reason="needs the [train] extra")
    root = make_mvtec(tmp_path / "data", n_train=6, n_good=2, n_bad=3)
    damage(root)
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "patchcore", "--data", root, "--out", out, *SMALL], capsys)
    assert_one_line_error(code, err, pattern)
    assert not out.exists(), "a failed run must leave nothing behind"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")], "staging folder left behind"


def test_missing_folder_and_unknown_names(tmp_path, capsys):
    code, _, err = run_cli(["train", "patchcore", "--data", tmp_path / "nope"], capsys)
    assert_one_line_error(code, err, r"dataset folder not found: .*nope")
    code, _, err = run_cli(["train", "resnet", "--data", tmp_path], capsys)
    assert_one_line_error(code, err, r"unknown model 'resnet': choose one of patchcore, padim")
    code, _, err = run_cli(["train", "patchcore", "--data", "elpv-foo"], capsys)
    assert_one_line_error(code, err, r"elpv-foo.*elpv-mono")


def test_too_few_images_for_the_model(tmp_path, capsys):
    pytest.importorskip("torch", reason="needs the [train] extra")
    root = make_mvtec(tmp_path / "data", n_train=1, n_good=1, n_bad=1)
    code, _, err = run_cli(["train", "efficientad", "--data", root, *SMALL], capsys)
    assert_one_line_error(code, err, r"model efficientad needs at least 4 training images, found 1")
    # the statistics models fit from one good image (seed 004's few-shot setting starts at m = 1)
    code, _, err = run_cli(["train", "padim", "--data", root, *SMALL, "--out", tmp_path / "one"], capsys)
    assert code in (0, None), err


def test_bad_options_and_run_folders(synthetic_mvtec, tmp_path, capsys):
    code, _, err = run_cli(["train", "patchcore", "--data", synthetic_mvtec, "--image-size", "100"], capsys)
    assert_one_line_error(code, err, r"image size 100x100 is not supported: use multiples of 16")
    code, _, err = run_cli(["train", "patchcore", "--data", synthetic_mvtec, "--coreset-ratio", "0"], capsys)
    assert_one_line_error(code, err, r"coreset ratio 0.0 is out of range")
    code, _, err = run_cli(["evaluate", tmp_path / "norun"], capsys)
    assert_one_line_error(code, err, r"run folder not found")
    (tmp_path / "half").mkdir()
    code, _, err = run_cli(["evaluate", tmp_path / "half"], capsys)
    assert_one_line_error(code, err, r"missing config.json, weights.safetensors")


def test_existing_out_folder_is_refused(synthetic_mvtec, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    code, _, err = run_cli(["train", "padim", "--data", synthetic_mvtec, "--out", out, *SMALL], capsys)
    assert_one_line_error(code, err, r"--out .*taken exists and is not empty")
    assert (out / "keep.txt").read_text() == "user data"


def test_debug_flag_shows_the_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "edgeiad", "train", "padim", "--data", str(tmp_path / "nope"), "--debug"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_without_torch_the_train_command_names_the_extra(tmp_path):
    # Simulate a runtime-only install: make `import torch` fail inside a subprocess.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from edgeiad.cli import main\n"
        f"main(['train', 'patchcore', '--data', {str(make_mvtec(tmp_path / 'd', 2, 1, 1))!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2
    assert "pip install 'edgeiad[train]'" in result.stderr.replace("\n", " ")


def test_readme_test_command_is_what_ci_runs():
    root = Path(__file__).resolve().parents[1]
    readme, ci = (root / "README.md").read_text(), (root / ".ci/run").read_text()
    command = next(line for line in readme.splitlines() if "pytest" in line and "pip install" in line)
    assert command.strip().strip("`") in ci
    assert shutil.which("bash")


def test_plain_folder_of_good_images_trains_with_good_only_thresholds(synthetic_mvtec, tmp_path, capsys):
    pytest.importorskip("torch", reason="needs the [train] extra")
    run = tmp_path / "run"
    code, _, _ = run_cli(["train", "padim", "--data", synthetic_mvtec / "train/good", "--out", run, *SMALL], capsys)
    assert code == 0
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert thresholds["image"]["method"] == "good-only"
    assert any("in-sample" in note for note in thresholds["notes"])
    norm = thresholds["normalization"]
    assert norm["pixel_min"] < norm["pixel_max"] and norm["image_min"] <= norm["image_max"]
    assert not (run / "scores.csv").exists()
    image = next((synthetic_mvtec / "test/blob").glob("*.png"))
    code, out, _ = run_cli(["predict", run, image], capsys)
    assert code == 0 and json.loads(out)["is_anomalous"] is True
