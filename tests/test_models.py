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
    queries, bank = torch.randn(1500, 8, generator=generator) + 3, torch.randn(5000, 8, generator=generator)
    brute = torch.cdist(queries.double(), bank.double())  # two blocks of each at the default chunk sizes
    distances, indices = chunked_min_euclidean(queries, bank)
    torch.testing.assert_close(distances.double(), brute.min(dim=1).values, rtol=1e-5, atol=1e-5)
    assert (indices == brute.argmin(dim=1)).float().mean() > 0.999  # float32 near-ties may pick the other row


def test_patch_neighbourhood_averages_each_layer_over_its_cells_without_padding():
    from edgeiad.models._ops import aggregate_features

    fine = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    coarse = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    plain = aggregate_features([fine, coarse])
    assert plain.shape == (2, 7, 8, 8) and torch.equal(plain[:, :4], fine)
    pooled = aggregate_features([fine, coarse], 3)
    torch.testing.assert_close(pooled[:, :4, 3, 5], fine[:, :, 2:5, 4:7].mean((2, 3)))
    torch.testing.assert_close(pooled[:, :4, 0, 0], fine[:, :, :2, :2].mean((2, 3)))  # border: only real cells
    five = aggregate_features([fine, coarse], 5)
    torch.testing.assert_close(five[:, :4, 4, 4], fine[:, :, 2:7, 2:7].mean((2, 3)))


@pytest.mark.parametrize("name", ["patchcore", "ensemble"])
def test_patch_neighbourhood_default_checks_and_legacy_runs(name):
    from edgeiad.errors import ConfigError

    spec = get_model(name)
    assert spec.make_config().neighbourhood == 1  # chosen by the study (docs/quality-study.md)
    # a config.json written before the field existed reloads with the 3x3 averaging it was fitted with
    assert spec.config_cls().from_dict({"model": name, "image_size": [256, 256]}).neighbourhood == 3
    assert spec.make_config(neighbourhood=3).neighbourhood == 3
    for bad in (0, 2, 11, True, 3.0):
        with pytest.raises(ConfigError, match="neighbourhood"):
            spec.make_config(neighbourhood=bad)


@pytest.mark.parametrize("name", list(MODELS))
def test_patchcore_defaults_to_lite1_and_a_config_without_a_backbone_reloads_on_lite0(name):
    spec = get_model(name)
    # chosen by the six-set study (docs/quality-study.md, "Backbone"): PaDiM and the ensemble lose on Lite1
    assert spec.make_config().backbone == ("efficientnet_lite1" if name == "patchcore" else "efficientnet_lite0")
    legacy = spec.config_cls().from_dict({"model": name, "image_size": [64, 64]})
    assert legacy.backbone == "efficientnet_lite0"  # what any config.json without the key was fitted on
    assert spec.make_config(backbone="efficientnet_lite0").resolved_layers() == (4, 10)


def test_patchcore_embedding_follows_its_neighbourhood():
    from edgeiad.models._ops import aggregate_features
    from edgeiad.models.patchcore.torch_model import PatchCoreModel

    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    for size in (1, 3):
        model = PatchCoreModel(get_model("patchcore").make_config(image_size=(64, 64), neighbourhood=size)).eval()
        with torch.no_grad():
            tapped = zip(model.feature_extractor.layers, model.feature_extractor(image))
            patch_features = [f for block, f in tapped if block in model.patch_layers]  # the coarse block is apart
            assert len(patch_features) == 2
            expected = aggregate_features(patch_features, size)
            torch.testing.assert_close(model.embed(image), expected)
            assert not torch.equal(expected, aggregate_features(patch_features, 4 - size))


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


