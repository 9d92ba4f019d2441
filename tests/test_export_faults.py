"""Run and artifact folders under field faults: modes for the service user, leftovers of killed processes,
atomic --force, full disks, half-written runs, signing, and options that used to end in tracebacks."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from edgeiad_runtime.files import current_umask

from edgeiad.errors import ConfigError, OutputError
from edgeiad.export import parse_batch
from edgeiad.runs import StagingDir, write_json

from .conftest import model_overrides
from .test_cli import assert_one_line_error, run_cli

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "runtimes/python")])}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_staged_folders_get_the_umask_modes(tmp_path):
    with StagingDir(tmp_path / "run") as staging:
        write_json(staging / "config.json", {"model": {}})
    mask = current_umask()
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o777 & ~mask  # mkdtemp's 0700 used to stay
    assert stat.S_IMODE((tmp_path / "run/config.json").stat().st_mode) == 0o666 & ~mask


def test_a_killed_writer_leaves_nothing_after_the_next_run(tmp_path):
    code = (
        "import os, sys\nfrom edgeiad.runs import StagingDir\n"
        "with StagingDir(sys.argv[1]) as staging:\n"
        "    (staging / 'model.onnx').write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(tmp_path / "art")], env=ENV, timeout=120)
    assert killed.returncode == -signal.SIGKILL and len(_hidden(tmp_path)) == 1  # the leftover, as before
    with StagingDir(tmp_path / "art") as staging:
        (staging / "manifest.json").write_text("{}")
    assert _hidden(tmp_path) == [] and (tmp_path / "art/manifest.json").is_file()


def test_force_swaps_atomically_and_recovers_an_interrupted_swap(tmp_path):
    target = tmp_path / "art"
    target.mkdir()
    (target / "manifest.json").write_text("old")
    live = tmp_path / f".art.staging-{os.getpid()}-busy"
    live.mkdir()  # another export still running in this process: never touched
    with StagingDir(target) as staging:
        (staging / "manifest.json").write_text("new")
    assert (target / "manifest.json").read_text() == "new" and _hidden(tmp_path) == [live.name]
    shutil.rmtree(target)  # killed between "rename the old one aside" and "rename the new one in"
    aside = tmp_path / f".art.old-{_dead_pid()}"
    aside.mkdir()
    (aside / "manifest.json").write_text("new")
    with StagingDir(tmp_path / "other"):
        pass
    with pytest.raises(ZeroDivisionError):
        with StagingDir(target):  # entering restores the aside copy; a failure inside keeps it
            1 / 0  # noqa: B018
    assert (target / "manifest.json").read_text() == "new" and _hidden(tmp_path) == [live.name]


def test_unwritable_places_give_output_errors(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputError, match=r"cannot write .*file"):
        with StagingDir(tmp_path / "file" / "art"):
            pass
    with pytest.raises(OutputError, match="No space left on device.*free disk space"):
        with StagingDir(tmp_path / "art"):
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]


@pytest.fixture
def read_only_mount(tmp_path):
    """A read-only tmpfs, where this machine lets the tests mount one."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip("this machine does not allow mounting a tmpfs (container without CAP_SYS_ADMIN)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_mount_gives_an_output_error(read_only_mount):
    with pytest.raises(OutputError, match=r"cannot write .*ro.*Read-only file system"):
        with StagingDir(read_only_mount / "art"):
            pass


def test_batch_dynamic_zero_is_refused():
    for text in ("dynamic:0", "dynamic:", "dynamic:x", "dynamics"):
        with pytest.raises(ConfigError, match=f"--batch '{text}' is invalid"):
            parse_batch(text)
    assert parse_batch("dynamic:3")["max"] == 3 and parse_batch("dynamic")["max"] == 16


