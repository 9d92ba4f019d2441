"""PatchCore region banks (#20): layout, the restricted search, fit, export and update."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="region banks need the [train] extra")

from edgeiad.errors import ConfigError  # noqa: E402
from edgeiad.models import get_model  # noqa: E402
from edgeiad.models.patchcore.regions import layout, region_budgets, region_distances  # noqa: E402
from edgeiad.models.patchcore.torch_model import chunked_distances, nearest_distances  # noqa: E402

from .conftest import model_overrides  # noqa: E402


@pytest.mark.parametrize(("height", "width", "parts", "margin"), [(48, 48, 2, 2), (20, 48, 3, 1), (16, 16, 3, 4)])
def test_layout_partitions_the_grid_and_widens_each_window(height, width, parts, margin):
    covered = np.zeros((height, width), dtype=int)
    regions = layout(height, width, parts, margin)
    assert len(regions) == parts * parts
    for rows, cols, row_window, col_window in regions:
        assert rows.stop > rows.start and cols.stop > cols.start
        covered[rows, cols] += 1
        assert (row_window.start, row_window.stop) == (max(0, rows.start - margin), min(height, rows.stop + margin))
        assert (col_window.start, col_window.stop) == (max(0, cols.start - margin), min(width, cols.stop + margin))
    assert (covered == 1).all()  # every patch belongs to exactly one region
    budgets = region_budgets(height, width, parts, margin, 1000)
    assert sum(budgets) >= 1000 and max(budgets) < 1000  # each region searches fewer rows than the global bank


def test_a_grid_smaller_than_the_regions_gets_one_region_per_cell():
    assert len(layout(2, 5, 4, 0)) == 2 * 4


def test_each_patch_is_searched_in_its_own_region_only():
    generator = torch.Generator().manual_seed(5)
    embedding = torch.randn(2, 6, 10, 12, generator=generator)
    sizes = [3, 5, 4, 7]
    bank = torch.randn(sum(sizes), 6, generator=generator)
    offsets = np.cumsum([0, *sizes])
    expected = torch.empty(2, 1, 10, 12)
    for index, (rows, cols, _rw, _cw) in enumerate(layout(10, 12, 2, 1)):
        own = bank[offsets[index] : offsets[index + 1]]
        for y in range(rows.start, rows.stop):
            for x in range(cols.start, cols.stop):
                expected[:, 0, y, x] = (embedding[:, None, :, y, x] - own).norm(dim=2).min(dim=1).values
    for search in (nearest_distances, chunked_distances):
        torch.testing.assert_close(region_distances(embedding, bank, sizes, 2, 1, search), expected)
    everywhere = nearest_distances(embedding, bank)
    assert (everywhere <= expected + 1e-5).all() and not torch.allclose(everywhere, expected)
    with pytest.raises(ConfigError, match="does not match the fitted bank"):
        region_distances(embedding, bank, sizes, 3, 1, nearest_distances)


def test_config_defaults_checks_and_legacy_runs():
    spec = get_model("patchcore")
    assert spec.make_config().regions == 2 and spec.make_config().region_margin == 2  # chosen by the study
    # a config.json written before the field existed reloads with the one bank it was fitted with
    assert spec.config_cls().from_dict({"model": "patchcore", "image_size": [64, 64]}).regions == 1
    for bad in (0, 9, True, 2.0):
        with pytest.raises(ConfigError, match="regions"):
            spec.make_config(regions=bad)
    with pytest.raises(ConfigError, match="region_margin"):
        spec.make_config(regions=2, region_margin=-1)
    with pytest.raises(ConfigError, match="region_rows .* do not fit"):
        spec.make_config(regions=2, region_rows=[3, 3, 3, 3], bank_size=13)


def _fit(data, **extra):
    from edgeiad.data import load_dataset
    from edgeiad.engine import fit_model

    config = get_model("patchcore").make_config(**{**model_overrides("patchcore"), **extra})
    return fit_model(config, load_dataset(data))


@pytest.fixture(scope="module")
def region_model(synthetic_mvtec):
    return _fit(synthetic_mvtec, regions=2, region_margin=1, min_bank=1)  # 25 % coreset: 75 of each window's 300


def test_fit_draws_each_region_bank_from_its_window(region_model, synthetic_mvtec):
    from edgeiad.data import iter_batches, load_dataset

    model, info = region_model
    config = model.config
    assert info["region_rows"] == config.region_rows and len(config.region_rows) == 4
    assert sum(config.region_rows) == config.bank_size == model.memory_bank.shape[0]
    with torch.no_grad():
        batches = iter_batches(load_dataset(synthetic_mvtec).train, config.preprocessing())
        embeddings = torch.cat([model.embed(torch.from_numpy(array)) for array, _ in batches])
    _count, dim, height, width = embeddings.shape
    offsets = np.cumsum([0, *config.region_rows])
    regions = layout(height, width, 2, 1)
    for index, (_rows, _cols, row_window, col_window) in enumerate(regions):
        inside = embeddings[:, :, row_window, col_window].permute(0, 2, 3, 1).reshape(-1, dim)
        for row in model.memory_bank[offsets[index] : offsets[index + 1]]:
            assert (inside - row).norm(dim=1).min() < 1e-4  # a training patch of this region's window
    assert config.region_rows == region_budgets(height, width, 2, 1, 12 * height * width // 4)  # 25 % coreset


def test_graph_path_equals_eager_path(region_model):
    model, _ = region_model
    image = torch.randn(2, 3, *model.image_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        graph, eager = model(image), model.infer(image)
    torch.testing.assert_close(graph[0], eager[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(graph[1], eager[1], rtol=1e-4, atol=1e-4)


def test_export_passes_parity_fits_tensorrt_and_refuses_a_resized_sidecar_bank(synthetic_mvtec, tmp_path):
    from edgeiad_runtime import Detector
    from edgeiad_runtime.errors import ArtifactError
    from edgeiad_runtime.manifest import load_manifest, write_manifest
    from edgeiad_runtime.safetensors_io import load_file, save_file

    from edgeiad.engine import train
    from edgeiad.export import export_run
    from edgeiad.export.trt_check import check_onnx_for_tensorrt, format_findings

    overrides = {**model_overrides("patchcore"), "regions": 2, "region_margin": 1}
    run = train("patchcore", synthetic_mvtec, out=tmp_path / "run", overrides=overrides, progress=False)
    baked = export_run(run, "onnx", "fp32", "baked", "dynamic:4", out=tmp_path / "baked")
    manifest = json.loads((baked / "manifest.json").read_text())
    assert manifest["parity"]["passed"] is True
    findings = check_onnx_for_tensorrt(baked / "model.onnx", manifest["batch"], None)
    assert not [f for f in findings if f.level == "error"], format_findings(findings)

    sidecar = export_run(run, "onnx", "fp32", "sidecar", "1", out=tmp_path / "sidecar")
    stats = load_file(sidecar / "stats.safetensors")
    stats["memory_bank"] = stats["memory_bank"][:-1]  # rows no longer match the regions
    save_file(stats, sidecar / "stats.safetensors")
    write_manifest(sidecar, load_manifest(sidecar, verify=False))
    with pytest.raises(ArtifactError, match="memory_bank .* do not belong together"):
        Detector.load(sidecar, threads=1)


def test_update_keeps_the_regions_and_grows_each_bank(synthetic_mvtec):
    from edgeiad.data import iter_batches, load_dataset

    model, _ = _fit(synthetic_mvtec, regions=2, region_margin=1, coreset_ratio=0.05, min_bank=1)
    before = list(model.config.region_rows)
    batches = iter_batches(load_dataset(synthetic_mvtec).train, model.config.preprocessing())
    updated, info = get_model("patchcore").update()(model.config, model, model.running, batches)
    after = updated.config.region_rows
    assert len(after) == 4 and all(b > a for a, b in zip(before, after))
    assert sum(after) == updated.memory_bank.shape[0] == info["bank_size"]
    image = torch.randn(1, 3, *model.image_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(updated(image)[0], updated.infer(image)[0], rtol=1e-4, atol=1e-4)
