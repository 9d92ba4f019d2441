"""PatchCore's projected search (#20): principal bases per bank, the residual terms, fit, export and update."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the projected search needs the [train] extra")

from edgeiad.errors import ConfigError  # noqa: E402
from edgeiad.models import get_model  # noqa: E402
from edgeiad.models.patchcore.projection import agreement, principal_bases  # noqa: E402
from edgeiad.models.patchcore.regions import layout, region_distances  # noqa: E402
from edgeiad.models.patchcore.torch_model import chunked_distances, nearest_distances  # noqa: E402

from .conftest import model_overrides  # noqa: E402

SIZES = [9, 14, 11, 7]


def _case(dim=12, seed=5):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, dim, 10, 12, generator=generator), torch.randn(sum(SIZES), dim, generator=generator)


def test_a_basis_of_every_dimension_gives_the_exact_search():
    embedding, bank = _case()
    exact = region_distances(embedding, bank, SIZES, 2, 1, nearest_distances)
    bases = principal_bases(bank, SIZES, 12)
    for search in (nearest_distances, chunked_distances):  # residual lengths of ~0 from float32 cancellation
        torch.testing.assert_close(
            region_distances(embedding, bank, SIZES, 2, 1, search, bases), exact, atol=2e-3, rtol=0
        )


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_projected_distance_takes_the_residuals_angle_as_gamma(gamma):
    embedding, bank = _case()
    keep = 4
    bases = principal_bases(bank, SIZES, keep)
    bases[:, 0, -1] = gamma
    graph = region_distances(embedding, bank, SIZES, 2, 1, nearest_distances, bases)
    eager = region_distances(embedding, bank, SIZES, 2, 1, chunked_distances, bases)
    torch.testing.assert_close(graph, eager, rtol=1e-5, atol=1e-5)
    exact = region_distances(embedding, bank, SIZES, 2, 1, nearest_distances)
    assert not torch.allclose(graph, exact, atol=1e-3)
    if gamma == 1.0:  # residuals taken as parallel: never above the true distance
        assert (graph <= exact + 1e-4).all()
    offsets = np.cumsum([0, *SIZES])
    for index, (rows, cols, _rw, _cw) in enumerate(layout(10, 12, 2, 1)):
        own = bank[offsets[index] : offsets[index + 1]].double()
        basis = bases[index].double()
        vectors, centre = basis[:, :keep], basis[:, keep]
        assert torch.allclose(vectors.T @ vectors, torch.eye(keep, dtype=torch.float64), atol=1e-5)
        own_inside, own_length = (own - centre) @ vectors, _residual(own, vectors, centre).norm(dim=1)
        for y in range(rows.start, rows.stop):
            for x in range(cols.start, cols.stop):
                query = embedding[:, :, y, x].double()
                inside = ((((query - centre) @ vectors)[:, None] - own_inside) ** 2).sum(dim=2)
                length = _residual(query, vectors, centre).norm(dim=1, keepdim=True)
                squared = inside + length**2 + own_length**2 - 2.0 * gamma * length * own_length
                expected = squared.min(dim=1).values.clamp(min=0).sqrt()
                torch.testing.assert_close(graph[:, 0, y, x].double(), expected, rtol=1e-4, atol=1e-4)


def test_gamma_is_the_mean_cosine_of_good_residuals_and_their_matches():
    generator = torch.Generator().manual_seed(3)
    rows = torch.randn(30, 10, generator=generator, dtype=torch.float64)
    basis = principal_bases(rows, [30], 3)[0]
    vectors = basis[:, :3].double()
    assert agreement(rows[:1], rows[:1], basis) == 0.0  # the only row is the sample itself: nothing to go by
    alone = agreement(rows, rows, basis)  # each row against its nearest other row
    assert 0.0 <= alone <= 1.0 and alone != agreement(rows[:15], rows[15:], basis)
    shifted = rows + 1e-3 * (torch.eye(10, dtype=torch.float64)[0] @ (torch.eye(10) - vectors @ vectors.T).double())
    assert agreement(shifted, rows, basis) == pytest.approx(1.0, abs=1e-3)  # same residuals, nudged off the rows
    noise = torch.randn(200, 10, generator=generator, dtype=torch.float64) * 5.0
    assert 0.0 <= agreement(noise, rows, basis) <= 1.0


def _residual(points, vectors, centre):
    """The part of points − centre outside the span of the orthonormal columns of `vectors`."""
    shifted = points - centre
    return shifted - (shifted @ vectors) @ vectors.T


def test_a_patch_off_the_banks_subspace_keeps_its_distance():
    generator = torch.Generator().manual_seed(1)
    plane = torch.linalg.qr(torch.randn(16, 3, generator=generator)).Q  # the good patches vary in 3 of 16 dims
    bank = torch.randn(40, 3, generator=generator) @ plane.T
    away = torch.linalg.qr(torch.cat([plane, torch.randn(16, 1, generator=generator)], dim=1)).Q[:, 3]
    query = (bank[7] + 5.0 * away).view(1, 16, 1, 1)  # 5 from its nearest row, all of it outside the plane
    bases = principal_bases(bank, [40], 3)
    distance = nearest_distances(query, bank, bases[0]).item()
    assert distance == pytest.approx(5.0, abs=1e-3)  # a plain projection onto the plane would give 0
    torch.testing.assert_close(chunked_distances(query, bank, bases[0]), nearest_distances(query, bank))


def test_bases_of_small_or_broken_banks():
    bank = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    bases = principal_bases(bank, [2, 3], 4)  # fewer rows than directions: the missing ones are zero
    assert bases.shape == (2, 8, 6) and torch.isfinite(bases).all() and (bases[:, 0, -1] == 0).all()
    assert bases[0, :, 2:4].abs().max() == 0 and bases[1, :, 3].abs().max() == 0
    bank[1, 2] = float("nan")
    with pytest.raises(ConfigError, match="NaN or infinite"):
        principal_bases(bank, [2, 3], 4)


def test_config_default_checks_and_legacy_runs():
    spec = get_model("patchcore")
    assert spec.make_config().search_dim == 96  # chosen by the study (docs/speed.md, "Projected search")
    assert spec.config_cls().from_dict({"model": "patchcore", "image_size": [64, 64]}).search_dim == 0
    for bad in (-1, True, 2.5, "64"):
        with pytest.raises(ConfigError, match="search_dim"):
            spec.make_config(search_dim=bad)
    model = spec.model_cls()(spec.make_config(search_dim=0, image_size=(64, 64)))
    assert not model.projected and model.stats_names == ("memory_bank", "coarse_bank", "coarse_calibration")
    wide = spec.model_cls()(spec.make_config(search_dim=100_000, image_size=(64, 64)))  # keeps every dimension
    assert not wide.projected and not hasattr(wide, "search_basis")


def _check_projected(spec, model, k: int) -> None:
    """A fitted model of 2 x 2 region banks searches in k directions: its bases are the banks' principal ones, γ
    is fitted in (0, 1), the graph equals the eager search, and both differ from the exact search."""
    assert model.projected and model.search_basis.shape == (4, model.memory_bank.shape[1], k + 2)
    bases = principal_bases(model.memory_bank, model.config.region_rows, k)
    torch.testing.assert_close(model.search_basis[..., :-1], bases[..., :-1])
    gammas = model.search_basis[:, 0, -1]
    assert ((gammas > 0) & (gammas < 1)).all() and (model.search_basis[:, 1:, -1] == 0).all()
    image = torch.randn(2, 3, *model.image_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        graph, eager = model(image), model.infer(image)
        exact = spec.model_cls()(spec.config_cls()(**{**model.config.__dict__, "search_dim": 0}))
        exact.load_state_dict({key: v for key, v in model.state_dict().items() if key != "search_basis"})
        full = exact(image)
    torch.testing.assert_close(graph[0], eager[0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(graph[0], full[0])  # k of the features' dimensions: not the exact search


def test_fit_export_sidecar_and_update(synthetic_mvtec, tmp_path):
    from edgeiad_runtime import Detector
    from edgeiad_runtime.safetensors_io import load_file

    from edgeiad.data import iter_batches, load_dataset
    from edgeiad.engine import train
    from edgeiad.export import export_run
    from edgeiad.export.targets import TARGETS
    from edgeiad.export.trt_check import check_onnx_for_tensorrt, format_findings
    from edgeiad.runs import load_model, load_running

    overrides = {**model_overrides("patchcore"), "regions": 2, "region_margin": 1, "search_dim": 8}
    run = train("patchcore", synthetic_mvtec, out=tmp_path / "run", overrides=overrides, progress=False)
    spec = get_model("patchcore")
    _record, model = load_model(run)
    config = model.config
    _check_projected(spec, model, 8)
    gammas = model.search_basis[:, 0, -1]

    baked = export_run(run, "onnx", "fp32", "baked", "dynamic:4", out=tmp_path / "baked")
    manifest = json.loads((baked / "manifest.json").read_text())
    assert manifest["parity"]["passed"] is True
    findings = check_onnx_for_tensorrt(baked / "model.onnx", manifest["batch"], None)
    assert not [f for f in findings if f.level == "error"], format_findings(findings)
    if TARGETS["openvino"].unavailable() is None:  # the lifted points are plain ops for OpenVINO too
        vino = export_run(run, "openvino", "fp32", "baked", "1", out=tmp_path / "openvino")
        assert json.loads((vino / "manifest.json").read_text())["parity"]["passed"] is True
    sidecar = export_run(run, "onnx", "fp32", "sidecar", "1", out=tmp_path / "sidecar")
    stats = load_file(sidecar / "stats.safetensors")
    assert set(stats) == {"memory_bank", "search_basis", "coarse_bank", "coarse_calibration"}
    frame = np.random.default_rng(0).integers(0, 255, (*model.image_size, 3), dtype=np.uint8)
    one = Detector.load(baked, threads=1).predict(frame)
    two = Detector.load(sidecar, threads=1).predict(frame)
    np.testing.assert_allclose(one.anomaly_map, two.anomaly_map, rtol=1e-5, atol=1e-5)

    batches = iter_batches(load_dataset(synthetic_mvtec).train, config.preprocessing())
    running = load_running(run, spec.running_shapes(model))
    updated, _info = spec.update()(config, model, running, batches)
    assert updated.memory_bank.shape[0] > model.memory_bank.shape[0]
    bases = principal_bases(updated.memory_bank, updated.config.region_rows, 8)
    torch.testing.assert_close(updated.search_basis[..., :-1], bases[..., :-1])
    assert not torch.equal(updated.search_basis[:, 0, -1], gammas)  # γ re-estimated on the new images


def test_the_ensembles_patchcore_half_searches_projected(synthetic_mvtec, tmp_path):
    from edgeiad_runtime import Detector
    from edgeiad_runtime.safetensors_io import load_file

    from edgeiad.engine import train
    from edgeiad.export import export_run
    from edgeiad.runs import load_model

    spec = get_model("ensemble")
    assert spec.make_config().search_dim == 96  # as PatchCore's default
    assert spec.config_cls().from_dict({"model": "ensemble", "image_size": [64, 64]}).search_dim == 0  # legacy
    with pytest.raises(ConfigError, match="search_dim"):
        spec.make_config(search_dim=-1)
    # 8 directions: the tests' small region banks have fewer rows than the default's 96, which is then exact
    overrides = {**model_overrides("ensemble"), "search_dim": 8}
    run = train("ensemble", synthetic_mvtec, out=tmp_path / "run", overrides=overrides, progress=False)
    _record, model = load_model(run)
    _check_projected(spec, model, 8)

    sidecar = export_run(run, "onnx", "fp32", "sidecar", "1", out=tmp_path / "sidecar")
    assert json.loads((sidecar / "manifest.json").read_text())["parity"]["passed"] is True
    assert set(load_file(sidecar / "stats.safetensors")) == {
        "memory_bank",
        "mean",
        "inv_covariance",
        "calibration",
        "search_basis",
        "coarse_bank",
        "coarse_calibration",
    }
    baked = export_run(run, "onnx", "fp32", "baked", "1", out=tmp_path / "baked")
    frame = np.random.default_rng(1).integers(0, 255, (*model.image_size, 3), dtype=np.uint8)
    one = Detector.load(baked, threads=1).predict(frame)
    two = Detector.load(sidecar, threads=1).predict(frame)
    np.testing.assert_allclose(one.anomaly_map, two.anomaly_map, rtol=1e-5, atol=1e-5)
