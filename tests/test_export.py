"""Export round trips, parametrized over the model registry × the target table."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="export needs the [train] extra")

from edgeiad.errors import ArtifactError, ConfigError  # noqa: E402
from edgeiad.export import export_run, parse_batch  # noqa: E402
from edgeiad.export.targets import TARGETS  # noqa: E402
from edgeiad.models import MODELS  # noqa: E402

from .conftest import model_overrides  # noqa: E402
from .test_cli import assert_one_line_error, run_cli  # noqa: E402

CASES = [(m, t) for m in MODELS for t in TARGETS if TARGETS[t].unavailable() is None]


@pytest.fixture(scope="module")
def artifacts(exported):
    """fp32 baked dynamic-batch artifact per model × target (the session's, shared with the bench test)."""
    from edgeiad.bench.cases import ArtifactKey

    return {(m, t): exported / "artifacts" / ArtifactKey(m, t, "fp32", "baked").name for m, t in CASES}


@pytest.mark.parametrize(("model", "target"), CASES)
def test_round_trip_matches_eager_at_batch_1_and_n(artifacts, trained_runs, model, target):
    from edgeiad_runtime import Detector

    from edgeiad.runs import read_json

    artifact = artifacts[(model, target)]
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["parity"]["passed"] is True
    assert manifest["parity"]["max_rel_map_error"] < TARGETS[target].map_tolerance["fp32"]
    # Relative to the decision threshold: PatchCore's coarse score reads block 14, whose convolutions ONNX Runtime
    # rounds a little differently at batch 1 and N (here up to 0.006 on scores of ~140).
    assert manifest["parity"]["batch1_vs_batchN_score_diff"] < 1e-4 * max(1.0, abs(manifest["thresholds"]["image"]))
    assert manifest["inputs"]["image"]["shape"][0] == "batch"
    assert set(manifest["sha256"]) >= {manifest["files"]["model"]}
    thresholds = read_json(trained_runs[model] / "thresholds.json")
    assert manifest["thresholds"]["image"] == thresholds["image"]["value"]
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (80, 80, 3), dtype=np.uint8) for _ in range(5)]
    with Detector.load(artifact, threads=1) as detector:
        batch = detector.predict_batch(frames, color_order="RGB")
        singles = [detector.predict(frame, color_order="RGB") for frame in frames]
    for one, many in zip(singles, batch):
        assert abs(one.raw_score - many.raw_score) < 1e-4 * max(1.0, abs(one.raw_score))
        assert one.anomaly_map.shape == (80, 80)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize(("precision", "stats", "batch"), [("fp16", "sidecar", "2"), ("int8", "baked", "1")])
def test_onnx_precisions_and_sidecar_stats(trained_runs, tmp_path, model, precision, stats, batch):
    if stats not in MODELS[model].stats_modes:
        with pytest.raises(ConfigError, match="--stats baked"):
            export_run(trained_runs[model], "onnx", precision, stats, batch, out=tmp_path / "a")
        assert not (tmp_path / "a").exists()
        stats = "baked"
    artifact = export_run(trained_runs[model], "onnx", precision, stats, batch, out=tmp_path / "a", stats_dtype="fp16")
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["precision"] == precision and manifest["stats"]["mode"] == stats
    assert manifest["batch"] == parse_batch(batch)
    assert (artifact / "stats.safetensors").is_file() == (stats == "sidecar")
    assert manifest["parity"]["passed"] is True


