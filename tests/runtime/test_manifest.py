"""manifest.json: schema validation, atomic writing, and refusal of tampered, truncated or incomplete artifacts."""

from __future__ import annotations

import json

import pytest
from edgeiad_runtime import Detector
from edgeiad_runtime.errors import ArtifactError, DataNotFoundError
from edgeiad_runtime.manifest import (
    MANIFEST_NAME,
    file_sha256,
    load_manifest,
    validate_manifest,
    write_manifest,
)


def _edit(folder, change) -> None:
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_write_manifest_hashes_every_file_atomically(fresh_artifact):
    folder = fresh_artifact(stats="sidecar")
    manifest = load_manifest(folder)
    assert sorted(manifest["sha256"]) == ["model.onnx", "stats.safetensors"]
    assert manifest["sha256"]["model.onnx"] == file_sha256(folder / "model.onnx")
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp file left behind
    (folder / "notes.txt").write_text("calibrated on line 3")
    written = write_manifest(folder, manifest)
    assert "notes.txt" in written["sha256"] and load_manifest(folder) == written


def test_write_manifest_refuses_an_invalid_manifest(fresh_artifact):
    folder = fresh_artifact()
    manifest = load_manifest(folder)
    before = (folder / MANIFEST_NAME).read_text()
    manifest["target"] = "tflite"
    with pytest.raises(ArtifactError, match="'target'"):
        write_manifest(folder, manifest)
    assert (folder / MANIFEST_NAME).read_text() == before


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda m: m.pop("target"), "'target' is missing"),
        (lambda m: m["batch"].update(mode="weird"), "'batch.mode'"),
        (lambda m: m["batch"].update(max=0), "'batch.max'"),
        (lambda m: m["batch"].update(mode="static"), "'batch.size'"),
        (lambda m: m["thresholds"].update(image="high"), "'thresholds.image'"),
        (lambda m: m["normalization"].update(image_max=-1.0), "'normalization.image_max'"),
        (lambda m: m["inputs"]["image"].update(shape=[1, 4, 32, 32]), "'inputs.image.shape'"),
        (lambda m: m["outputs"]["anomaly_map"].update(shape=["batch", 1, 16, 16]), "'outputs.anomaly_map.shape'"),
        (lambda m: m["preprocessing"].update(height=64), "'preprocessing'"),
        (lambda m: m["preprocessing"].update(interpolation="cubic"), "'preprocessing'"),
        (lambda m: m["files"].update(model="../model.onnx"), "'files.model'"),
        (lambda m: m["files"].update(model="model.xml"), "'files.model'"),
        (lambda m: m.update(deferred=True), "'deferred'"),
        (lambda m: m["stats"].update(mode="sidecar"), "'stats.file'"),
        (lambda m: m.update(precision_hint="fp64"), "'precision_hint'"),
        (lambda m: m["sha256"].update({"model.onnx": "abc"}), "'sha256'"),
        (lambda m: m.update(format="something-else"), "'format'"),
    ],
)
def test_edited_manifest_names_the_bad_key(fresh_artifact, change, key):
    folder = fresh_artifact()
    _edit(folder, change)
    with pytest.raises(ArtifactError, match=key) as info:
        Detector.load(folder, threads=1)
    assert "re-export" in str(info.value) and "\n" not in str(info.value)


def test_unsupported_schema_version(fresh_artifact):
    folder = fresh_artifact()
    _edit(folder, lambda m: m.update(schema_version=2))
    with pytest.raises(ArtifactError, match="unsupported schema_version 2"):
        Detector.load(folder, threads=1)


def test_tampered_model_file_is_refused(fresh_artifact):
    folder = fresh_artifact()
    blob = bytearray((folder / "model.onnx").read_bytes())
    blob[-5] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match=r"model\.onnx does not match its sha256.*re-export"):
        Detector.load(folder, threads=1)


def test_truncated_stats_file_is_refused(fresh_artifact):
    folder = fresh_artifact(stats="sidecar")
    blob = (folder / "stats.safetensors").read_bytes()
    (folder / "stats.safetensors").write_bytes(blob[:-4])
    with pytest.raises(ArtifactError, match=r"stats\.safetensors does not match its sha256"):
        Detector.load(folder, threads=1)
    # Without the hash check, the safetensors reader itself still refuses the truncated file.
    with pytest.raises(ArtifactError, match=r"stats\.safetensors is not a valid safetensors file"):
        Detector.load(folder, threads=1, verify=False)


@pytest.mark.parametrize("name", ["model.onnx", "stats.safetensors"])
def test_missing_listed_file(fresh_artifact, name):
    folder = fresh_artifact(stats="sidecar")
    (folder / name).unlink()
    with pytest.raises(ArtifactError, match=rf"{name} is listed in manifest.json but missing"):
        Detector.load(folder, threads=1, verify=False)


@pytest.mark.parametrize("name", ["extra.onnx", "model.onnx.data", "model.engine"])
def test_unlisted_model_file_is_refused(fresh_artifact, name):
    folder = fresh_artifact()
    (folder / name).write_bytes(b"\0" * 16)
    with pytest.raises(ArtifactError, match=rf"{name} is a model file not listed"):
        Detector.load(folder, threads=1)


def test_model_file_without_hash_is_refused(fresh_artifact):
    folder = fresh_artifact()
    _edit(folder, lambda m: m["sha256"].pop("model.onnx"))
    with pytest.raises(ArtifactError, match="model.onnx is named in manifest.json 'files' but has no sha256"):
        Detector.load(folder, threads=1)


def test_stats_tensors_must_match_the_file(fresh_artifact):
    folder = fresh_artifact(stats="sidecar")
    manifest = load_manifest(folder)
    manifest["stats"]["tensors"] = ["memory_bank"]
    write_manifest(folder, manifest)
    with pytest.raises(ArtifactError, match=r"stats\.safetensors holds tensors \['mean'\]"):
        Detector.load(folder, threads=1)


def test_baked_manifest_for_a_sidecar_graph_is_refused(fresh_artifact):
    folder = fresh_artifact(stats="sidecar")
    manifest = load_manifest(folder)
    manifest["stats"] = {"mode": "baked", "file": None, "tensors": [], "dtype": "fp32"}
    write_manifest(folder, manifest)
    with pytest.raises(ArtifactError, match=r"needs inputs \['mean'\]"):
        Detector.load(folder, threads=1)


def test_missing_folder_manifest_and_bad_json(tmp_path):
    with pytest.raises(DataNotFoundError, match="artifact folder not found"):
        Detector.load(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="has no manifest.json"):
        Detector.load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Detector.load(tmp_path)
    with pytest.raises(ArtifactError, match="not an object"):
        validate_manifest([])


def test_manifest_path_is_accepted_as_the_artifact(onnx_artifact):
    with Detector.load(onnx_artifact / MANIFEST_NAME, threads=1) as det:
        assert det.folder == onnx_artifact
