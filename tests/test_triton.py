"""`edgeiad triton`: one repository model per registered target, checked against Triton's own config schema.

Triton's ONNX Runtime, OpenVINO and TensorRT backends are not in the nvidia-pytriton wheel, so these configs
are validated structurally (protobuf text format parsed into tritonclient's model_config_pb2) and the model
files by running them with the local runtime; tests/test_triton_server.py serves models for real.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from edgeiad_runtime.manifest import check_integrity, validate_manifest

from edgeiad.cli import main
from edgeiad.errors import ConfigError
from edgeiad.export.profiles import load_profile
from edgeiad.export.targets import STATS_MODES, TARGETS
from edgeiad.serving import Settings, settings_from_profile, write_repository
from edgeiad.serving.pbtxt import Enum, render, string_map

from .runtime.conftest import SIZE, build_artifact

# Target (and, for trt, deferred or built) → (backend or platform, file in the version folder, instance kind).
EXPECTED = {
    ("onnx", False): ("onnxruntime", ["model.onnx"], "KIND_CPU"),
    ("openvino", False): ("openvino", ["model.bin", "model.xml"], "KIND_CPU"),
    ("trt", True): ("onnxruntime", ["model.onnx"], "KIND_GPU"),  # ORT builds the engine on the serving GPU
    ("trt", False): ("tensorrt_plan", ["model.plan"], "KIND_GPU"),
}
CASES = [
    (target, deferred, stats)
    for target in TARGETS
    for deferred in ((True, False) if TARGETS[target].deferrable else (False,))
    for stats in STATS_MODES
]


def parse_config(text: str):
    """config.pbtxt parsed against Triton's ModelConfig message (skips when tritonclient[grpc] is absent)."""
    pytest.importorskip("tritonclient.grpc", reason="Triton's config schema ships with tritonclient[grpc]")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def make_artifact(tmp_path, target: str, deferred: bool, stats: str, **options):
    if target == "openvino" and importlib.util.find_spec("openvino") is None:
        pytest.skip("an OpenVINO artifact needs openvino")
    return build_artifact(tmp_path / "artifact", target=target, deferred=deferred, stats=stats, **options)


@pytest.mark.parametrize(("target", "deferred", "stats"), CASES)
def test_each_target_becomes_a_model_with_its_backend(tmp_path, target, deferred, stats):
    artifact = make_artifact(tmp_path, target, deferred, stats, batch_max=8)
    settings = Settings(preferred_batch=(4, 8, 32), max_queue_delay_us=300)
    if (target, deferred, stats) == ("trt", False, "sidecar"):
        with pytest.raises(ConfigError, match="re-export with --stats baked"):
            write_repository(artifact, tmp_path / "repo", name="m", settings=settings)
        return
    model = write_repository(artifact, tmp_path / "repo", name="m", settings=settings)
    engine, files, kind = EXPECTED[(target, deferred)]
    assert sorted(p.name for p in (model / "1").iterdir()) == files
    config = parse_config((model / "config.pbtxt").read_text())
    assert engine in (config.backend, config.platform) and config.name == "m"
    assert config.max_batch_size == 8 and list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 300
    assert [(t.name, list(t.dims)) for t in config.input] == [("image", [3, SIZE, SIZE])]
    assert [(t.name, list(t.dims), list(t.reshape.shape)) for t in config.output] == [
        ("anomaly_map", [1, SIZE, SIZE], []),
        ("pred_score", [1], []),
    ]
    assert config.output[1].HasField("reshape")  # one score per image: [1] reshaped to the graph's []
    group = config.instance_group[0]
    assert (group.count, type(group).Kind.Name(group.kind)) == (1, kind)
    served = json.loads(config.parameters["edgeiad_manifest"].string_value)
    assert served == json.loads((model / "edgeiad.json").read_text())
    validate_manifest(served)
    check_integrity(model, served)  # the server's copy still matches the digest written at export


def test_a_deferred_engine_asks_onnx_runtime_for_tensorrt_at_the_artifact_precision(tmp_path):
    artifact = make_artifact(tmp_path, "trt", True, "baked")
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["precision"] == "fp32"
    config = parse_config((write_repository(artifact, tmp_path / "repo") / "config.pbtxt").read_text())
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and dict(accelerator.parameters) == {"precision_mode": "FP32"}


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_baked_sidecar_statistics_compute_what_the_artifact_computes(tmp_path, target):
    from edgeiad_runtime import Detector
    from edgeiad_runtime.backends.base import BackendChoice, create_backend

    artifact = make_artifact(tmp_path, target, False, "sidecar", stats_dtype="fp16")
    model = write_repository(artifact, tmp_path / "repo")
    manifest = json.loads((model / "edgeiad.json").read_text())
    file = "model.xml" if target == "openvino" else "model.onnx"
    backend = create_backend(BackendChoice(EXPECTED[(target, False)][0], file), model / "1", manifest, {}, None, 1)
    batch = np.random.default_rng(3).normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    with Detector.load(artifact, threads=1) as detector:
        maps, scores = detector.infer(batch)
    out = backend.run({"image": batch})  # the image alone: the statistics are constants now
    np.testing.assert_allclose(out["anomaly_map"][:, 0], maps, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["pred_score"], scores, rtol=1e-6, atol=1e-6)


