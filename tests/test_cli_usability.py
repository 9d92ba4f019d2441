"""The commands as users type them: no --run needed, one error line, fast help, profiles installed, doctor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgeiad.cli import app

from .test_cli import assert_one_line_error, run_cli

ROOT = Path(__file__).resolve().parents[1]


def _fake_run(folder: Path, model: str, mtime: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": {"model": model}}))
    (folder / "weights.safetensors").write_bytes(b"")
    os.utime(folder / "config.json", (mtime, mtime))
    return folder


def test_newest_run_of_the_model_is_picked_and_named(tmp_path, monkeypatch, capsys):
    from edgeiad.runs import newest_run

    old = _fake_run(tmp_path / "runs/padim/elpv/1", "padim", 1_000)
    new = _fake_run(tmp_path / "runs/padim/elpv/2", "padim", 2_000)
    _fake_run(tmp_path / "runs/patchcore/elpv/3", "patchcore", 3_000)
    _fake_run(tmp_path / "runs/padim/.x.staging-1-a", "padim", 4_000)  # unfinished: never chosen
    assert newest_run("padim", tmp_path / "runs") == new != old
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["export", "npad", "--target", "onnx"], capsys)
    assert_one_line_error(code, err, r"no npad run under runs/: train one with `edgeiad train npad")
    code, _, err = run_cli(["export", "--target", "onnx"], capsys)
    assert_one_line_error(code, err, r"pass MODEL \(its newest run under ./runs\) or --run RUN")


def test_usage_errors_are_one_line_naming_the_help(capsys):
    code, _, err = run_cli(["export", "patchcore", "--tagret", "trt"], capsys)
    assert_one_line_error(code, err, r"No such option: --tagret.*see `edgeiad export --help`")
    code, _, err = run_cli(["bench", "compare"], capsys)
    assert_one_line_error(code, err, r"Missing argument.*see `edgeiad bench compare --help`")
    assert "╭" not in err


def test_version_and_every_command_has_examples(capsys):
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.startswith("edgeiad 0.") and "runtime" in out
    import typer

    commands = typer.main.get_command(app).commands
    groups = {name: cmd for name, cmd in commands.items() if hasattr(cmd, "commands")}
    paths = [[name] for name in commands] + [[g, sub] for g, cmd in groups.items() for sub in cmd.commands]
    for path in paths:
        code, out, _ = run_cli([*path, "--help"], capsys)
        assert code == 0 and "Examples" in out and f"edgeiad {' '.join(path)}" in out, path


def test_threshold_help_lists_every_method(capsys):
    from edgeiad.cli import threshold
    from edgeiad.metrics.thresholds import IMAGE_METHODS, METHODS

    assert threshold._METHODS == ", ".join(METHODS) and threshold._IMAGE_METHODS == ", ".join(IMAGE_METHODS)


@pytest.mark.parametrize("argv", [["--help"], ["models"], ["doctor", "--json"]])
def test_quick_commands_never_import_torch(argv):
    probe = (
        "import sys\nfrom edgeiad.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('LEAKED', sorted(m for m in ('torch', 'scipy', 'cv2') if m in sys.modules), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120)
    assert "LEAKED []" in done.stderr, done.stderr[-500:]


def test_doctor_reports_every_target(capsys, tmp_path):
    code, out, _ = run_cli(["doctor", "--json", "--folder", tmp_path], capsys)
    checks = {c["check"]: c for c in json.loads(out)["checks"]}
    assert code == 0 and {"target onnx", "target openvino", "target trt", "free disk", "gpu"} <= set(checks)
    assert checks["write access"]["status"] == "ok" and "onnxruntime" in checks


@pytest.mark.parametrize("isa", [["avx2", "avx512f", "avx512_vnni"], ["avx2", "avx_vnni"], ["avx2"], ["neon"]])
def test_doctor_names_the_cpu_profile_that_fits_its_int8_units(isa):
    from edgeiad.doctor import isa_check
    from edgeiad.export.profiles import known_profiles

    line = isa_check({"model": "test CPU", "cores": 2, "isa": isa})[1]["detail"]
    named = ["intel-cpu-int8"] if "vnni" in " ".join(isa) else ["intel-cpu,", "onnx-cpu"]
    assert all(name in line and name.strip(",") in known_profiles() for name in named) and "edgeiad bench" in line


def test_profiles_are_package_data_of_the_wheel(tmp_path):
    from edgeiad.export.profiles import load_profile, profile_dirs

    shipped = profile_dirs()[-1]
    assert shipped.resolve() == (ROOT / "export").resolve()  # one copy: the package links to export/
    assert load_profile("jetson-orin-nano")["precision"] == "fp16"
    pytest.importorskip("setuptools")
    source = tmp_path / "src"  # a copy, so the build writes nothing into the checkout
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("pyproject.toml", "README.md", "edgeiad", "export"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"symlinks": True, "ignore": ignore} if copy is shutil.copytree else {}))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, source],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-800:]
    names = zipfile.ZipFile(next(tmp_path.glob("edgeiad-*.whl"))).namelist()
    expected = {f"edgeiad/profiles/{p.name}" for p in (ROOT / "export").glob("*.toml")}
    assert expected and expected <= set(names)


def test_export_settings_take_what_was_given_then_the_profile():
    from edgeiad.export.profiles import export_settings

    assert export_settings(None) == {"target": "onnx", "precision": "fp32", "stats": "baked", "batch": None}
    jetson = export_settings("jetson-orin-nano", target="trt")
    assert jetson == {"target": "trt", "precision": "fp16", "stats": "baked", "batch": 1}
    assert export_settings("jetson-orin-nano", precision="fp32")["precision"] == "fp32"


def test_python_api_is_light_and_named_beside_the_subpackages():
    import edgeiad
    import edgeiad.export as package  # the subpackage keeps its name: the verb is export_model

    assert {"train", "evaluate", "export_model", "benchmark"} <= set(edgeiad.__all__)
    assert callable(edgeiad.export_model) and edgeiad.export is package