def test_npad_searches_only_its_top_pixels_against_the_centroids(trained_runs):
    """The image score's centroid search on the k top pixels equals searching every position and gathering."""
    _record, model = load_model(trained_runs["npad"])
    image = torch.randn(2, 3, *model.image_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        copies = model._shifted(image)
        pixel, score = model._scores(copies, *(getattr(model, name) for name in model.stats_names))
        aggregated = model.aggregate(model.embed(copies)).flatten(2).transpose(1, 2)  # N×P×d
        everywhere = torch.cdist(aggregated.double(), model.centroids.double()).min(dim=-1).values  # N×P
    k = model.config.top_k
    assert k < pixel[0].numel() and model.centroids.shape[0] > 1  # a real choice of pixels and of centroids
    top, where = pixel.flatten(1).topk(k, dim=1)
    paired = everywhere.gather(1, where).sort(dim=1, descending=True).values
    torch.testing.assert_close(score.double(), (top.double() * paired).sqrt().mean(dim=1), rtol=1e-4, atol=1e-5)


def test_npad_fit_sums_its_training_images_a_chunk_at_a_time():
    """N-pad's running sums and k-means points, taken `chunk` images at a time (bounded memory: a whole float64 copy
    of cfd's 1,292 tiles took the fit to 9.2 GB), equal the sums over every image at once, computed by hand."""
    from edgeiad.models.npad.fit import _running_sums

    config = get_model("npad").make_config(train_radius=1)
    embedding = torch.randn(7, 5, 4, 6, generator=torch.Generator().manual_seed(2))  # float32, as fit keeps it
    running, points = _running_sums(embedding, config, chunk=3)
    whole = embedding.double()
    pooled = torch.nn.functional.avg_pool2d(whole, 3, stride=1, padding=1, count_include_pad=False)
    for prefix, features in (("", whole), ("agg_", pooled)):
        samples = features.flatten(2).permute(2, 0, 1)  # P×N×d
        torch.testing.assert_close(running[f"{prefix}count"], torch.full((24,), 7.0, dtype=torch.float64))
        torch.testing.assert_close(running[f"{prefix}sum"], samples.sum(dim=1))
        torch.testing.assert_close(running[f"{prefix}outer"], torch.einsum("pni,pnj->pij", samples, samples))
    assert running["n_points"].item() == 7 * 24
    assert torch.equal(points, pooled.flatten(2).transpose(1, 2).reshape(-1, 5).float())  # image by image, as before


def test_npad_scores_in_batches_its_working_memory_allows(trained_runs, tmp_path, monkeypatch):
    """N-pad holds ~0.7 GB per 384 px image while scoring (a batch of 16 once needed 11.5 GB): eager scoring splits
    its batch, and an export's default dynamic batch is lowered, to stay within the budget; the results are those
    of one call."""
    from edgeiad_runtime import Detector

    import edgeiad.models._ops as ops
    from edgeiad.export import export_run

    spec = get_model("npad")
    at_384 = spec.model_cls()(spec.make_config(image_size=(384, 384)))
    assert 0.5e9 < at_384.working_bytes_per_image() < 1e9  # measured: +0.69 GB of peak RSS per image
    assert ops.memory_bounded_batch(at_384, 16) == 1
    del at_384
    _record, model = load_model(trained_runs["npad"])
    image = torch.randn(5, 3, *model.image_size, generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(ops, "SCORING_MEMORY_BUDGET", 2 * model.working_bytes_per_image())
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda batch: calls.append(len(batch)) or forward(batch))
    chunked = model.infer(image)
    assert calls == [2, 2, 1]
    whole = forward(image)
    for part, one in zip(chunked, whole):
        torch.testing.assert_close(part, one, rtol=1e-5, atol=1e-6)
    lines = []
    artifact = export_run(trained_runs["npad"], "onnx", out=tmp_path / "npad", echo=lines.append)
    batch = json.loads((artifact / "manifest.json").read_text())["batch"]
    assert batch == {"mode": "dynamic", "size": None, "max": 2}
    assert any("per image while scoring: batch max 2" in line for line in lines)
    with Detector.load(artifact, threads=1) as detector:
        frames = [np.full((40, 48, 3), 60 * i, np.uint8) for i in range(5)]
        together = [r.raw_score for r in detector.predict_batch(frames)]
        assert together == pytest.approx([detector.predict(f).raw_score for f in frames], rel=1e-5, abs=1e-6)
    explicit = export_run(trained_runs["npad"], "onnx", batch="dynamic:16", out=tmp_path / "16", echo=lines.append)
    assert json.loads((explicit / "manifest.json").read_text())["batch"]["max"] == 16  # asked for: kept, with a note
    assert any(line.startswith("note: npad holds") and "16 images need" in line for line in lines)


def test_ensemble_members_equal_patchcore_and_padim_with_its_statistics(trained_runs):
    """The ensemble's heads are PatchCore's and PaDiM's: same statistics, same patch scores, then calibrated."""
    from edgeiad.models.padim.torch_model import PadimModel, mahalanobis_distances
    from edgeiad.models.patchcore.torch_model import PatchCoreModel

    _record, ensemble = load_model(trained_runs["ensemble"])
    config = ensemble.config
    keys = ("bank_size", "neighbourhood", "regions", "region_margin", "region_rows", "search_dim")
    sizes = {key: getattr(config, key) for key in keys}  # as its half
    assert config.regions == 2 and len(config.region_rows) == 4  # the default region banks, as PatchCore's
    patchcore = PatchCoreModel(get_model("patchcore").make_config(**_shared(config), **sizes))
    assert ensemble.projected == patchcore.projected
    patchcore.memory_bank.copy_(ensemble.memory_bank)
    if patchcore.projected:
        patchcore.search_basis.copy_(ensemble.search_basis)
    padim = PadimModel(get_model("padim").make_config(**_shared(config), n_features=config.n_features))
    padim.mean.copy_(ensemble.mean)
    padim.inv_covariance.copy_(ensemble.inv_covariance)
    assert torch.equal(padim.channel_index, ensemble.channel_index)
    image = torch.randn(2, 3, SYNTH_SIZE, SYNTH_SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        nearest, mahalanobis = ensemble.member_scores(image)
        torch.testing.assert_close(nearest, patchcore.patch_scores(patchcore.embed(image), patchcore.memory_bank))
        torch.testing.assert_close(
            mahalanobis, mahalanobis_distances(padim.embed(image), padim.mean, padim.inv_covariance)
        )
    (shift_a, scale_a), (shift_b, scale_b) = ensemble.calibration.tolist()
    expected = ((nearest - shift_a) / scale_a + (mahalanobis - shift_b) / scale_b) / 2
    torch.testing.assert_close(ensemble.combine(nearest, mahalanobis, ensemble.calibration), expected)
    assert scale_a > 0 and scale_b > 0 and (shift_a, shift_b) != (0.0, 0.0)  # fitted, not the identity


def test_ensemble_calibration_puts_held_out_good_patches_on_one_scale(synthetic_mvtec):
    from edgeiad.data import iter_batches, load_dataset
    from edgeiad.models.ensemble.fit import _held_out, fit_ensemble

    from .conftest import model_overrides

    config = get_model("ensemble").make_config(**model_overrides("ensemble"), calibration_share=0.25)
    train = load_dataset(synthetic_mvtec).train
    model, info = fit_ensemble(config, iter_batches(train, config.preprocessing()))
    held = _held_out(len(train), 0.25)
    assert info["n_calibration"] == held.numel() == 3 and info["n_fit"] == len(train) - 3
    images = next(iter_batches([train[i] for i in held.tolist()], config.preprocessing(), batch_size=8))[0]
    nearest, mahalanobis = model.member_scores(torch.from_numpy(images))
    for member, scores in enumerate((nearest, mahalanobis)):
        shift, scale = model.calibration[member].tolist()
        calibrated = ((scores - shift) / scale).flatten().double()
        assert abs(float(torch.quantile(calibrated, 0.5))) < 1e-5  # held-out median → 0
        assert abs(float(torch.quantile(calibrated, 0.995)) - 1.0) < 1e-4  # its 99.5 % quantile → 1


def _shared(config) -> dict:
    keys = ("backbone", "layers", "image_size", "resize", "interpolation", "seed", "sigma")
    return {key: getattr(config, key) for key in keys}


@pytest.mark.parametrize("sigma", [0.0, 1.0, 4.0])
@pytest.mark.parametrize(("grid", "size"), [((48, 48), (384, 384)), ((20, 48), (160, 384)), ((8, 8), (64, 64))])
def test_map_upsampling_as_two_matrix_products_equals_resize_then_blur(sigma, grid, size):
    from edgeiad.models._ops import GaussianBlur

    blur = GaussianBlur(sigma)
    scores = torch.rand(2, 1, *grid, generator=torch.Generator().manual_seed(6)) * 50
    expected = blur(torch.nn.functional.interpolate(scores, size=size, mode="bilinear", align_corners=False))
    torch.testing.assert_close(blur.upsampled(scores, size), expected, rtol=1e-5, atol=1e-4)
    assert blur.axis_operator(grid[0], size[0]).shape == (size[0], grid[0])


def test_score_share_scores_the_mean_of_the_top_of_the_smoothed_map():
    from edgeiad.models._ops import GaussianBlur, to_anomaly_map

    scores = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    anomaly_map, top = to_anomaly_map(scores, (64, 64), GaussianBlur(4.0), score_share=0.05)
    expected = np.sort(anomaly_map.flatten(1).numpy(), axis=1)[:, -205:].mean(axis=1)  # ceil(0.05 * 64 * 64) pixels
    np.testing.assert_allclose(top.numpy(), expected, rtol=1e-6)
    _, maximum = to_anomaly_map(scores, (64, 64), GaussianBlur(4.0))
    torch.testing.assert_close(maximum, anomaly_map.amax(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="score_share"):
        get_model("patchcore").make_config(score_share=1.0)


def test_score_share_of_a_large_map_reads_every_other_pixel_and_exports_within_tensorrt_topk_limit(tmp_path):
    # 5 % of the default 384 x 384 map is 7,373 pixels, above TensorRT's TopK limit of 3,840: the default PatchCore,
    # PaDiM and ensemble graphs could not be built. The score now reads every 2nd pixel in both axes (K = 1,844).
    import math

    import onnx
    import onnxruntime as ort

    from edgeiad.export.onnx import OPSET
    from edgeiad.export.trt_check import TOPK_MAX_K, check_onnx_for_tensorrt
    from edgeiad.models import _ops

    assert _ops.TOPK_MAX_K == TOPK_MAX_K
    assert [_ops.score_stride(size, 0.05) for size in [(64, 64), (256, 256), (384, 384), (1024, 1024)]] == [1, 1, 2, 4]
    for name in MODELS:  # every default that scores a top share stays within the limit
        config = get_model(name).make_config()
        share = getattr(config, "score_share", 0.0)
        if share:
            stride = _ops.score_stride(tuple(config.image_size), share)
            pixels = math.ceil(config.image_size[0] / stride) * math.ceil(config.image_size[1] / stride)
            assert 0 < math.ceil(share * pixels) <= TOPK_MAX_K, name

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blur = _ops.GaussianBlur(4.0)

        def forward(self, scores):
            return _ops.to_anomaly_map(scores, (384, 384), self.blur, 0.05)

    scores = torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(7)) * 10
    head = Head().eval()
    with torch.no_grad():
        anomaly_map, top = head(scores)
    sampled = np.sort(anomaly_map[:, :, ::2, ::2].flatten(1).numpy(), axis=1)[:, -1844:].mean(axis=1)
    np.testing.assert_allclose(top.numpy(), sampled, rtol=1e-6)
    every = np.sort(anomaly_map.flatten(1).numpy(), axis=1)[:, -7373:].mean(axis=1)
    np.testing.assert_allclose(top.numpy(), every, rtol=2e-3)  # the smooth map's top share barely moves
    path = tmp_path / "head.onnx"
    torch.onnx.export(head, (scores,), str(path), input_names=["scores"], output_names=["anomaly_map", "pred_score"],
                      opset_version=OPSET, dynamo=True, verbose=False)  # fmt: skip
    findings = check_onnx_for_tensorrt(path)
    assert not [f for f in findings if f.level == "error"], findings
    assert "TopK" in {node.op_type for node in onnx.load(str(path)).graph.node}
    exported = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"scores": scores.numpy()})
    np.testing.assert_allclose(exported[1], top.numpy(), rtol=1e-5)


