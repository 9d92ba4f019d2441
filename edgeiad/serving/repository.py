"""`edgeiad triton`: an artifact folder becomes one model of a Triton model repository.

REPO/<name>/config.pbtxt, REPO/<name>/<version>/model.{onnx,xml+bin,plan} and REPO/<name>/edgeiad.json (the
artifact's manifest, digest intact). The config carries the manifest too (parameter `edgeiad_manifest`), so
`edgeiad_runtime.RemoteDetector(url, name)` preprocesses and calibrates exactly like the local runtime.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, ConfigError
from .pbtxt import Enum, plain_map, render, string_map

MANIFEST_COPY = "edgeiad.json"
MANIFEST_PARAMETER = "edgeiad_manifest"
DEFAULT_QUEUE_DELAY_US = 500
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TRT_PRECISION = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}


@dataclass(frozen=True)
class Serving:
    """How Triton runs an artifact: backend or platform, the model file, and where instances live."""

    backend: str | None
    platform: str | None
    source: str  # the artifact's model file
    model_file: str  # its name in the version folder (Triton's default for the backend)
    kind: str  # KIND_CPU or KIND_GPU
    accelerator: str | None = None  # ONNX Runtime's TensorRT execution accelerator for a deferred engine


@dataclass(frozen=True)
class Settings:
    """Batching and placement, from a device profile and the command line."""

    dynamic_batching: bool = True
    preferred_batch: tuple[int, ...] = ()
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = 1
    threads: int | None = None
    gpu: bool = False


def serving_for(manifest: dict, gpu: bool) -> Serving:
    """The Triton backend matching an artifact's target (a deferred TensorRT one runs its ONNX with TRT in ORT)."""
    target, files = manifest["target"], manifest["files"]
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    if target == "onnx":
        return Serving("onnxruntime", None, files["model"], "model.onnx", kind)
    if target == "openvino":
        return Serving("openvino", None, files["model"], "model.xml", "KIND_CPU")  # the backend runs on CPU only
    if manifest["deferred"]:
        return Serving("onnxruntime", None, files["onnx"], "model.onnx", "KIND_GPU", "tensorrt")
    return Serving(None, "tensorrt_plan", files["model"], "model.plan", "KIND_GPU")


def settings_from_profile(profile: dict | None, **given) -> Settings:
    """Profile keys preferred_batch, max_queue_delay_us, threads and device, overridden by what was given."""
    profile = profile or {}
    values = {
        "preferred_batch": tuple(profile.get("preferred_batch", ())),
        "max_queue_delay_us": profile.get("max_queue_delay_us", DEFAULT_QUEUE_DELAY_US),
        "threads": profile.get("threads") or None,
        "gpu": str(profile.get("device", "cpu")).lower().startswith("cuda"),
    }
    values.update({key: value for key, value in given.items() if value is not None})
    settings = Settings(**values)
    if not all(isinstance(size, int) and size >= 1 for size in settings.preferred_batch):
        raise ConfigError(f"preferred_batch {list(settings.preferred_batch)}: use positive batch sizes, e.g. [4, 8]")
    if not 0 <= settings.max_queue_delay_us <= 10_000_000 or settings.instances < 1:
        raise ConfigError("max_queue_delay_us must be 0..10000000 and instances at least 1")
    return settings


def model_name(text: str) -> str:
    """A Triton model name: letters, digits, '.', '_' and '-' (it is a folder name and part of URLs)."""
    if not _NAME.match(text or ""):
        raise ConfigError(f"model name {text!r} is invalid: use letters, digits, '.', '_' or '-' (e.g. padim-line3)")
    return text


FRAMES = Serving("python", None, None, "model.py", "KIND_CPU")  # raw frames in, the runtime preprocessing in Triton


def frame_tensors(manifest: dict) -> tuple[int, list[dict], list[dict]]:
    """A frames model: any-size uint8 RGB frames in (Triton batches equal sizes), raw outputs per frame."""
    batch = manifest["batch"]
    height, width = manifest["inputs"]["image"]["shape"][2:]
    fp32 = Enum("TYPE_FP32")
    inputs = [{"name": "frame", "data_type": Enum("TYPE_UINT8"), "dims": [-1, -1, 3]}]
    outputs = [
        {"name": "anomaly_map", "data_type": fp32, "dims": [1, height, width]},
        {"name": "pred_score", "data_type": fp32, "dims": [1]},
    ]
    return batch["max"] or batch["size"] or 16, inputs, outputs


