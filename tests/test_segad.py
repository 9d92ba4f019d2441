"""SegAD (seed 003): trees as graph ops against xgboost, per-segment statistics against numpy/scipy, labelled
defects kept out of every scored set, segmentations, and the fp16 export keeping the split points exact."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="segad needs the [train] extra")
xgboost = pytest.importorskip("xgboost", reason="segad's trees are trained with xgboost-cpu ([train] extra)")

from edgeiad.data import load_dataset, take_labelled_defects  # noqa: E402
from edgeiad.errors import ConfigError, DataError  # noqa: E402
from edgeiad.models.segad.torch_model import segment_statistics, tree_margin  # noqa: E402
from edgeiad.models.segad.trees import booster_arrays, margin  # noqa: E402

from .conftest import SYNTH_SIZE, model_overrides  # noqa: E402
from .test_cli import assert_one_line_error, run_cli  # noqa: E402


@pytest.mark.parametrize("depth", [2, 5])
def test_complete_trees_score_exactly_what_xgboost_predicts(depth):
    rng = np.random.default_rng(depth)
    x = rng.normal(size=(200, 9)).astype(np.float32)
    x[:, 3] = np.round(x[:, 3])  # ties at split points: xgboost goes left only for x < threshold
    y = (x[:, 0] + 0.7 * x[:, 3] - 0.2 * x[:, 5] > 0.4).astype(int)
    params = {"objective": "binary:logitraw", "max_depth": depth, "num_parallel_tree": 7, "subsample": 0.6,
              "colsample_bynode": 0.6, "reg_alpha": 1.0, "learning_rate": 0.3, "seed": 1, "nthread": 1}  # fmt: skip
    booster = xgboost.train(params, xgboost.DMatrix(x, label=y), num_boost_round=4)
    expected = booster.predict(xgboost.DMatrix(x), output_margin=True)
    arrays = booster_arrays(booster, depth)
    leaves_per_tree = arrays["leaves"].shape[1]
    assert arrays["features"].shape == (28, 2**depth - 1) and leaves_per_tree == 2**depth
    np.testing.assert_allclose(margin(x, **arrays), expected, rtol=0, atol=1e-5)
    found = tree_margin(
        torch.from_numpy(x),
        torch.from_numpy(arrays["features"]),
        torch.from_numpy(arrays["thresholds"]),
        torch.from_numpy(arrays["leaves"].reshape(-1)),
        torch.tensor(float(arrays["base"])),
    )
    np.testing.assert_allclose(found.numpy(), expected, rtol=0, atol=1e-5)


def test_trees_refuse_other_objectives():
    x = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 2}, xgboost.DMatrix(x, label=x[:, 0] > 0), 1)
    with pytest.raises(Exception, match="binary:logitraw"):
        booster_arrays(booster, 2)


def test_segment_statistics_match_numpy_and_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    maps = rng.gamma(2.0, 1.0, size=(2, 2, 12, 10)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 12, 10))
    labels[1][labels[1] == 2] = 0  # segment 2 is empty in the second image
    labels[0, :, :] = np.where(labels[0] == 1, 1, labels[0])
    found = segment_statistics(torch.from_numpy(maps), torch.from_numpy(labels), 4, 0.995).numpy()
    assert found.shape == (2, 4 * 2 * 4)
    found = found.reshape(2, 4, 2, 4)  # image, statistic, base, segment
    for image in range(2):
        for base in range(2):
            for segment in range(4):
                values = maps[image, base][labels[image] == segment].astype(np.float64)
                if values.size == 0:
                    assert np.all(found[image, :, base, segment] == 0)
                    continue
                expected = [np.quantile(values, 0.995), stats.skew(values), stats.kurtosis(values), values.mean()]
                np.testing.assert_allclose(found[image, :, base, segment], expected, rtol=2e-3, atol=2e-4)


def test_flat_segments_give_zero_skew_and_kurtosis():
    maps = torch.full((1, 1, 8, 8), 3.0)
    found = segment_statistics(maps, torch.zeros(1, 8, 8, dtype=torch.long), 1, 0.995)
    torch.testing.assert_close(found, torch.tensor([[3.0, 0.0, 0.0, 3.0]]))


def test_labelled_defects_leave_the_test_set_seeded_and_capped(synthetic_mvtec):
    dataset = load_dataset(synthetic_mvtec)
    n_bad = sum(s.label for s in dataset.test)
    moved = take_labelled_defects(dataset, 2, seed=1)
    again = take_labelled_defects(dataset, 2, seed=1)
    other = take_labelled_defects(dataset, 2, seed=5)
    assert [s.path for s in moved.train_anomalous] == [s.path for s in again.train_anomalous]
    assert [s.path for s in moved.train_anomalous] != [s.path for s in other.train_anomalous]
    assert len(moved.train_anomalous) == 2 and all(s.label == 1 for s in moved.train_anomalous)
    assert not {s.path for s in moved.train_anomalous} & {s.path for s in moved.test}
    assert len(moved.test) == len(dataset.test) - 2
    capped = take_labelled_defects(dataset, 1000, seed=0)  # at most half of a type: the test set keeps it
    assert len(capped.train_anomalous) == n_bad // 2 and sum(s.label for s in capped.test) == n_bad - n_bad // 2
    summary = moved.summary()
    assert summary["n_train_anomalous"] == 2 and summary["train_anomalous_types"] == {"blob": 2}
    assert summary["fingerprint"] != dataset.summary()["fingerprint"]


def test_mvtec_train_defect_folders_are_labelled_training_images(synthetic_mvtec, tmp_path):
    import shutil

    root = tmp_path / "parts"
    shutil.copytree(synthetic_mvtec, root)
    (root / "train" / "scratch").mkdir()
    for path in sorted((root / "test" / "blob").iterdir())[:2]:
        shutil.copy(path, root / "train" / "scratch" / path.name)
    dataset = load_dataset(root)
    assert [s.defect_type for s in dataset.train_anomalous] == ["scratch", "scratch"]
    assert all(s.label == 0 for s in dataset.train) and len(dataset.train) == 12


def test_supervised_run_records_its_defects_and_export_never_scores_them(synthetic_mvtec, tmp_path):
    from edgeiad.engine import train
    from edgeiad.export import export_run
    from edgeiad.runs import read_json, run_dataset

    run = train(
        "segad", synthetic_mvtec, out=tmp_path / "run", overrides=model_overrides("segad"), progress=False,
        labelled_defects=2,
    )  # fmt: skip
    config = read_json(run / "config.json")
    paths = config["data"]["train_anomalous_paths"]
    assert len(paths) == 2 and config["fit"]["defects"] == "labelled" and config["fit"]["n_stage_defective"] == 2
    assert config["fit"]["tree_parity_max_abs"] < 1e-4
    scored = (run / "scores.csv").read_text()
    assert not any(path in scored for path in paths)
    assert "labelled defective training images: 2 blob" in (run / "train.log").read_text()
    dataset = run_dataset(config)
    assert not {s.path for s in dataset.test} & set(paths)
    artifact = export_run(run, "onnx", "fp16", "baked", "1", out=tmp_path / "fp16")
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["parity"]["passed"] and manifest["parity"]["auroc_images"] == len(dataset.test)
    assert manifest["model"]["config"]["bases"] == ["patchcore", "padim"]
    stage = manifest["second_stage"]
    assert stage["bases"] == ["patchcore", "padim"] and stage["segmentation"]["kind"] == "grid"
    assert stage["training"] == {"defects": "labelled", "n_base_images": 6, "n_stage_good": 6,
                                 "n_stage_defective": 2, "labelled_types": {"blob": 2}}  # fmt: skip
    assert stage["features"]["count"] == 2 * (4 * 4 + 1) and stage["trees"]["count"] == 60
    assert stage["trees"]["prior"]["weight"] == 1.0 and stage["trees"]["prior"]["std"] > 0
    import onnx

    graph = onnx.load(str(artifact / "model.onnx")).graph
    kinds = {init.name: init.data_type for init in graph.initializer}
    assert kinds["tree_thresholds"] == kinds["tree_leaves"] == onnx.TensorProto.FLOAT  # split points stay exact
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}  # no ONNX-ML operators
    scopes = [p.value for node in graph.node for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"]
    assert any("'bases.0.feature_extractor'" in scope for scope in scopes)
    assert not any("'bases.1.feature_extractor'" in scope for scope in scopes)  # PaDiM reuses PatchCore's pass


def test_bases_on_one_backbone_share_its_pass_with_identical_results(trained_runs):
    from edgeiad.runs import load_model

    _record, model = load_model(trained_runs["segad"])
    assert model.shared_backbone
    image = torch.randn(2, 3, SYNTH_SIZE, SYNTH_SIZE)
    with torch.no_grad():
        shared = model.infer(image)
        model.shared_backbone = False
        separate = model.infer(image)
    torch.testing.assert_close(shared, separate, rtol=0, atol=0)


def test_labelled_defects_are_refused_for_one_class_models(synthetic_mvtec, tmp_path, capsys):
    code, _out, err = run_cli(["train", "padim", "--data", synthetic_mvtec, "--labelled-defects", "3",
                               "--out", tmp_path / "r"], capsys)  # fmt: skip
    assert_one_line_error(code, err, r"--labelled-defects trains supervised models \(segad\), not padim")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("kind", ["single", "grid", "labels", "kmeans"])
def test_segmentations(synthetic_mvtec, tmp_path, kind):
    from edgeiad.engine import train
    from edgeiad.runs import load_model

    overrides = {**model_overrides("segad"), "segmentation": kind, "grid": (2, 3)}
    if kind == "labels":
        label_map = np.zeros((40, 40), np.uint8)
        label_map[:, 20:] = 200
        label_map[30:, :] = 90
        cv2.imwrite(str(tmp_path / "labels.png"), label_map)
        overrides["label_map"] = str(tmp_path / "labels.png")
    run = train("segad", synthetic_mvtec, out=tmp_path / "run", overrides=overrides, progress=False)
    _record, model = load_model(run)
    if kind == "kmeans":  # clusters of early features, assigned per patch: the textured parts use several
        assert model.centroids.shape[0] == 4 and torch.unique(model.centroids, dim=0).shape[0] == 4
        with torch.no_grad():
            labels = model.segments_of(torch.randn(2, 3, SYNTH_SIZE, SYNTH_SIZE))
        assert labels.shape == (2, SYNTH_SIZE // 4, SYNTH_SIZE // 4) and len(torch.unique(labels)) >= 2
        return
    labels = model.segment_labels.numpy()
    expected = {"single": 1, "grid": 6, "labels": 3}[kind]
    assert model.config.segments == expected and set(np.unique(labels).tolist()) == set(range(expected))
    assert labels.shape == (SYNTH_SIZE // 4, SYNTH_SIZE // 4)
    if kind == "labels":  # bottom rows are the value 90 (index 1), the right half above them 200 (index 2)
        assert labels[-1, 0] == 1 and labels[0, -1] == 2 and labels[0, 0] == 0


def test_unreadable_label_map_is_one_clear_error(synthetic_mvtec, tmp_path):
    from edgeiad.engine import train

    (tmp_path / "labels.png").write_bytes(b"not a png")
    overrides = {**model_overrides("segad"), "segmentation": "labels", "label_map": str(tmp_path / "labels.png")}
    with pytest.raises(DataError, match="label map .* cannot be read"):
        train("segad", synthetic_mvtec, out=tmp_path / "run", overrides=overrides, progress=False)
    assert not (tmp_path / "run").exists()


def test_segad_config_is_checked():
    from edgeiad.models import get_model

    with pytest.raises(ConfigError, match="is not a detector"):
        get_model("segad").make_config(bases=("segad",))
    with pytest.raises(ConfigError, match="needs label_map"):
        get_model("segad").make_config(segmentation="labels")


def test_balanced_trees_weight_the_defects_up_to_the_good_images():
    from edgeiad.models import get_model
    from edgeiad.models.segad.fit import fit_trees

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(44, 5)).astype(np.float32), np.array([0] * 40 + [1] * 4)
    config = get_model("segad").make_config(rounds=1, parallel_trees=2)
    found = json.loads(fit_trees(config, x, y).save_config())["learner"]["objective"]["reg_loss_param"]
    assert float(found["scale_pos_weight"]) == 10.0
    config.balance = False
    found = json.loads(fit_trees(config, x, y).save_config())["learner"]["objective"]["reg_loss_param"]
    assert float(found["scale_pos_weight"]) == 1.0
    assert len(config.feature_names()) == config.n_features == 2 * (4 * 4 + 1)


def test_supervised_study_tables_and_cached_base_outputs(synthetic_mvtec, tmp_path):
    from edgeiad.study.supervised import run_supervised_study

    kwargs = {"bases": ("patchcore",), "seeds": (0, 1), "shots": (0, 2)}
    document = run_supervised_study([str(synthetic_mvtec)], tmp_path, **kwargs)
    result = document["datasets"]["parts"]
    assert set(result["table"]) == {"synthetic", "2 labelled"}
    rows = result["table"]["2 labelled"]
    assert {"patchcore", "supervised classifier", "segad[patchcore] kmeans, paper"} <= set(rows)
    assert rows["patchcore"]["runs"] == 2 and 0.0 <= rows["patchcore"]["image_auroc"]["mean"] <= 1.0
    assert result["tree_parity"]["max_rel"] < 1e-5 and result["tree_parity"]["rows"] > 0
    assert "supervised classifier" not in result["table"]["synthetic"]  # nothing labelled to train it on
    assert "| segad[patchcore] grid, edgeiad |" in (tmp_path / "supervised.md").read_text()
    cache = list((tmp_path / "cache").glob("*.npz"))
    assert len(cache) == 1
    (tmp_path / "supervised.json").unlink()  # the trees re-run from the cached base outputs, same numbers
    again = run_supervised_study([str(synthetic_mvtec)], tmp_path, **kwargs)["datasets"]["parts"]
    assert again["table"] == result["table"]


def test_study_setting_is_checked(synthetic_mvtec, tmp_path, capsys):
    code, _out, err = run_cli(["study", "--setting", "dirty", "--data", synthetic_mvtec, "--out", tmp_path], capsys)
    assert_one_line_error(code, err, "--setting 'dirty' is unknown: use clean, supervised, fewshot, noisy or continual")
