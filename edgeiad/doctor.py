"""`edgeiad doctor`: what this machine can train, export and run, and what each target still needs."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from .bench.env import environment

MIN_FREE_GB = 2.0  # a run plus a few artifacts and the bench folder


def _check(name: str, status: str, detail: str, fix: str = "") -> dict:
    return {"check": name, "status": status, "detail": detail, "fix": fix}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def library_checks(versions: dict) -> list[dict]:
    """torch (training), ONNX Runtime, OpenVINO and TensorRT: installed or the pip command that adds them."""
    wanted = (
        ("torch", "torch", "train and export", "pip install './runtimes/python' '.[train]'"),
        ("onnxruntime", "onnxruntime", "run onnx artifacts", "pip install ./runtimes/python"),
        ("openvino", "openvino", "export and run openvino artifacts", "pip install '.[openvino]'"),
        ("tensorrt", "tensorrt", "build and run trt engines", "on the GPU box: pip install '.[tensorrt]'"),
    )
    checks = []
    for module, package, purpose, fix in wanted:
        if _installed(module):
            checks.append(_check(package, "ok", f"{versions.get(package) or 'installed'}: can {purpose}"))
        else:
            checks.append(_check(package, "missing", f"not installed: cannot {purpose}", fix))
    return checks


def isa_check(cpu: dict) -> list[dict]:
    """SIMD extensions and the precision OpenVINO would choose on its own here (edgeiad always sets one)."""
    isa = set(cpu["isa"])
    bf16 = bool(isa & {"avx512_bf16", "amx_bf16"})
    hint = (
        "this CPU has bf16: OpenVINO's default would be bf16; edgeiad records an explicit f32/f16 hint"
        if bf16
        else "OpenVINO runs f32 here (no bf16 units); int8 gains most with VNNI/AMX"
    )
    int8_units = isa & {"avx512_vnni", "avx_vnni", "amx_int8"}
    speed = (
        "int8 accelerated (VNNI/AMX): export with --profile intel-cpu-int8; "
        "edgeiad bench --targets openvino --precisions fp32,int8 says whether it pays here"
        if int8_units
        else "no int8 dot-product units: int8 may not pay here (edgeiad bench says); fp32 profiles: intel-cpu, onnx-cpu"
    )
    return [
        _check("cpu", "ok", f"{cpu['model']}, {cpu['cores']} cores, ISA {', '.join(cpu['isa']) or 'baseline'}"),
        _check("openvino precision", "ok", f"{hint}; {speed}"),
    ]


def gpu_check(gpus: list[dict]) -> dict:
    """An NVIDIA GPU (nvidia-smi), which TensorRT engines need."""
    if gpus:
        return _check("gpu", "ok", "; ".join(f"{g['name']} ({g['memory']}, driver {g['driver']})" for g in gpus))
    return _check("gpu", "none", "no NVIDIA GPU: trt exports are deferred, build them on the device")


def folder_checks(folder: Path) -> list[dict]:
    """Write access and free disk where runs/, artifacts/ and bench/ would go."""
    folder = Path(folder).resolve()
    writable = os.access(folder, os.W_OK | os.X_OK)
    free_gb = shutil.disk_usage(folder).free / 1024**3
    return [
        _check(
            "write access",
            "ok" if writable else "error",
            f"{folder} is {'writable' if writable else 'not writable'}",
            "" if writable else "cd to a folder you own, or pass --out elsewhere",
        ),
        _check(
            "free disk",
            "ok" if free_gb >= MIN_FREE_GB else "warn",
            f"{free_gb:.1f} GB free in {folder}",
            "" if free_gb >= MIN_FREE_GB else f"free at least {MIN_FREE_GB:g} GB",
        ),
    ]


def target_needs(has: dict) -> list[dict]:
    """Per export target: can it be exported and run on this machine, and what it needs otherwise."""
    rows = []
    for name, export_needs, run_needs in (
        ("onnx", ("torch",), ("onnxruntime",)),
        ("openvino", ("torch", "openvino"), ("openvino",)),
        ("trt", ("torch",), ("tensorrt", "gpu")),
    ):
        missing = [need for need in dict.fromkeys((*export_needs, *run_needs)) if not has.get(need)]
        detail = f"export: {' + '.join(export_needs)}; run: {' + '.join(run_needs)}"
        if name == "trt" and not has.get("tensorrt"):
            detail += " (without TensorRT the export is deferred: build-engine on the device)"
        rows.append(_check(f"target {name}", "ok" if not missing else "missing", detail, ", ".join(missing)))
    return rows


def diagnose(folder: Path = Path(".")) -> dict:
    """All checks, plus the environment they were read from."""
    env = environment()
    checks = library_checks(env["versions"]) + isa_check(env["cpu"]) + [gpu_check(env["gpus"])]
    checks += folder_checks(folder)
    has = {c["check"]: c["status"] == "ok" for c in checks}
    checks += target_needs(has)
    return {"checks": checks, "environment": env}