def test_frames_model_takes_raw_frames_and_carries_the_artifact(tmp_path):
    artifact = make_artifact(tmp_path, "onnx", False, "sidecar", batch_max=4)
    model = write_repository(artifact, tmp_path / "repo", frames=True, settings=Settings(threads=2))
    assert (model / "1" / "model.py").is_file() and (model / "1" / "artifact" / "stats.safetensors").is_file()
    config = parse_config((model / "config.pbtxt").read_text())
    assert config.backend == "python" and config.max_batch_size == 4
    from tritonclient.grpc.model_config_pb2 import DataType

    frame = config.input[0]
    assert (frame.name, DataType.Name(frame.data_type), list(frame.dims)) == ("frame", "TYPE_UINT8", [-1, -1, 3])
    assert [(t.name, list(t.dims), t.HasField("reshape")) for t in config.output] == [
        ("anomaly_map", [1, SIZE, SIZE], False),
        ("pred_score", [1], False),
    ]
    assert config.parameters["edgeiad_threads"].string_value == "2"


def test_a_static_batch_is_served_at_exactly_that_shape(tmp_path):
    model = write_repository(make_artifact(tmp_path, "onnx", False, "baked", batch=4), tmp_path / "repo")
    config = parse_config((model / "config.pbtxt").read_text())
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [4, 3, SIZE, SIZE] and list(config.output[1].dims) == [4]


def test_profiles_give_the_batcher_settings():
    cpu = settings_from_profile(load_profile("intel-cpu"), instances=2)
    assert (cpu.preferred_batch, cpu.max_queue_delay_us, cpu.instances, cpu.gpu) == ((4, 8), 500, 2, False)
    assert settings_from_profile(load_profile("x86-cuda")).gpu
    with pytest.raises(ConfigError, match="preferred_batch"):
        settings_from_profile({"preferred_batch": [0]})


def test_config_strings_survive_quotes_newlines_and_non_ascii():
    tricky = 'a "quoted" \\ path\nwith ünïcode and \t tabs'
    text = render({"name": "m", "parameters": string_map({"note": tricky}), "max_batch_size": 0}, ["a comment"])
    config = parse_config(text)
    assert config.parameters["note"].string_value == tricky and text.startswith("# a comment\n")
    assert render({"kind": Enum("KIND_CPU"), "dims": []}) == "kind: KIND_CPU\ndims: []\n"


def test_cli_writes_a_model_and_refuses_to_overwrite_it(tmp_path, capsys):
    artifact = make_artifact(tmp_path, "onnx", False, "baked")
    args = ["triton", str(artifact), "--out", str(tmp_path / "repo"), "--name", "line3", "--profile", "onnx-cpu"]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "line3/config.pbtxt" in out and "line3/1/model.onnx" in out and "line3/edgeiad.json" in out
    with pytest.raises(SystemExit) as again:
        main(args)
    err = capsys.readouterr().err.strip()
    assert again.value.code == 2 and len(err.splitlines()) == 1 and "pass --force" in err
    with pytest.raises(SystemExit) as bad:
        main(["triton", str(artifact), "--out", str(tmp_path / "repo"), "--name", "no/slash"])
    assert bad.value.code == 2 and "model name 'no/slash' is invalid" in capsys.readouterr().err


def test_export_target_triton_exports_then_writes_the_repository(tmp_path, monkeypatch, capsys):
    import edgeiad.cli.export as cli_export
    import edgeiad.export as export

    calls = []

    def fake_export(run, **options):
        calls.append(options)
        return build_artifact(tmp_path / "artifacts" / "tiny-onnx")

    monkeypatch.setattr(export, "export_run", fake_export)
    monkeypatch.setattr(cli_export, "_pick_run", lambda model, run: tmp_path / "run")
    monkeypatch.setattr(cli_export, "_report", lambda *args: None)
    with pytest.raises(SystemExit) as done:
        main(["export", "padim", "--target", "triton", "--out", str(tmp_path / "repo")])
    assert done.value.code == 0, capsys.readouterr().err
    assert calls[0]["target"] == "onnx" and calls[0]["out"] is None  # the artifact goes where export puts it
    assert (tmp_path / "repo" / "tiny-onnx" / "config.pbtxt").is_file()