def test_score_share_exports_as_a_constant_k_topk(synthetic_mvtec, tmp_path):
    import onnx

    from edgeiad.engine import train
    from edgeiad.export import export_run

    from .conftest import model_overrides

    # min_bank 1: the 25 % coreset of the fixture, not all 768 patches (GEMM-form distances of a bank holding every
    # training patch differ more in absolute terms between ONNX Runtime and eager; export's parity covers that).
    # No coarse score: with it this fixture's score differs by up to 0.019 of ~140 between ONNX Runtime and eager
    # (block 14 is deeper, so more float32 rounding), which is within parity's bound but not this one on the TopK.
    run = train("patchcore", synthetic_mvtec, out=tmp_path / "run", overrides={**model_overrides("patchcore"),
                "score_share": 0.05, "min_bank": 1, "coarse_weight": 0.0}, progress=False)  # fmt: skip
    artifact = export_run(run, target="onnx", out=tmp_path / "artifact")  # parity-checked against eager
    graph = onnx.load(str(artifact / "model.onnx")).graph
    assert "TopK" in {node.op_type for node in graph.node}
    # PatchCore reads every 4th pixel of the 64 x 64 map: K = ceil(0.05 * 16 * 16) = 13, not ceil(0.05 * 64 * 64)
    from edgeiad.export.trt_check import _constants, _value

    constants = _constants(graph)
    topk = [node for node in graph.node if node.op_type == "TopK"]
    assert [int(_value(constants[node.input[1]]).max()) for node in topk] == [13]
    parity = json.loads((artifact / "manifest.json").read_text())["parity"]
    assert parity["passed"] and parity["max_abs_score_error"] < 1e-3


