"""The environment block of a bench result: CPU, ISA flags, GPU, library versions (read here, no network)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "neon")
LIBRARIES = (
    "edgeiad",
    "edgeiad-runtime",
    "numpy",
    "onnxruntime",
    "openvino",
    "tensorrt",
    "torch",
    "opencv-python-headless",
)


def _cpu() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags |= set(value.split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "isa": [flag for flag in ISA_FLAGS if flag in flags]}


def _gpu() -> list[dict]:
    """NVIDIA GPUs from nvidia-smi (name, memory), empty where there is none."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in done.stdout.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return gpus


def _versions() -> dict:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        return None
    return None


def environment() -> dict:
    """Everything a reader needs to know which box produced the numbers."""
    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": _cpu(),
        "memory_gb": _memory_gb(),
        "gpus": _gpu(),
        "versions": _versions(),
    }