def tensors(manifest: dict) -> tuple[int, list[dict], list[dict]]:
    """max_batch_size and the input/output entries of config.pbtxt, from the manifest's shapes."""
    image = manifest["inputs"]["image"]["shape"]
    batch = manifest["batch"]
    dynamic = batch["mode"] == "dynamic"
    max_batch = (batch["max"] or 16) if dynamic else 0  # a static batch: Triton sends exactly that shape
    cut = 1 if dynamic else 0
    fp32 = Enum("TYPE_FP32")
    score = {"name": "pred_score", "data_type": fp32, "dims": [1], "reshape": {"shape": []}}
    if not dynamic:
        score = {"name": "pred_score", "data_type": fp32, "dims": [image[0]]}
    inputs = [{"name": "image", "data_type": fp32, "dims": image[cut:]}]
    outputs = [{"name": "anomaly_map", "data_type": fp32, "dims": manifest["outputs"]["anomaly_map"]["shape"][cut:]}]
    return max_batch, inputs, [*outputs, score]


def triton_config(manifest: dict, name: str, serving: Serving, settings: Settings) -> dict:
    """The config.pbtxt content (as plain values) for one tensor-in or frames model."""
    max_batch, inputs, outputs = frame_tensors(manifest) if serving is FRAMES else tensors(manifest)
    config = {"name": name, "backend": serving.backend, "platform": serving.platform, "max_batch_size": max_batch}
    config.update(input=inputs, output=outputs)
    if max_batch and settings.dynamic_batching:
        preferred = [size for size in settings.preferred_batch if size <= max_batch]
        config["dynamic_batching"] = {
            "preferred_batch_size": preferred or None,
            "max_queue_delay_microseconds": settings.max_queue_delay_us,
        }
    config["instance_group"] = [{"count": settings.instances, "kind": Enum(serving.kind)}]
    if serving.accelerator:
        precision = _TRT_PRECISION[manifest["precision"]]
        accelerator = {"name": serving.accelerator, "parameters": plain_map({"precision_mode": precision})}
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [accelerator]}}
    parameters = backend_parameters(manifest, serving, settings)
    parameters[MANIFEST_PARAMETER] = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    config["parameters"] = string_map(parameters)
    return config


def backend_parameters(manifest: dict, serving: Serving, settings: Settings) -> dict[str, str]:
    """Threads and precision settings each backend understands (unknown keys are ignored by Triton's backends)."""
    parameters = {}
    if serving.backend == "onnxruntime" and settings.threads:
        parameters["intra_op_thread_count"] = str(settings.threads)
    if serving is FRAMES and settings.threads:
        parameters["edgeiad_threads"] = str(settings.threads)
    if serving.backend == "openvino":
        parameters["PERFORMANCE_HINT"] = "LATENCY"  # as the local runtime compiles it
        if settings.threads:
            parameters["INFERENCE_NUM_THREADS"] = str(settings.threads)
        if manifest.get("precision_hint") == "bf16":
            parameters["HINT_BF16"] = "YES"
    return parameters


def config_comments(manifest: dict, artifact: Path, serving: Serving) -> list[str]:
    """Leading comments: where the model came from, and the caveats a reader of the config needs."""
    lines = [
        f"written by `edgeiad triton {artifact}`: {manifest['model']['name']} {manifest['target']} "
        f"{manifest['precision']}, statistics {manifest['stats']['mode']}",
        "clients: edgeiad_runtime.RemoteDetector(URL, MODEL) reads edgeiad.json's preprocessing and thresholds",
    ]
    if manifest["stats"]["mode"] == "sidecar":
        lines.append("the sidecar statistics are constants of this model: Triton would batch them as inputs")
    if serving.backend == "openvino" and manifest.get("precision_hint") != "bf16":
        lines.append(
            "Triton's openvino backend cannot pin INFERENCE_PRECISION_HINT: on AMX/AVX512-BF16 CPUs it runs bf16"
        )
    if serving.accelerator:
        lines.append("deferred TensorRT artifact: ONNX Runtime builds the TensorRT engine on the serving GPU")
    if serving is FRAMES:
        lines.append("frames model: uint8 RGB frames in, preprocessed here by edgeiad-runtime (pip install it in")
        lines.append("the server's Python); 1/artifact is the artifact, verified when the model loads")
    return lines


