"""Model tests, parametrized over the registry: fit, determinism, config round trip, eager == graph path."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="model tests need the [train] extra")

from edgeiad.models import MODELS, get_model, register_model  # noqa: E402
from edgeiad.models._ops import chunked_min_euclidean, min_euclidean  # noqa: E402
from edgeiad.runs import load_model  # noqa: E402

from .conftest import SYNTH_SIZE  # noqa: E402


@pytest.mark.parametrize("name", list(MODELS))
def test_trained_model_separates_synthetic_defects(trained_runs, name):
    metrics = json.loads((trained_runs[name] / "metrics.json").read_text())
    assert metrics["image_auroc"] >= 0.9
    assert metrics["pixel_auroc"] >= 0.9
    assert 0.0 <= metrics["aupro"] <= 1.0


@pytest.mark.parametrize("name", list(MODELS))
def test_run_folder_is_complete_and_pickle_free(trained_runs, name):
    run = trained_runs[name]
    for file in ("config.json", "weights.safetensors", "metrics.json", "thresholds.json", "scores.csv", "train.log"):
        assert (run / file).is_file(), file
    assert any((run / "overlays").glob("*.png"))
    assert not list(run.rglob("*.pt")) and not list(run.rglob("*.pkl")) and not list(run.rglob("*.pth"))
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["model"] == name
    assert config["preprocessing"]["height"] == SYNTH_SIZE
    assert config["data"]["n_train"] == 12
    assert len(config["backbone_weights_sha256"]) == 64


@pytest.mark.parametrize("name", list(MODELS))
def test_reloaded_model_reproduces_forward_and_infer(trained_runs, name):
    _record, model = load_model(trained_runs[name])
    image = torch.randn(2, 3, SYNTH_SIZE, SYNTH_SIZE)
    with torch.no_grad():
        graph_map, graph_score = model(image)
        eager_map, eager_score = model.infer(image)
    assert graph_map.shape == (2, 1, SYNTH_SIZE, SYNTH_SIZE) and graph_score.shape == (2,)
    torch.testing.assert_close(graph_map, eager_map, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(graph_score, eager_score, rtol=1e-4, atol=1e-4)
    if getattr(model, "score_is_map_max", True):
        torch.testing.assert_close(graph_score, graph_map.amax(dim=(1, 2, 3)))


@pytest.mark.parametrize("name", list(MODELS))
def test_fit_is_deterministic_for_a_seed(synthetic_mvtec, tmp_path, name):
    from edgeiad.engine import train

    from .conftest import model_overrides

    first = train(name, synthetic_mvtec, out=tmp_path / "a", overrides=model_overrides(name), progress=False)
    second = train(name, synthetic_mvtec, out=tmp_path / "b", overrides=model_overrides(name), progress=False)
    assert (first / "scores.csv").read_text() == (second / "scores.csv").read_text()


def test_registry_rejects_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register_model(MODELS["patchcore"])
    with pytest.raises(ValueError, match="unknown model 'nope': choose one of"):
        get_model("nope")


def test_chunked_search_matches_brute_force_with_small_chunks():
    generator = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(37, 8, generator=generator), torch.randn(53, 8, generator=generator)
    brute = torch.cdist(queries.double(), bank.double())
    distances, indices = chunked_min_euclidean(queries, bank, query_chunk=5, bank_chunk=7)
    torch.testing.assert_close(distances.double(), brute.min(dim=1).values, rtol=1e-5, atol=1e-5)
    assert torch.equal(indices, brute.argmin(dim=1))
    torch.testing.assert_close(min_euclidean(queries, bank), distances, rtol=1e-5, atol=1e-5)


def test_padim_distance_matches_numpy_mahalanobis(trained_runs):
    _record, model = load_model(trained_runs["padim"])
    image = torch.randn(1, 3, SYNTH_SIZE, SYNTH_SIZE)
    with torch.no_grad():
        embedding = model.embed(image)[0].reshape(model.config.n_features, -1).T.double().numpy()
        model.blur.radius = 0  # compare raw patch distances: no smoothing, exact upsample check below
        anomaly_map, _ = model(image)
    mean, inverse = model.mean.double().numpy(), model.inv_covariance.double().numpy()
    diff = embedding - mean
    expected = np.sqrt(np.einsum("pd,pde,pe->p", diff, inverse, diff)).reshape(SYNTH_SIZE // 8, SYNTH_SIZE // 8)
    patch = torch.nn.functional.interpolate(
        torch.from_numpy(expected)[None, None].float(), size=(SYNTH_SIZE, SYNTH_SIZE), mode="bilinear"
    )
    torch.testing.assert_close(anomaly_map, patch, rtol=1e-3, atol=1e-3)


def test_readme_models_table_is_generated_from_the_registry():
    from pathlib import Path

    from edgeiad.models import markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert markdown_table() in readme, "README models table is stale: paste `edgeiad models --markdown`"