def test_int8_quantizes_the_backbone_and_the_search_cross_term_only(trained_runs, tmp_path):
    """Beside the backbone, ONNX Runtime INT8 quantizes exactly PatchCore's lifted cross-term MatMuls (one per
    region bank and one for the coarse bank, models/patchcore/lifted.py): per-tensor weights, fp32 scores out, and
    ONNX Runtime fuses each into one integer GEMM. Everything else after the backbone stays fp32."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    artifact = export_run(trained_runs["patchcore"], "onnx", "int8", "baked", "1", out=tmp_path / "q")
    graph = onnx.load(str(artifact / "model.onnx")).graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers = {name: node for node in graph.node for name in node.input}
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}

    def dequantized(name):
        return name in producers and producers[name].op_type == "DequantizeLinear"

    quantized_inputs = {node.op_type for node in graph.node for name in node.input if dequantized(name)}
    assert "Conv" in quantized_inputs and "ReduceMin" not in quantized_inputs
    matmuls = [node for node in graph.node if node.op_type == "MatMul" and any(map(dequantized, node.input))]
    manifest = json.loads((artifact / "manifest.json").read_text())
    searches = [*range(len(manifest["model"]["config"]["region_rows"])), "coarse"]  # 4 region banks, coarse bank
    assert len(searches) == 5 and len(matmuls) == 5 == manifest["export"]["int8_search_matmuls"]
    assert "search cross term" in manifest["export"]["int8"]
    weights = {producers[node.input[1]].input[0] for node in matmuls}
    assert weights == {f"lifted_weight_{search}_quantized" for search in searches}
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name)
    for node in matmuls:
        assert initializers[producers[node.input[1]].input[1]].shape == ()  # per tensor: ORT fuses only that
        # The rounded (and range-clipped) queries feed the MatMul alone: |q|² is computed from the fp32 tensors,
        # so a query far outside the calibrated range keeps its whole distance.
        assert readers[node.input[0]] == [node.name]
        assert consumers[node.output[0]].op_type == "Sub"  # |b|² − it, in fp32: the scores are not re-quantized
    assert _activation_zero_point_types(graph) == {onnx.TensorProto.UINT8}  # U8S8: ORT's fast x86 path
    # 7-bit weights: AVX2 CPUs without VNNI sum u8 x s8 pairs in saturating int16 (PatchCore lost 0.042 AUROC there).
    weights = _int8_weights(graph)
    assert weights and max(int(np.abs(w).max()) for w in weights) <= 64
    assert any(int(np.abs(w).max()) > 32 for w in weights)  # the 7-bit range is used, not a collapsed scale
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(artifact / "model.onnx"), options, providers=["CPUExecutionProvider"])
    fused = [n for n in onnx.load(options.optimized_model_filepath).graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert len(fused) == len(searches)
    assert manifest["parity"]["passed"] is True


def test_int8_with_a_sidecar_bank_keeps_the_search_fp32(trained_runs, tmp_path):
    """A sidecar bank is a graph input: its lifted rows cannot be constants, so only the backbone is INT8."""
    import onnx

    artifact = export_run(trained_runs["patchcore"], "onnx", "int8", "sidecar", "1", out=tmp_path / "s")
    graph = onnx.load(str(artifact / "model.onnx")).graph
    producers = {out: node for node in graph.node for out in node.output}
    assert not [
        node for node in graph.node
        if node.op_type == "MatMul" and any(producers.get(n) and producers[n].op_type == "DequantizeLinear"
                                            for n in node.input)
    ]  # fmt: skip
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["export"]["int8_search_matmuls"] == 0 and manifest["export"]["int8"].endswith("backbone only")
    assert manifest["parity"]["passed"] is True


def _int8_weights(graph) -> list:
    """The stored int8 weight tensors of a QDQ graph."""
    import onnx
    from onnx import numpy_helper

    return [numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and i.dims]


def _activation_zero_point_types(graph) -> set:
    """Element types of the zero points of QuantizeLinear nodes (activations; weights are stored quantized)."""
    initializers = {init.name: init for init in graph.initializer}
    return {
        initializers[node.input[2]].data_type
        for node in graph.node
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in initializers
    }


def test_int8_for_tensorrt_keeps_symmetric_signed_activations(trained_runs, tmp_path):
    """TensorRT accepts only zero-point-0 int8 Q/DQ, so the trt target keeps S8S8 where ORT gets U8S8."""
    import onnx
    from onnx import numpy_helper

    artifact = export_run(trained_runs["patchcore"], "trt", "int8", "baked", "1", out=tmp_path / "t")
    graph = onnx.load(str(artifact / "model.onnx")).graph
    assert _activation_zero_point_types(graph) == {onnx.TensorProto.INT8}
    initializers = {init.name: init for init in graph.initializer}
    zero_points = [n.input[2] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert zero_points and all(not numpy_helper.to_array(initializers[z]).any() for z in zero_points)
    assert max(int(np.abs(w).max()) for w in _int8_weights(graph)) > 64  # TensorRT does not saturate: full range


def test_int8_keeps_the_backbone_stem_and_first_blocks_float_as_a_prefix(trained_runs, tmp_path):
    """The stem and first blocks amplify 8-bit rounding (BackboneSpec.int8_fp32_blocks), so INT8 leaves them fp32;
    no DequantizeLinear may feed them, or ONNX Runtime re-quantizes them per tensor when the session loads."""
    import ast

    import onnx

    artifact = export_run(trained_runs["patchcore"], "onnx", "int8", "baked", "1", out=tmp_path / "q")
    graph = onnx.load(str(artifact / "model.onnx")).graph
    producers = {out: node for node in graph.node for out in node.output}

    def scopes(node):
        props = {p.key: p.value for p in node.metadata_props}
        return [str(s) for s in ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))]

    def early(node):
        return any(s.endswith(("feature_extractor.stem", "feature_extractor.blocks.0", "feature_extractor.blocks.1"))
                   for s in scopes(node))  # fmt: skip

    def upstream_ops(node, seen=None):
        seen = set() if seen is None else seen
        for name in node.input:
            parent = producers.get(name)
            if parent is not None and parent.name not in seen:
                seen.add(parent.name)
                yield parent.op_type
                yield from upstream_ops(parent, seen)

    convs = [node for node in graph.node if node.op_type == "Conv"]
    early_convs = [node for node in convs if early(node)]
    backbone = [node for node in convs if any("feature_extractor.blocks" in s for s in scopes(node))]
    late_convs = [node for node in backbone if not early(node)]
    assert len(early_convs) >= 5 and late_convs
    assert not any("DequantizeLinear" in set(upstream_ops(node)) for node in early_convs)
    assert all(producers[node.input[1]].op_type == "DequantizeLinear" for node in late_convs)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["export"]["int8_kept_fp32"] == [
        "feature_extractor.stem", "feature_extractor.blocks.0", "feature_extractor.blocks.1"
    ]  # fmt: skip
    assert manifest["parity"]["passed"] is True


def test_int8_of_a_student_teacher_keeps_student_and_autoencoder_float(trained_runs, tmp_path):
    """Backbone-only INT8 quantizes the frozen teacher, never the trained student and autoencoder whose
    difference from it is the anomaly map."""
    import onnx

    from edgeiad.export.onnx import backbone_node_names

    artifact = export_run(trained_runs["efficientad"], "onnx", "int8", "baked", "1", out=tmp_path / "q")
    graph = onnx.load(str(artifact / "model.onnx")).graph
    producers = {out: node for node in graph.node for out in node.output}

    def quantized(node):  # INT8 weights: the weight input comes through a DequantizeLinear
        return node.input[1] in producers and producers[node.input[1]].op_type == "DequantizeLinear"

    convs = [node for node in graph.node if node.op_type == "Conv"]
    backbone = set(backbone_node_names(graph))
    assert any(quantized(node) for node in convs if node.name in backbone)
    float_convs = [node for node in convs if node.name not in backbone]
    assert len(float_convs) >= 12  # student and autoencoder (the map's blur is a MatMul now)
    assert not any(quantized(node) for node in float_convs)
    assert json.loads((artifact / "manifest.json").read_text())["parity"]["passed"] is True


def test_sidecar_bank_can_be_hot_swapped(synthetic_mvtec, tmp_path):
    from edgeiad_runtime import Detector
    from edgeiad_runtime.manifest import load_manifest, write_manifest
    from edgeiad_runtime.safetensors_io import load_file, save_file

    from edgeiad.engine import train

    # One bank: its rows may change. Region banks (the default) keep theirs; tests/test_region_banks.py.
    overrides = {**model_overrides("patchcore"), "regions": 1}
    run = train("patchcore", synthetic_mvtec, out=tmp_path / "run", overrides=overrides, progress=False)
    artifact = export_run(run, "onnx", "fp32", "sidecar", "dynamic", out=tmp_path / "s")
    frame = np.full((64, 64, 3), 128, dtype=np.uint8)
    with Detector.load(artifact, threads=1) as detector:
        before = detector.predict(frame).raw_score
    stats = load_file(artifact / "stats.safetensors")
    # the default projected search's bases travel with the bank, and so do the coarse score's bank and calibration
    assert set(stats) == {"memory_bank", "search_basis", "coarse_bank", "coarse_calibration"}
    bank = stats["memory_bank"]
    stats["memory_bank"] = bank[: len(bank) // 2]  # refit on the appliance (same bases: the same metric)
    save_file(stats, artifact / "stats.safetensors")
    write_manifest(artifact, load_manifest(artifact, verify=False))
    with Detector.load(artifact, threads=1) as detector:
        after = detector.predict(frame).raw_score
    assert after >= before - 1e-4  # a smaller bank can only move patches farther away


def test_bad_requests_are_refused_with_one_line(trained_runs, tmp_path, capsys):
    run = trained_runs["padim"]
    code, _, err = run_cli(["export", "--run", run, "--target", "tflite"], capsys)
    assert_one_line_error(code, err, r"unknown target 'tflite': choose one of onnx, openvino, trt")
    code, _, err = run_cli(["export", "--run", run, "--precision", "int4"], capsys)
    assert_one_line_error(code, err, r"precision 'int4' is not supported by onnx: use fp32, fp16, int8")
    code, _, err = run_cli(["export", "patchcore", "--run", run], capsys)
    assert_one_line_error(code, err, r"holds a padim model, not patchcore")
    code, _, err = run_cli(["export", "--run", run, "--batch", "0"], capsys)
    assert_one_line_error(code, err, r"--batch '0' is invalid")
    code, _, err = run_cli(["export", "--run", tmp_path / "missing"], capsys)
    assert_one_line_error(code, err, r"run folder not found")
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = run_cli(["export", "--run", run, "--out", out], capsys)
    assert_one_line_error(code, err, r"exists and is not empty: choose a new folder or pass --force")
    code, _, err = run_cli(["export", "--run", run, "--out", out, "--force"], capsys)
    assert_one_line_error(code, err, r"--force refused: .* is not an edgeiad artifact folder")
    assert (out / "notes.txt").read_text() == "keep me"


def test_force_replaces_an_artifact_and_failed_parity_leaves_nothing(trained_runs, tmp_path, monkeypatch):
    run = trained_runs["padim"]
    out = export_run(run, "onnx", "fp32", "baked", "1", out=tmp_path / "a")
    first = json.loads((out / "manifest.json").read_text())["created"]
    export_run(run, "onnx", "fp32", "baked", "2", out=out, force=True)
    assert json.loads((out / "manifest.json").read_text())["batch"]["size"] == 2 or first
    monkeypatch.setitem(TARGETS["onnx"].map_tolerance, "fp32", 0.0)
    with pytest.raises(ArtifactError, match=r"parity check failed: .* nothing was written"):
        export_run(run, "onnx", "fp32", "baked", "1", out=tmp_path / "b")
    assert not (tmp_path / "b").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_profiles_apply_and_unknown_ones_are_named(trained_runs, tmp_path, capsys):
    from edgeiad.export.profiles import PROFILE_KEYS, known_profiles, load_profile

    shipped = known_profiles()
    assert {"intel-cpu", "intel-cpu-int8", "jetson-orin-nano", "x86-cuda", "onnx-cpu"} <= set(shipped)
    for name in shipped:
        profile = load_profile(name)
        assert profile["target"] in TARGETS and profile["precision"] in TARGETS[profile["target"]].precisions
        assert set(profile) <= PROFILE_KEYS and profile["description"]
    out = tmp_path / "int8"
    code, _, err = run_cli(
        ["export", "--run", trained_runs["padim"], "--profile", "intel-cpu-int8", "--out", str(out)], capsys
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["target"], manifest["precision"]) == ("openvino", "int8")
    with pytest.raises(ConfigError, match="sets image_size, which an export cannot change .* --image-size"):
        sized = tmp_path / "sized.toml"  # early profiles carried a key that never reached the model
        sized.write_text('target = "onnx"\nimage_size = 256\n')
        load_profile(str(sized))
    code, _, err = run_cli(["export", "--run", trained_runs["padim"], "--profile", "toaster"], capsys)
    assert_one_line_error(code, err, r"profile 'toaster' not found: use one of .*intel-cpu")
    with pytest.raises(ConfigError, match="unknown keys"):
        bad = tmp_path / "bad.toml"
        bad.write_text('target = "onnx"\ncolour = "red"\n')
        load_profile(str(bad))


@pytest.mark.parametrize("model", list(MODELS))
def test_deferred_trt_artifact_passes_trt_check_and_names_build_engine(artifacts, model, capsys):
    artifact = artifacts[(model, "trt")]
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["deferred"] is True and manifest["files"]["model"] == "model.onnx"
    assert manifest["engine"]["build"]["precision"] == "fp32"
    code, out, _ = run_cli(["trt-check", artifact], capsys)
    assert code == 0 and "OK for TensorRT 10" in out
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        before = (artifact / "manifest.json").read_bytes()
        code, _, err = run_cli(["build-engine", artifact], capsys)
        assert_one_line_error(code, err, r"TensorRT is not installed: run pip install 'edgeiad\[tensorrt\]'")
        assert (artifact / "manifest.json").read_bytes() == before


@pytest.fixture(scope="module")
def good_only_run(synthetic_mvtec, tmp_path_factory):
    """A PaDiM run trained on a plain folder of good images: no labelled test set, so no AUROC gate."""
    from edgeiad.engine import train

    from .conftest import model_overrides

    out = tmp_path_factory.mktemp("good-only") / "padim"
    return train("padim", synthetic_mvtec / "train/good", out=out, overrides=model_overrides("padim"), progress=False)


def test_reduced_precision_without_labels_is_refused_when_good_verdicts_flip(good_only_run, tmp_path, capsys):
    # The in-sample training scores spread by ~0.002 around 3.165 and the good-only threshold sits 3 sigma
    # above: fp16's score shift (~0.01) moves every image across it, though the map parity passes.
    args = ["export", "--run", good_only_run, "--precision", "fp16", "--out", tmp_path / "bad"]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, r"fp16 flips the verdict of 12 of 12 good training images .* --accept-drift")
    assert not (tmp_path / "bad").exists()
    code, out, _ = run_cli([*args, "--accept-drift"], capsys)
    assert code == 0 and "accepted by --accept-drift" in out
    parity = json.loads((tmp_path / "bad/manifest.json").read_text())["parity"]
    assert "auroc_drop" not in parity and parity["passed"] is True
    drift = parity["drift"]
    assert drift["images"] == 12 and drift["source"].startswith("training images (in-sample")
    assert drift["flip_share"] == 1.0 and drift["accepted_over_limit"] is True and drift["accept_drift"] is True
    assert drift["eager_flagged"] == 0 and drift["exported_flagged"] == 12


def test_reduced_precision_within_the_flip_limit_is_written(good_only_run, tmp_path, monkeypatch):
    monkeypatch.setitem(TARGETS["onnx"].flip_tolerance, "fp16", 1.0)
    artifact = export_run(good_only_run, "onnx", "fp16", "baked", "2", out=tmp_path / "a")
    drift = json.loads((artifact / "manifest.json").read_text())["parity"]["drift"]
    assert drift["limit"] == 1.0 and drift["accept_drift"] is False and "accepted_over_limit" not in drift
    assert drift["max_abs_score_drift"] > 0 and drift["threshold"] > 0
