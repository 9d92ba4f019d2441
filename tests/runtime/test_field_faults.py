"""Field faults around Detector: NaN fails closed, service-user permissions, manifest integrity and signatures,
graph/manifest mismatches caught at load, hostile numbers, and close() racing predict()."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeiad_runtime import Detector
from edgeiad_runtime.__main__ import main as runtime_cli
from edgeiad_runtime.errors import ArtifactError, ConfigError, EdgeiadError, NonFiniteScoreError
from edgeiad_runtime.files import current_umask
from edgeiad_runtime.manifest import MANIFEST_NAME, load_manifest, write_manifest
from edgeiad_runtime.safetensors_io import save_file
from onnx import numpy_helper

from .conftest import MEAN, build_artifact

ROOT = Path(__file__).resolve().parents[2]
FRAME = np.full((24, 40, 3), 90, np.uint8)


def _nan_artifact(folder: Path) -> Path:
    """A baked artifact whose statistics are NaN: every score and map the model returns is NaN."""
    build_artifact(folder)
    model = onnx.load(str(folder / "model.onnx"))
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == "mean32":
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(np.full_like(MEAN, np.nan), "mean32"))
    onnx.save(model, str(folder / "model.onnx"))
    write_manifest(folder, load_manifest(folder, verify=False))
    return folder


def test_nan_from_the_model_is_an_error_never_a_pass(tmp_path, capsys):
    folder = _nan_artifact(tmp_path / "nan")
    with Detector.load(folder, threads=1) as detector:
        with pytest.raises(NonFiniteScoreError, match="image 0: .*NaN or infinite.*never a pass"):
            detector.predict(FRAME)
        with pytest.raises(NonFiniteScoreError, match="image 0"):
            detector.predict_batch([FRAME, FRAME])
        with pytest.raises(NonFiniteScoreError):
            detector.infer(np.zeros((2, 3, 32, 32), np.float32))
    image = tmp_path / "frame.png"
    import cv2

    cv2.imwrite(str(image), FRAME)
    assert runtime_cli([str(folder), str(image), "--threads", "1"]) == 1
    line = json.loads(capsys.readouterr().out)
    assert "score" not in line and "NaN or infinite" in line["error"]


def test_nan_statistics_are_refused_at_load(fresh_artifact):
    folder = fresh_artifact(stats="sidecar")
    save_file({"mean": np.full_like(MEAN, np.nan)}, folder / "stats.safetensors")
    write_manifest(folder, load_manifest(folder, verify=False))
    with pytest.raises(ArtifactError, match="tensor 'mean' holds NaN"):
        Detector.load(folder, threads=1)


def test_written_files_get_the_umask_modes(tmp_path):
    folder = build_artifact(tmp_path / "artifact", stats="sidecar")
    mask = current_umask()
    for name in (MANIFEST_NAME, "stats.safetensors", "model.onnx"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o666 & ~mask, name
    previous = os.umask(0o002)  # a group-writable site policy is honoured too
    try:
        write_manifest(folder, load_manifest(folder))
        assert stat.S_IMODE((folder / MANIFEST_NAME).stat().st_mode) == 0o664
    finally:
        os.umask(previous)


def _as_nobody(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "runtimes/python")])}
    command = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable, "-c", code, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="running a child as another user needs root and setpriv",
)
def test_an_artifact_written_by_one_user_loads_as_the_service_user():
    base = Path(tempfile.mkdtemp(prefix="edgeiad-perm-"))  # pytest's tmp_path is 0700: nobody cannot enter it
    try:
        os.chmod(base, 0o755)
        folder = build_artifact(base / "artifact", stats="sidecar")
        probe = "import sys, numpy as np, edgeiad_runtime as r; r.Detector.load(sys.argv[1]).predict(np.zeros((9, 9)))"
        done = _as_nobody(probe, str(folder))
        assert done.returncode == 0, done.stderr
        (folder / MANIFEST_NAME).chmod(0o600)  # what mkstemp used to leave: the error must say so
        done = _as_nobody("import edgeiad_runtime.__main__ as m, sys; sys.exit(m.main(sys.argv[1:]))", str(folder), "x")
        assert done.returncode == 2
        assert "manifest.json is not readable by uid 65534" in done.stderr and "chmod -R a+rX" in done.stderr
    finally:
        shutil.rmtree(base)


def test_one_flipped_byte_in_the_manifest_is_refused(fresh_artifact):
    folder = fresh_artifact()
    path = folder / MANIFEST_NAME
    text = path.read_text()
    path.write_text(text.replace('"image": 1.0', '"image": 9.0', 1))  # the image threshold: bad parts would pass
    with pytest.raises(ArtifactError, match="does not match its integrity digest"):
        Detector.load(folder, threads=1)
    Detector.load(folder, threads=1, verify=False).close()  # verify=False is the explicit opt-out
    path.write_text(json.dumps({k: v for k, v in json.loads(text).items() if k != "integrity"}))
    with pytest.raises(ArtifactError, match="has no integrity digest"):
        Detector.load(folder, threads=1)


def _keypair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    pytest.importorskip("cryptography", reason="signatures need the signing extra")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private, public = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def test_signed_artifacts_load_only_with_a_trusted_key(fresh_artifact, tmp_path, capsys):
    private, public = _keypair(tmp_path, "line3")
    _, other = _keypair(tmp_path, "other")
    folder = fresh_artifact()
    with pytest.raises(ArtifactError, match="is not signed but trusted keys were given"):
        Detector.load(folder, threads=1, trusted_keys=[public])
    write_manifest(folder, load_manifest(folder), signing_key=private)
    Detector.load(folder, threads=1, trusted_keys=[other, public]).close()
    with pytest.raises(ArtifactError, match="not signed by any trusted key"):
        Detector.load(folder, threads=1, trusted_keys=[other])
    with pytest.raises(ArtifactError, match="need verify=True"):
        Detector.load(folder, threads=1, trusted_keys=[public], verify=False)
    # An attacker who edits the threshold and recomputes the digest still lacks the private key.
    manifest = load_manifest(folder)
    manifest["thresholds"]["image"] = 99.0
    write_manifest(folder, manifest)
    with pytest.raises(ArtifactError, match="is not signed"):
        Detector.load(folder, threads=1, trusted_keys=[public])
    assert runtime_cli([str(folder), "x.png", "--trusted-key", str(public)]) == 2
    assert "is not signed" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not a PEM public key"):
        Detector.load(folder, threads=1, trusted_keys=[private])


def _mean_shape(folder: Path, shape: tuple) -> None:
    save_file({"mean": np.zeros(shape, np.float32)}, folder / "stats.safetensors")
    write_manifest(folder, load_manifest(folder, verify=False))


def test_graph_and_manifest_disagreements_fail_at_load(fresh_artifact):
    folder = fresh_artifact(stats="sidecar")
    _mean_shape(folder, (1, 4, 1, 1))
    with pytest.raises(ArtifactError, match=r"declares mean as \[1, 3, 1, 1\] but the stats file says \[1, 4, 1, 1\]"):
        Detector.load(folder, threads=1)
    folder = fresh_artifact(stats="sidecar")
    manifest = load_manifest(folder)
    for section in (manifest["inputs"]["image"], manifest["outputs"]["anomaly_map"]):
        section["shape"][2:] = [64, 64]
    manifest["preprocessing"].update(height=64, width=64)
    write_manifest(folder, manifest)
    with pytest.raises(ArtifactError, match=r"declares image as \[\?, 3, 32, 32\] but manifest.json says"):
        Detector.load(folder, threads=1)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ('{"schema_version": 1' + "0" * 5000 + "}", "not valid JSON"),
    ],
)
def test_hostile_json_gives_one_line(tmp_path, text, needle):
    (tmp_path / MANIFEST_NAME).write_text(text)
    with pytest.raises(ArtifactError, match=needle) as info:
        Detector.load(tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("thresholds.image", 10**400), ("preprocessing.height", 10**400), ("normalization.image_max", 10**30 * 1.0e300)],
)
def test_hostile_numbers_name_the_key(fresh_artifact, key, value):
    folder = fresh_artifact()
    data = json.loads((folder / MANIFEST_NAME).read_text())
    section, name = key.split(".")
    data[section][name] = value
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=section):
        Detector.load(folder, threads=1, verify=False)


def _predict_until_closed(detector: Detector, frame: np.ndarray, start: threading.Barrier, errors: list) -> None:
    start.wait()
    for _ in range(10):
        try:
            detector.predict(frame)
        except EdgeiadError as exc:
            assert "is closed" in str(exc)
        except BaseException as exc:  # the point is that nothing else escapes
            errors.append(exc)


def test_close_racing_predict_never_raises_a_foreign_error(onnx_artifact):
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)  # slow enough to overlap
    errors: list[BaseException] = []
    for attempt in range(10):
        detector = Detector.load(onnx_artifact, threads=1)
        start = threading.Barrier(5)
        workers = [
            threading.Thread(target=_predict_until_closed, args=(detector, frame, start, errors)) for _ in range(4)
        ]
        for worker in workers:
            worker.start()
        start.wait()
        time.sleep(0.01 + 0.002 * attempt)  # close while predictions are in flight (AttributeError before)
        detector.close()
        for worker in workers:
            worker.join(30)
        assert "closed" in repr(detector)
    assert not errors, errors
