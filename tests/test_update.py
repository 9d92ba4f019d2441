"""`edgeiad update` (new good images into a fitted run) and the noise-robust fits (PatchCore denoise, PaDiM trim)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from .conftest import SYNTH_SIZE, make_mvtec, model_overrides
from .test_cli import assert_one_line_error, run_cli

torch = pytest.importorskip("torch", reason="fitting needs the [train] extra")


def _split(root: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """Three MVTec-layout copies of `root`: first half of train/good, second half, and all of it."""
    images = sorted((root / "train/good").iterdir())
    half = len(images) // 2
    made = []
    for name, chosen in (("a", images[:half]), ("b", images[half:]), ("ab", images)):
        target = tmp_path / name
        shutil.copytree(root, target, ignore=shutil.ignore_patterns("train"))
        (target / "train/good").mkdir(parents=True)
        for image in chosen:
            shutil.copy(image, target / "train/good" / image.name)
        made.append(target)
    return tuple(made)


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    root = make_mvtec(tmp_path_factory.mktemp("data") / "parts", n_train=12)
    return _split(root, tmp_path_factory.mktemp("halves"))


def _fit(name: str, data: Path, **extra):
    from edgeiad.data import load_dataset
    from edgeiad.engine import fit_model
    from edgeiad.models import get_model

    config = get_model(name).make_config(**{**model_overrides(name), **extra})
    return fit_model(config, load_dataset(data))[0]


def _update(model, data: Path):
    from edgeiad.data import iter_batches, load_dataset
    from edgeiad.models import get_model

    spec = get_model(model.config.model)
    batches = iter_batches(load_dataset(data).train, model.config.preprocessing())
    return spec.update()(model.config, model, model.running, batches)[0]


def test_padim_update_equals_a_fit_on_all_images(halves):
    a, b, ab = halves
    updated, full = _update(_fit("padim", a), b), _fit("padim", ab)
    for name in ("mean", "inv_covariance"):
        np.testing.assert_allclose(getattr(updated, name), getattr(full, name), rtol=1e-5, atol=1e-5)
    assert torch.equal(updated.running["count"], full.running["count"])


def test_npad_update_equals_a_fit_on_all_images_with_the_same_channels(halves, monkeypatch):
    from edgeiad.models.npad import fit as npad_fit

    # A fit on all images may choose other channels than the first fit; the update keeps the first fit's.
    monkeypatch.setattr(npad_fit, "select_channels", lambda features, count: torch.arange(count))
    a, b, ab = halves
    updated, full = _update(_fit("npad", a), b), _fit("npad", ab)
    for name in ("mean_a", "precision_a", "mean_b", "precision_b"):
        np.testing.assert_allclose(getattr(updated, name), getattr(full, name), rtol=1e-4, atol=1e-4)
    assert updated.config.n_centroids == updated.centroids.shape[0] > _fit("npad", a).centroids.shape[0]


def test_patchcore_update_covers_the_new_images_within_the_budget(halves):
    a, b, _ = halves
    first = _fit("patchcore", a, min_bank=8)
    updated = _update(first, b)
    assert updated.running["n_patches"].item() == 2 * first.running["n_patches"].item()
    assert updated.memory_bank.shape[0] == updated.config.bank_size > first.memory_bank.shape[0]
    capped = _update(_fit("patchcore", a, min_bank=8, max_bank=10), b)
    assert capped.memory_bank.shape[0] == 8  # 2 x 2 region banks of 2 rows: within the cap, whatever the overlap
    single = _update(_fit("patchcore", a, min_bank=8, max_bank=10, regions=1), b)
    assert single.memory_bank.shape[0] == 10


def test_patchcore_keeps_min_bank_rows_for_few_shot(halves):
    a, _, _ = halves
    model = _fit("patchcore", a, regions=1)  # 6 images x 64 patches: 25 % would be 96 rows
    assert model.memory_bank.shape[0] == min(6 * 64, 1024)
    regional = _fit("patchcore", a)  # 2 x 2 regions with 6 x 6-cell windows: each keeps all 6 x 36 of its patches
    assert regional.config.region_rows == [6 * 36] * 4


def test_cli_update_writes_a_new_run_and_leaves_the_old_one(halves, tmp_path, capsys):
    a, b, _ = halves
    size = str(SYNTH_SIZE)
    code, out, err = run_cli(["train", "padim", "--data", a, "--image-size", size, "--out", tmp_path / "a", "--json"],
                             capsys)  # fmt: skip
    assert code in (0, None), err
    before = hashlib.sha256((tmp_path / "a" / "weights.safetensors").read_bytes()).hexdigest()
    code, out, err = run_cli(["update", tmp_path / "a", "--data", b, "--out", tmp_path / "ab", "--json"], capsys)
    assert code in (0, None), err
    result = json.loads(out)
    assert result["run"] == str(tmp_path / "ab") and "image_auroc" in result["metrics"]
    record = json.loads((tmp_path / "ab" / "config.json").read_text())
    assert record["updates"][0]["from_run"] == str(tmp_path / "a") and record["updates"][0]["fit"]["n_samples"] == 12
    assert record["data_history"][0]["name"] == "a" and (tmp_path / "ab" / "running.safetensors").is_file()
    assert hashlib.sha256((tmp_path / "a" / "weights.safetensors").read_bytes()).hexdigest() == before
    from edgeiad_runtime.files import normal_mode

    for name in ("weights.safetensors", "running.safetensors"):  # readable by the user export runs as
        assert (tmp_path / "ab" / name).stat().st_mode & 0o777 == normal_mode()
    # the updated run exports and runs like any other
    code, _, err = run_cli(["export", "padim", "--run", tmp_path / "ab", "--target", "onnx", "--out",
                            tmp_path / "art"], capsys)  # fmt: skip
    assert code in (0, None), err
    from edgeiad_runtime import Detector

    with Detector.load(tmp_path / "art") as detector:
        result = detector.predict(np.full((80, 80, 3), 128, np.uint8), color_order="RGB")
    assert np.isfinite(result.score)


def test_cli_update_refuses_what_it_cannot_update(trained_runs, halves, tmp_path, capsys):
    _, b, _ = halves
    code, _, err = run_cli(["update", trained_runs["efficientad"], "--data", b], capsys)
    assert_one_line_error(code, err, "efficientad learns its weights.*retrain it on the old and new")
    copy = tmp_path / "padim"
    shutil.copytree(trained_runs["padim"], copy)
    (copy / "running.safetensors").write_bytes(b"not a safetensors file")
    code, _, err = run_cli(["update", copy, "--data", b], capsys)
    assert_one_line_error(code, err, "running.safetensors is corrupt")
    from safetensors.torch import load_file, save_file

    running = load_file(str(trained_runs["padim"] / "running.safetensors"))
    save_file({**running, "sum": running["sum"][:, :3].contiguous()}, str(copy / "running.safetensors"))
    code, _, err = run_cli(["update", copy, "--data", b], capsys)
    assert_one_line_error(code, err, r"sum has shape \[64, 3\] but the run's weights need \[64, 32\]")
    running["outer"][0, 0, 0] = float("nan")
    save_file(running, str(copy / "running.safetensors"))
    code, _, err = run_cli(["update", copy, "--data", b], capsys)
    assert_one_line_error(code, err, "outer holds NaN")
    (copy / "running.safetensors").unlink()
    code, _, err = run_cli(["update", copy, "--data", b], capsys)
    assert_one_line_error(code, err, "running.safetensors is missing: this run cannot be updated")
    code, _, err = run_cli(["update", tmp_path / "nowhere", "--data", b], capsys)
    assert_one_line_error(code, err, "run folder not found")


def test_denoise_drops_the_patches_no_other_image_has():
    from edgeiad.models._robust import denoise_patches, patch_outlier_scores

    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(10, 8, 4, 4, generator=generator) * 0.1
    embeddings[3, :, 2, 1] += 5.0  # a defect in image 3 only
    scores = patch_outlier_scores(embeddings)
    assert scores.argmax().item() == np.ravel_multi_index((3, 2, 1), (10, 4, 4))
    rows, report = denoise_patches(embeddings, 0.04)  # 1 % of the patches
    assert rows.shape[0] == 160 - 2 and report["most_dropped_images"][0] == 3
    assert not (rows - embeddings[3, :, 2, 1]).abs().max(dim=1).values.lt(1e-6).any()
    assert denoise_patches(embeddings[:1], 0.1)[1]["denoise"].startswith("skipped")


def test_trimmed_moments_leave_out_the_far_sample():
    from edgeiad.models._robust import trimmed_moments

    samples = torch.randn(2, 20, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    samples[0, 7] += 50.0
    count, total, _ = trimmed_moments(samples, 0.2, 0.01)  # a quarter of 20 %: 1 of 20 samples
    assert count.tolist() == [19.0, 19.0]
    expected = samples[0].sum(dim=0) - samples[0, 7]
    torch.testing.assert_close(total[0], expected)


def test_noise_robust_option_reaches_the_config(synthetic_mvtec, tmp_path, capsys):
    code, _, err = run_cli(["train", "npad", "--data", synthetic_mvtec, "--noise-robust", "0.1"], capsys)
    assert_one_line_error(code, err, "--noise-robust applies to patchcore, padim, not npad")
    code, _, err = run_cli(["train", "padim", "--data", synthetic_mvtec, "--noise-robust", "0.7"], capsys)
    assert_one_line_error(code, err, "trim 0.7 is out of range")
    out = tmp_path / "robust"
    code, _, err = run_cli(["train", "patchcore", "--data", synthetic_mvtec, "--image-size", str(SYNTH_SIZE),
                            "--noise-robust", "0.1", "--out", out, "--json"], capsys)  # fmt: skip
    assert code in (0, None), err
    record = json.loads((out / "config.json").read_text())
    assert record["model"]["denoise"] == 0.1 and record["fit"]["patches_dropped"] > 0