def test_score_stride_reads_every_nth_map_pixel_and_runs_fitted_before_it_read_every_pixel():
    from edgeiad.models._ops import GaussianBlur, score_stride, to_anomaly_map

    scores = torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(11)) * 10
    blur = GaussianBlur(4.0)
    anomaly_map, every = to_anomaly_map(scores, (384, 384), blur, 0.02)  # K = 2,950 fits TensorRT: every pixel
    top = np.sort(anomaly_map.flatten(1).numpy(), axis=1)
    np.testing.assert_allclose(every.numpy(), top[:, -2950:].mean(axis=1), rtol=1e-6)
    same_map, fourth = to_anomaly_map(scores, (384, 384), blur, 0.02, 4)
    torch.testing.assert_close(same_map, anomaly_map)  # the map itself is not subsampled
    sampled = np.sort(anomaly_map[:, :, ::4, ::4].flatten(1).numpy(), axis=1)[:, -185:].mean(axis=1)
    np.testing.assert_allclose(fourth.numpy(), sampled, rtol=1e-6)
    assert abs(fourth - every).max() < 0.01 * float(every.min())  # a smooth map's top share barely moves
    # the stride asked for is a floor: TensorRT's TopK limit still raises it, never lowers it
    assert score_stride((384, 384), 0.05, 1) == 2 and score_stride((384, 384), 0.05, 4) == 4
    assert score_stride((1024, 1024), 0.05, 3) == 4

    for name in ("patchcore", "padim", "ensemble"):
        assert get_model(name).make_config().score_stride == 4
        legacy = get_model(name).config_cls().from_dict({"model": name, "image_size": [64, 64]})
        assert legacy.score_stride == 1, name  # an old run scores exactly as it was fitted and calibrated
    for bad in (0, 65, 2.0, True, "4"):
        with pytest.raises(ValueError, match="score_stride"):
            get_model("patchcore").make_config(score_stride=bad)