def write_model_files(folder: Path, manifest: dict, serving: Serving, version_dir: Path) -> bool:
    """Copy (or, with sidecar statistics, bake) the model into version_dir; True when it was rewritten."""
    source = folder / serving.source
    target = version_dir / serving.model_file
    if manifest["stats"]["mode"] == "sidecar":
        if serving.platform == "tensorrt_plan":
            raise ConfigError(
                f"{folder}: a TensorRT engine takes its sidecar statistics as inputs, which Triton would batch "
                "with the image: re-export with --stats baked"
            )
        from edgeiad_runtime.safetensors_io import load_file

        from .bake import bake_onnx, bake_openvino

        constants = load_file(folder / manifest["stats"]["file"])
        (bake_openvino if serving.backend == "openvino" else bake_onnx)(source, target, constants)
        return True
    companions = [".bin"] if source.suffix == ".xml" else [".onnx.data"] if source.suffix == ".onnx" else []
    shutil.copy2(source, target)
    for suffix in companions:
        extra = source.with_name(source.stem + suffix)
        if extra.is_file():
            shutil.copy2(extra, target.with_name(target.stem + suffix))
    return False


def check_rewritten(folder: Path, manifest: dict, serving: Serving, version_dir: Path) -> None:
    """The baked model must compute what the artifact computes: compare both on two synthetic inputs."""
    from edgeiad_runtime import Detector
    from edgeiad_runtime.backends.base import BackendChoice, create_backend

    name = "openvino" if serving.backend == "openvino" else "onnxruntime"
    height, width = manifest["inputs"]["image"]["shape"][2:]
    batch = np.random.default_rng(0).normal(size=(2, 3, height, width)).astype(np.float32)
    if manifest["batch"]["mode"] == "static":
        batch = np.resize(batch, (manifest["batch"]["size"], 3, height, width))
    backend = create_backend(BackendChoice(name, serving.model_file), version_dir, manifest, {}, None, 1)
    try:
        baked = backend.run({"image": batch})
    finally:
        backend.close()
    with Detector.load(folder, backend=name, threads=1) as detector:
        maps, scores = detector.infer(batch)
    span = float(np.ptp(maps)) or 1.0
    if np.abs(baked["anomaly_map"][:, 0] - maps).max() > 1e-4 * span or not np.allclose(
        baked["pred_score"].reshape(-1), scores, rtol=1e-4, atol=1e-6
    ):
        raise ArtifactError(
            f"the repository copy of {folder}'s model differs from the artifact after baking its statistics: "
            "re-export the artifact with --stats baked"
        )


def write_repository(
    artifact: Path,
    repository: Path,
    name: str | None = None,
    settings: Settings | None = None,
    version: int = 1,
    force: bool = False,
    echo=None,
    frames: bool = False,
) -> Path:
    """Write REPOSITORY/NAME (config.pbtxt, VERSION/model file, edgeiad.json) from a verified artifact folder.

    frames: a Python-backend model taking raw uint8 RGB frames (preprocessing on the server) instead of tensors.
    """
    from edgeiad_runtime.manifest import MANIFEST_NAME, load_manifest

    from ..runs import StagingDir

    echo = echo or (lambda message: None)
    folder = Path(artifact)
    manifest = load_manifest(folder)  # verified: digest and every file's sha256
    settings = settings or Settings()
    name = model_name(name or folder.resolve().name)
    if not isinstance(version, int) or version < 1:
        raise ConfigError(f"--version {version!r}: Triton model versions are positive integers")
    target = Path(repository) / name
    if target.exists() and not force:
        raise ConfigError(f"{target} exists: choose another --name or pass --force to replace it")
    serving = FRAMES if frames else serving_for(manifest, settings.gpu)
    with StagingDir(target) as staging:
        version_dir = staging / str(version)
        version_dir.mkdir()
        if frames:
            shutil.copy2(Path(__file__).with_name("triton_frames_model.py"), version_dir / "model.py")
            shutil.copytree(folder, version_dir / "artifact")
        elif write_model_files(folder, manifest, serving, version_dir):
            echo("sidecar statistics baked into the model; checking it against the artifact")
            check_rewritten(folder, manifest, serving, version_dir)
        shutil.copy2(folder / MANIFEST_NAME, staging / MANIFEST_COPY)
        config = triton_config(manifest, name, serving, settings)
        text = render(config, config_comments(manifest, folder, serving))
        (staging / "config.pbtxt").write_text(text, encoding="utf-8")
    return target
