"""Start-up and footprint: CLI and runtime import times as ratios to `python -c pass`, runtime-only install size.

Ratios, not seconds, so a slow or busy machine reads the same. Full size: EDGEIAD_BENCH_FULL=1 (more repeats,
and the runtime-only venv built from PyPI: a minute and ~200 MB of downloads).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .conftest import FULL, full_only

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "import edgeiad_runtime": ["-c", "import edgeiad_runtime"],
    "runtime Detector import": ["-c", "from edgeiad_runtime import Detector"],
    "edgeiad --help": ["-m", "edgeiad", "--help"],
    "edgeiad models": ["-m", "edgeiad", "models"],
}


def _median_seconds(args: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], capture_output=True, check=True, timeout=120)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def startup_ratios(repeats: int) -> dict[str, float]:
    """Median wall time of each command divided by the bare interpreter's."""
    seconds = {name: _median_seconds(args, repeats) for name, args in COMMANDS.items()}
    return {name: value / seconds["python -c pass"] for name, value in seconds.items()} | {
        f"{name} (s)": value for name, value in seconds.items()
    }


def test_startup_ratios(benchmark):
    ratios = benchmark.pedantic(startup_ratios, args=(15 if FULL else 2,), rounds=1, iterations=1)
    benchmark.extra_info.update(ratios)
    print({name: round(value, 2) for name, value in ratios.items()})
    assert all(value > 0 for value in ratios.values())


def folder_mb(folder: Path) -> float:
    """Bytes under `folder` (files only, links not followed) in MB."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


@full_only
def test_runtime_only_install_size(tmp_path, benchmark):
    venv = tmp_path / "runtime-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(ROOT / "runtimes" / "python")]
    benchmark.pedantic(subprocess.run, args=(pip,), kwargs={"check": True, "timeout": 1200}, rounds=1, iterations=1)
    site = next((venv / "lib").glob("python3*/site-packages"))
    tooling = sum(
        folder_mb(p) for p in site.iterdir() if p.name.split("-")[0] in ("pip", "setuptools", "_distutils_hack")
    )
    sizes = {"venv_mb": folder_mb(venv), "installed_mb": folder_mb(site) - tooling}
    benchmark.extra_info.update(sizes)
    print({name: round(value, 1) for name, value in sizes.items()}, os.environ.get("PIP_INDEX_URL", "PyPI"))
    assert sizes["installed_mb"] > 0