@pytest.mark.parametrize("dim", [100, 152, 200])
def test_gaussian_inverses_are_right_with_several_threads_at_every_channel_count(dim):
    """PaDiM and N-pad invert one covariance per position. torch's batched LU inverse (oneMKL) returns wrong
    inverses or fails from 150 × 150 up once torch runs two threads or more, which N-pad's default 150 channels
    hit on any multi-core machine; the Cholesky inverse they use is right at every size."""
    from edgeiad.models._fitting import spd_inverse, spd_solve

    generator = torch.Generator().manual_seed(dim)
    samples = torch.randn(96, 300, dim, generator=generator, dtype=torch.float64)
    covariance = samples.transpose(1, 2) @ samples / 300 + 0.01 * torch.eye(dim, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inverse = spd_inverse(covariance)
        solution = spd_solve(covariance, samples.transpose(1, 2))
    finally:
        torch.set_num_threads(threads)
    identity = torch.eye(dim, dtype=torch.float64).expand_as(covariance)
    torch.testing.assert_close(covariance @ inverse, identity, rtol=0, atol=1e-9)
    torch.testing.assert_close(covariance @ solution, samples.transpose(1, 2), rtol=0, atol=1e-9)


def test_a_covariance_with_nan_features_stops_the_fit_with_one_clear_line():
    from edgeiad.errors import DataError
    from edgeiad.models._fitting import spd_inverse

    covariance = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    covariance[1, 2, 2] = float("nan")
    with pytest.raises(DataError, match="not positive definite at 1 of 3 positions .*check the training images"):
        spd_inverse(covariance)


def test_a_wrong_covariance_inverse_stops_the_fit_however_ill_conditioned_the_covariance():
    """The check is relative to |A|·|X|: the right inverse of a nearly singular covariance (120 samples, 152
    channels, regularisation 1e-9) passes; at the default regularisation one matrix 1 % off fails."""
    from edgeiad.errors import DataError
    from edgeiad.models._fitting import _check_solution, spd_inverse

    samples = torch.randn(8, 120, 152, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    outer = samples.transpose(1, 2) @ samples / 120
    spd_inverse(outer + 1e-9 * torch.eye(152, dtype=torch.float64))  # checked inside: no error
    covariance = outer + 0.01 * torch.eye(152, dtype=torch.float64)
    inverse = spd_inverse(covariance)
    inverse[3] *= 1.01
    with pytest.raises(DataError, match="covariance inverse is wrong .*OMP_NUM_THREADS=1"):
        _check_solution(covariance, inverse, torch.eye(152, dtype=torch.float64), "inverse")