def test_train_options_that_used_to_give_tracebacks(synthetic_mvtec, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    cases = [
        (["--seed", "-1"], r"seed -1 is not supported"),
        (["--image-size", "100000"], r"image size 100000x100000 is not supported: use multiples of 16 from 32"),
        (["--out", tmp_path / "file"], r"--out .*file is a file"),
    ]
    for options, pattern in cases:
        code, _, err = run_cli(["train", "padim", "--data", synthetic_mvtec, "--image-size", "64", *options], capsys)
        assert_one_line_error(code, err, pattern)


@pytest.fixture(scope="module")
def padim_run(synthetic_mvtec, tmp_path_factory) -> Path:
    pytest.importorskip("torch", reason="training needs the [train] extra")
    from edgeiad.engine import train

    out = tmp_path_factory.mktemp("faults") / "padim"
    return train("padim", synthetic_mvtec, out=out, overrides=model_overrides("padim"), progress=False)


def _broken_copy(run: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(run, copy)
    change(copy)
    return copy


def _edit_config(key: str, value):
    def change(run: Path) -> None:
        config = json.loads((run / "config.json").read_text())
        if value is None:
            config.pop(key)
        else:
            config["model"][key] = value
        (run / "config.json").write_text(json.dumps(config))

    return change


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda run: (run / "thresholds.json").unlink(), r"thresholds\.json is missing"),
        (_edit_config("model", None), r"config\.json has no model section"),
        (_edit_config("image_size", [96, 96]), r"weights\.safetensors does not fit .*config\.json"),
    ],
    ids=["no-thresholds", "no-model", "size-mismatch"],
)
def test_half_written_runs_give_one_line(padim_run, tmp_path, capsys, change, pattern):
    run = _broken_copy(padim_run, tmp_path, change)
    code, _, err = run_cli(["export", "--run", run, "--out", tmp_path / "art"], capsys)
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "art").exists() and not _hidden(tmp_path)


def test_export_to_a_full_disk_or_a_file_gives_one_line(padim_run, tmp_path, capsys):
    code, _, err = run_cli(["export", "--run", padim_run, "--out", padim_run / "config.json"], capsys)
    assert_one_line_error(code, err, r"--out .*config\.json is a file")

    def limit() -> None:  # the child's files may not grow past 64 KB: the ONNX write fails like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    out = tmp_path / "art"
    command = [sys.executable, "-m", "edgeiad", "export", "--run", str(padim_run), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV, preexec_fn=limit)
    assert_one_line_error(done.returncode, done.stderr, r"cannot write .*free disk space")
    assert not out.exists() and not _hidden(tmp_path)


def _keys(tmp_path: Path) -> tuple[Path, Path]:
    pytest.importorskip("cryptography", reason="signing needs the signing extra")
    for command in (
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(tmp_path / "key.pem")],
        ["openssl", "pkey", "-in", str(tmp_path / "key.pem"), "-pubout", "-out", str(tmp_path / "key.pub")],
    ):
        if shutil.which("openssl") is None or subprocess.run(command, capture_output=True).returncode:
            pytest.skip("openssl with Ed25519 is not available to make the README's keys")
    return tmp_path / "key.pem", tmp_path / "key.pub"


def test_signed_export_force_threshold_and_resign(padim_run, tmp_path, capsys):
    from edgeiad_runtime import Detector
    from edgeiad_runtime.errors import ArtifactError

    private, public = _keys(tmp_path)
    out = tmp_path / "art"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # an older artifact that --force replaces in one swap
    code, _, err = run_cli(["export", "--run", padim_run, "--out", out, "--force", "--sign", private], capsys)
    assert code == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~current_umask() and not _hidden(tmp_path)
    Detector.load(out, threads=1, trusted_keys=[public]).close()
    code, text, _ = run_cli(["threshold", out, "--set", "5.0"], capsys)
    assert code == 0 and "re-sign with `edgeiad sign" in text
    assert stat.S_IMODE((out / "manifest.json").stat().st_mode) == 0o666 & ~current_umask()
    with pytest.raises(ArtifactError, match="is not signed"):
        Detector.load(out, threads=1, trusted_keys=[public])
    code, _, _ = run_cli(["sign", out, "--key", private], capsys)
    assert code == 0
    Detector.load(out, threads=1, trusted_keys=[public]).close()
    code, _, err = run_cli(["export", "--run", padim_run, "--out", tmp_path / "b", "--sign", public], capsys)
    assert_one_line_error(code, err, r"signing key .*key\.pub is not an unencrypted PEM private key")
