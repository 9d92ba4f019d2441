"""PatchCore's coarse image score (models/patchcore/coarse.py): the stride-32 score beside the map, its
leave-one-image-out calibration, export and update."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the coarse score's tests fit models: needs the [train] extra")

from edgeiad.errors import ConfigError  # noqa: E402
from edgeiad.models import get_model  # noqa: E402
from edgeiad.models.backbones import get_backbone  # noqa: E402
from edgeiad.runs import load_model  # noqa: E402

from .conftest import SYNTH_SIZE, model_overrides  # noqa: E402

EXACT = "donot_use_mm_for_euclid_dist"  # cdist's direct differences: an own row is at distance 0 exactly


def _brute_coarse(model, image):
    """The coarse score by hand: block -2's features, each one's distance to its nearest coarse-bank row (cdist),
    the mean of the top share."""
    features = model.feature_extractor(image)
    deep = features[model.feature_extractor.layers.index(model.feature_extractor.total_blocks - 2)]
    rows = deep.flatten(2).transpose(1, 2).double()
    bank = model.coarse_bank.double().unsqueeze(0).expand(len(rows), -1, -1)
    distances = torch.cdist(rows, bank, compute_mode=EXACT)
    nearest = distances.min(dim=2).values
    count = int(np.ceil(model.config.coarse_share * nearest.shape[1]))
    return nearest.sort(dim=1).values[:, -count:].mean(dim=1)


def test_image_score_adds_the_calibrated_coarse_score_and_the_map_does_not_change(trained_runs):
    _record, model = load_model(trained_runs["patchcore"])
    config = model.config
    assert model.coarse and config.coarse_weight == 0.5
    assert model.coarse_layer == model.feature_extractor.total_blocks - 2  # Lite1's block 19
    # 12 training images × 2 × 2 positions at 64 px: fewer than coarse_rows, so every row is kept
    assert model.coarse_bank.shape == (12 * 4, 192) == (config.coarse_bank_size, 192)
    offset, gain = model.coarse_calibration.tolist()
    assert offset > 0 and gain > 0
    plain_config = get_model("patchcore").config_cls().from_dict({**config.to_dict(), "coarse_weight": 0.0})
    plain = get_model("patchcore").model_cls()(plain_config).eval()
    plain.memory_bank.copy_(model.memory_bank)
    plain.search_basis.copy_(model.search_basis)
    assert plain.stats_names == ("memory_bank", "search_basis") and not hasattr(plain, "coarse_bank")
    _assert_fused(model, plain, seed=7)


def _assert_fused(model, plain, seed: int) -> None:
    """On random images, `model`'s map is `plain`'s (the same model without the coarse score) and its score is
    plain's + gain · (the coarse score by hand − offset), in both `infer` and `forward`."""
    offset, gain = model.coarse_calibration.tolist()
    image = torch.randn(3, 3, SYNTH_SIZE, SYNTH_SIZE, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        plain_map, plain_score = plain.infer(image)
        expected = plain_score.double() + gain * (_brute_coarse(model, image) - offset)
        for anomaly_map, score in (model.infer(image), model(image)):
            torch.testing.assert_close(anomaly_map, plain_map, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(score.double(), expected, rtol=1e-5, atol=1e-4)
        assert not torch.allclose(model.infer(image)[1], plain_score)


def test_calibration_leaves_each_training_image_out_of_both_banks(synthetic_mvtec):
    """Offset = median of the held-out coarse scores, gain = w · IQR(held-out map scores) / IQR(coarse ones), each
    training image scored by hand against the banks without the rows it gave them (one exact bank here)."""
    from edgeiad.data import iter_batches, load_dataset
    from edgeiad.models.patchcore.fit import fit_patchcore

    config = get_model("patchcore").make_config(
        **model_overrides("patchcore"), regions=1, search_dim=0, coarse_weight=0.8
    )
    train = load_dataset(synthetic_mvtec).train
    calls = []
    progress = lambda done, total, step=None: calls.append((done, total, step))  # noqa: E731
    model, info = fit_patchcore(config, iter_batches(train, config.preprocessing()), progress=progress)
    assert info["coarse_held_out_images"] == len(train) == 12 and "coarse_note" not in info
    step = "calibrating the coarse image score"  # the fit's progress bar shows the calibration, image by image
    assert [call for call in calls if call[2] == step] == [(done, 12, step) for done in range(1, 13)]
    images = torch.cat([torch.from_numpy(a) for a, _ in iter_batches(train, config.preprocessing())])
    bank = model.memory_bank.double()
    main, deep = [], []
    with torch.no_grad():
        embeddings = model.embed(images)
        for index in range(len(train)):
            patches = embeddings[index].flatten(1).T.double()
            own = (torch.cdist(bank, patches, compute_mode=EXACT) == 0).any(
                dim=1
            )  # the coreset copied these rows from this image
            nearest = torch.cdist(patches, bank[~own], compute_mode=EXACT).min(dim=1).values.float()
            grid = nearest.reshape(1, 1, *embeddings.shape[-2:])
            main.append(float(model.to_map(grid)[1][0]))
            coarse_rows = model.coarse_bank[torch.arange(len(train)).repeat_interleave(4) != index].double()
            rows = model.coarse_features(model.feature_extractor(images[index : index + 1]))[0].flatten(1).T.double()
            distances = torch.cdist(rows, coarse_rows, compute_mode=EXACT).min(dim=1).values
            deep.append(float(distances.sort().values[-1:].mean()))  # 20 % of 4 positions: the top one
    from edgeiad.models.patchcore.coarse import bank_owners, held_out_scores
    from edgeiad.models.patchcore.torch_model import chunked_distances

    coarse = model.coarse_features(model.feature_extractor(images))
    owners = bank_owners(model.memory_bank, embeddings)
    assert (owners >= 0).all() and len(set(owners.tolist())) == 12  # 768 patches < min_bank: every one is a row
    fitted_main, fitted_deep = held_out_scores(
        model, embeddings, coarse, owners, torch.arange(12).repeat_interleave(4), chunked_distances
    )
    # The search's |q|² + |b|² − 2 q·b form loses float32 digits at small distances: close, not equal.
    np.testing.assert_allclose(fitted_main, main, rtol=2e-3)
    np.testing.assert_allclose(fitted_deep, deep, rtol=2e-3)
    assert min(main) > 0.1 * float(np.median(main))  # with its own rows in the bank, an image would score ~0

    def iqr(values):
        low, high = np.percentile(values, [25, 75])
        return high - low

    offset, gain = model.coarse_calibration.tolist()  # fit's backbone ran in other batches: float noise
    assert offset == pytest.approx(float(np.median(fitted_deep)), rel=1e-4)
    assert gain == pytest.approx(0.8 * iqr(fitted_main) / iqr(fitted_deep), rel=1e-3)
    assert info["coarse_calibration"] == pytest.approx([offset, gain])


def test_calibration_needs_two_images_with_spread():
    from edgeiad.models.patchcore.coarse import calibration_from

    assert calibration_from(np.array([1.0]), np.array([2.0]), 0.5) == ([0.0, 0.0], pytest.approx(
        "coarse score off: it needs at least two good training images to calibrate"))  # fmt: skip
    calibration, note = calibration_from(np.ones(5), np.arange(5.0), 0.5)
    assert calibration == [0.0, 0.0] and "no spread" in note
    calibration, note = calibration_from(np.array([1.0, 3.0]), np.array([10.0, 14.0]), 0.5)  # quartiles of two
    assert note == "" and calibration == [12.0, pytest.approx(0.5 * 1.0 / 2.0)]


def test_config_defaults_checks_and_legacy_runs():
    spec = get_model("patchcore")
    config = spec.make_config()
    assert (config.coarse_weight, config.coarse_share, config.coarse_block, config.coarse_rows) == (0.5, 0.2, -2, 2048)
    legacy = spec.config_cls().from_dict({"model": "patchcore", "image_size": [64, 64]})
    assert legacy.coarse_weight == 0.0  # runs fitted before the coarse score reload without it
    model = spec.model_cls()(legacy)
    assert not model.coarse and "coarse_bank" not in model.stats_names
    assert model.feature_extractor.layers == (4, 10)  # no deeper blocks than the map needs
    for key, bad in (("coarse_weight", -0.1), ("coarse_weight", True), ("coarse_share", 0.0), ("coarse_share", 1.5),
                     ("coarse_rows", 0), ("coarse_rows", 2.0), ("coarse_block", "14")):  # fmt: skip
        with pytest.raises(ConfigError, match=key):
            spec.make_config(**{key: bad})
    with pytest.raises(ConfigError, match=r"has blocks 0\.\.20 \(or -21\.\.-1"):  # Lite1's 21 blocks
        spec.model_cls()(spec.make_config(image_size=(64, 64), coarse_block=-22))


@pytest.mark.parametrize("name", ["patchcore", "ensemble"])
def test_sidecar_export_carries_the_coarse_bank_and_matches_baked(name, trained_runs, synthetic_mvtec, tmp_path):
    from edgeiad_runtime import Detector
    from edgeiad_runtime.preprocess import preprocess
    from edgeiad_runtime.safetensors_io import load_file

    from edgeiad.engine import train
    from edgeiad.export import export_run

    run = trained_runs["patchcore"]
    if name == "ensemble":  # a quarter held out: three images calibrate the coarse score (trained_runs' one does not)
        overrides = {**model_overrides("ensemble"), "calibration_share": 0.25}
        run = train("ensemble", synthetic_mvtec, out=tmp_path / "run", overrides=overrides, progress=False)
    _record, model = load_model(run)
    assert model.coarse_calibration[1] > 0
    baked = export_run(run, "onnx", "fp32", "baked", "dynamic", out=tmp_path / "b")
    sidecar = export_run(run, "onnx", "fp32", "sidecar", "dynamic", out=tmp_path / "s")
    stats = load_file(sidecar / "stats.safetensors")
    rows = 48 if name == "patchcore" else 36  # 12 (or the ensemble's 9 fitting) images × 2 × 2 positions
    assert {"coarse_bank", "coarse_calibration"} <= set(stats) and stats["coarse_bank"].shape == (rows, 192)
    frames = [np.random.default_rng(i).integers(0, 255, (SYNTH_SIZE, SYNTH_SIZE, 3), dtype=np.uint8) for i in range(3)]
    with Detector.load(baked, threads=1) as one, Detector.load(sidecar, threads=1) as two:
        for frame in frames:
            assert one.predict(frame).raw_score == pytest.approx(two.predict(frame).raw_score, rel=1e-5)
    with torch.no_grad(), Detector.load(sidecar, threads=1) as detector:
        for frame in frames:  # and the graph's score is the eager model's, coarse part included
            image = torch.from_numpy(preprocess(frame, model.config.preprocessing())[None])
            score = detector.predict(frame, color_order="RGB").raw_score
            assert score == pytest.approx(float(model.infer(image)[1][0]), rel=1e-4)


def test_update_adds_coarse_rows_and_keeps_the_calibration(synthetic_mvtec):
    from edgeiad.data import iter_batches, load_dataset
    from edgeiad.models.patchcore.fit import fit_patchcore, update_patchcore

    config = get_model("patchcore").make_config(**model_overrides("patchcore"), coarse_rows=30)
    train = load_dataset(synthetic_mvtec).train
    model, info = fit_patchcore(config, iter_batches(train[:8], config.preprocessing()))
    assert model.coarse_bank.shape[0] == 30 == info["coarse_bank_size"]  # 32 rows, coreset to 30
    calibration = model.coarse_calibration.clone()
    new_rows = model.coarse_features(model.feature_extractor(torch.cat(
        [torch.from_numpy(a) for a, _ in iter_batches(train[8:], config.preprocessing())])))  # fmt: skip
    updated, _info = update_patchcore(config, model, model.running, iter_batches(train[8:], config.preprocessing()))
    assert updated.coarse_bank.shape[0] == 30 and torch.equal(updated.coarse_calibration, calibration)
    # the greedy coreset keeps some of the new images' rows: the bank now covers them
    kept = {tuple(row.tolist()) for row in updated.coarse_bank}
    assert any(tuple(row.tolist()) in kept for row in new_rows.flatten(2).transpose(1, 2).reshape(-1, 192))


def test_the_ensemble_adds_the_coarse_score_calibrated_on_its_held_out_images(synthetic_mvtec):
    """The ensemble's image score = its map score + gain · (coarse − offset), offset and gain from the held-out good
    images by hand; the map and the members' calibration are those of the same ensemble without the coarse score."""
    from edgeiad.data import iter_batches, load_dataset
    from edgeiad.models.ensemble.fit import _held_out, fit_ensemble

    spec = get_model("ensemble")
    overrides = {**model_overrides("ensemble"), "calibration_share": 0.25}
    train = load_dataset(synthetic_mvtec).train
    config = spec.make_config(**overrides)
    model, info = fit_ensemble(config, iter_batches(train, config.preprocessing()))
    plain, _info = fit_ensemble(
        spec.make_config(**overrides, coarse_weight=0.0), iter_batches(train, config.preprocessing())
    )
    assert model.coarse and not plain.coarse and "coarse_bank" not in plain.stats_names
    assert model.stats_names[-2:] == ("coarse_bank", "coarse_calibration")
    taps = get_backbone(config.backbone).default_layers
    assert model.feature_extractor.layers == (*taps, model.feature_extractor.total_blocks - 2)
    assert plain.feature_extractor.layers == taps
    torch.testing.assert_close(model.calibration, plain.calibration)  # the members are unchanged
    assert torch.equal(model.memory_bank, plain.memory_bank) and torch.equal(model.mean, plain.mean)
    held = _held_out(len(train), 0.25)
    assert info["n_fit"] == 9 and model.coarse_bank.shape == (9 * 4, 192) == (info["coarse_bank_size"], 192)
    held_images = torch.cat(
        [torch.from_numpy(a) for a, _ in iter_batches([train[i] for i in held.tolist()], plain.config.preprocessing())]
    )
    with torch.no_grad():
        main = plain.infer(held_images)[1].double().numpy()
        deep = _brute_coarse(model, held_images).numpy()
    low, high = np.percentile(main, [25, 75])
    low_deep, high_deep = np.percentile(deep, [25, 75])
    offset, gain = model.coarse_calibration.tolist()
    assert offset == pytest.approx(float(np.median(deep)), rel=1e-4)
    assert gain == pytest.approx(0.5 * (high - low) / (high_deep - low_deep), rel=1e-3) and gain > 0
    assert info["coarse_calibration"] == pytest.approx([offset, gain]) and "coarse_note" not in info
    _assert_fused(model, plain, seed=5)


def test_the_ensemble_without_two_held_out_images_leaves_the_coarse_score_out(trained_runs):
    """12 training images, 10 % held out: one image cannot measure a spread, so the fit says so and adds nothing."""
    _record, model = load_model(trained_runs["ensemble"])
    assert model.coarse and model.coarse_calibration.tolist() == [0.0, 0.0]
    fit = json.loads((trained_runs["ensemble"] / "config.json").read_text())["fit"]
    assert fit["n_calibration"] == 1 and fit["coarse_note"].startswith("coarse score off: it needs at least two")
    legacy = get_model("ensemble").config_cls().from_dict({"model": "ensemble", "image_size": [64, 64]})
    assert legacy.coarse_weight == 0.0 and not get_model("ensemble").model_cls()(legacy).coarse
