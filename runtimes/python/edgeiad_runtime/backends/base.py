"""The backend interface, backend availability, and the rules that pick a backend for an artifact."""

from __future__ import annotations

import importlib
import importlib.util
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, ConfigError, MissingExtraError
from ..manifest import INPUT_NAME, MANIFEST_NAME, OUTPUT_NAMES

BACKENDS = ("tensorrt", "openvino", "onnxruntime")  # also the order `auto` prefers them in
PACKAGE = "edgeiad-runtime"
_MODULES = {"tensorrt": ("tensorrt", "pycuda"), "openvino": ("openvino",), "onnxruntime": ("onnxruntime",)}
_EXTRAS = {"tensorrt": "tensorrt", "openvino": "openvino", "onnxruntime": "onnxruntime"}
_CLASSES = {"tensorrt": "TensorRTBackend", "openvino": "OpenVINOBackend", "onnxruntime": "OnnxRuntimeBackend"}


class BackendFallbackWarning(UserWarning):
    """`auto` ran a different backend than the artifact targets (e.g. ONNX Runtime for a deferred TensorRT one)."""


class Backend(ABC):
    """One loaded model: feed {'image': NCHW float32} and get {'anomaly_map', 'pred_score'} as float32."""

    name = "base"
    max_batch: int | None = None  # the largest batch one run accepts (a TensorRT profile's max), None = any

    def __init__(self) -> None:
        self.info: dict[str, Any] = {"backend": self.name}

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; the sidecar statistics given at load time are added by the backend."""

    @abstractmethod
    def close(self) -> None:
        """Release the model and its buffers."""


def is_installed(backend: str) -> bool:
    """True when every Python module the backend needs can be imported."""
    return all(importlib.util.find_spec(module) is not None for module in _MODULES[backend])


def available_backends() -> list[str]:
    """Installed backends, most preferred first."""
    return [name for name in BACKENDS if is_installed(name)]


def missing_extra(backend: str, note: str = "") -> MissingExtraError:
    """The error for a backend whose Python packages are not installed."""
    modules = " and ".join(_MODULES[backend])
    return MissingExtraError(
        f"{modules} is not installed: run pip install '{PACKAGE}[{_EXTRAS[backend]}]' "
        f"to use the {backend} backend{note}"
    )


@dataclass(frozen=True)
class BackendChoice:
    """Which backend runs which model file of an artifact, and why if it is a fallback."""

    name: str
    model_file: str
    fallback: str | None = None


def choose_backend(manifest: dict, folder: Path, requested: str = "auto") -> BackendChoice:
    """Pick the backend and model file for `requested` ('auto' or a backend name), or explain why not."""
    if requested not in ("auto", *BACKENDS):
        raise ConfigError(f"unknown backend {requested!r}: use one of {['auto', *BACKENDS]}")
    target, files = manifest["target"], manifest["files"]
    if requested == "auto":
        return _choose_auto(manifest, folder)
    if requested == "tensorrt":
        return _choose_tensorrt(manifest, folder)
    if not is_installed(requested):
        raise missing_extra(requested)
    if requested == "openvino" and target == "openvino":
        return BackendChoice("openvino", files["model"])
    # ONNX Runtime and OpenVINO can both run the artifact's ONNX model whatever its target.
    onnx_file = files["model"] if target == "onnx" else files["onnx"]
    if onnx_file is None:
        raise ArtifactError(f"{folder} is a {target} artifact without an ONNX model: use backend='auto' or re-export")
    return BackendChoice(requested, onnx_file)


def _build_engine_hint(folder: Path) -> str:
    return f"build it on the target device with `edgeiad build-engine {folder}`"


def _choose_tensorrt(manifest: dict, folder: Path) -> BackendChoice:
    target = manifest["target"]
    if target != "trt":
        raise ArtifactError(f"{folder} is a {target} artifact with no TensorRT engine: re-export with target trt")
    if manifest["deferred"]:
        if not is_installed("tensorrt"):
            raise missing_extra(
                "tensorrt", f"; this artifact is deferred (no engine yet): then {_build_engine_hint(folder)}"
            )
        raise ArtifactError(
            f"{folder} is a deferred TensorRT artifact with no engine yet: {_build_engine_hint(folder)}"
        )
    if not is_installed("tensorrt"):
        raise missing_extra("tensorrt")
    return BackendChoice("tensorrt", manifest["files"]["model"])


def _choose_auto(manifest: dict, folder: Path) -> BackendChoice:
    target, files = manifest["target"], manifest["files"]
    if target == "onnx":
        return BackendChoice("onnxruntime", files["model"])
    if target == "openvino":
        if not is_installed("openvino"):
            raise missing_extra("openvino", " (this is an OpenVINO artifact)")
        return BackendChoice("openvino", files["model"])
    if manifest["deferred"]:
        why = f"{folder} is a deferred TensorRT artifact (no engine yet); {_build_engine_hint(folder)}"
    elif is_installed("tensorrt"):
        return BackendChoice("tensorrt", files["model"])
    else:
        why = f"TensorRT is not installed (pip install '{PACKAGE}[tensorrt]')"
    if files["onnx"] is None:  # a deferred artifact always has its ONNX (validated), so only a built one lands here
        raise missing_extra("tensorrt", " (this TensorRT artifact has no ONNX model to fall back to)")
    return BackendChoice("onnxruntime", files["onnx"], f"{why}: running its {files['onnx']} with onnxruntime instead")


def create_backend(
    choice: BackendChoice,
    folder: Path,
    manifest: dict,
    constants: dict[str, np.ndarray],
    device: str | None,
    threads: int | None,
) -> Backend:
    """Instantiate the chosen backend (warning once when it is a fallback)."""
    if choice.fallback:
        warnings.warn(choice.fallback, BackendFallbackWarning, stacklevel=3)
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ConfigError(f"threads is {threads!r}: pass a positive integer or None for the backend default")
    module = importlib.import_module(f".{choice.name}", __package__)
    backend_class = getattr(module, _CLASSES[choice.name])
    return backend_class(folder / choice.model_file, manifest, constants, device, threads)


def prepare_constants(
    constants: dict[str, np.ndarray], declared: dict[str, np.dtype], model_path: Path
) -> dict[str, np.ndarray]:
    """Match sidecar tensors to the graph's extra inputs, cast to the declared dtype (fp16 files feed fp32 graphs)."""
    if INPUT_NAME not in declared:
        raise ArtifactError(f"{model_path} has no input named {INPUT_NAME!r}: re-export the artifact")
    extra = set(declared) - {INPUT_NAME}
    if extra - set(constants):
        raise ArtifactError(
            f"{model_path} needs inputs {sorted(extra - set(constants))} that the stats file does not provide: "
            "re-export the artifact"
        )
    if set(constants) - extra:
        raise ArtifactError(f"stats tensors {sorted(set(constants) - extra)} are not inputs of {model_path}: re-export")
    return {name: np.ascontiguousarray(value, dtype=declared[name]) for name, value in constants.items()}


def check_outputs(names: list[str], model_path: Path) -> None:
    """Refuse a model that does not produce both contract outputs."""
    missing = [name for name in OUTPUT_NAMES if name not in names]
    if missing:
        raise ArtifactError(f"{model_path} lacks outputs {missing} (has {names}): re-export the artifact")


def check_shapes(model_path: Path, manifest: dict, graph: dict[str, list], constants: dict[str, np.ndarray]) -> None:
    """Refuse at load a graph whose declared inputs/outputs disagree with the manifest or the sidecar tensors.

    graph: name -> declared dims (an int, or None/str/-1 for a dynamic one); names it lacks are not checked.
    """
    promised = {
        INPUT_NAME: manifest["inputs"][INPUT_NAME]["shape"],
        **{name: manifest["outputs"][name]["shape"] for name in OUTPUT_NAMES},
        **{name: list(value.shape) for name, value in constants.items()},
    }
    for name, want in promised.items():
        got = graph.get(name)
        if got is not None and not _fits(got, want):
            source = "the stats file" if name in constants else MANIFEST_NAME
            raise ArtifactError(
                f"{model_path} declares {name} as {_dims(got)} but {source} says {want}: the files do not belong "
                "together; re-export the artifact"
            )


def _fits(declared: list, promised: list) -> bool:
    if len(declared) != len(promised):
        return False
    for have, want in zip(declared, promised):
        fixed = isinstance(have, int) and have >= 0
        if fixed and (have != want if isinstance(want, int) else True):  # a fixed graph dim vs a dynamic batch
            return False
    return True


def _dims(declared: list) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) and d >= 0 else "?" for d in declared) + "]"


def as_outputs(anomaly_map: np.ndarray, pred_score: np.ndarray) -> dict[str, np.ndarray]:
    """Own float32 copies of the contract outputs (backend buffers are reused by the next call)."""
    return {
        "anomaly_map": np.array(anomaly_map, dtype=np.float32, copy=True),
        "pred_score": np.array(pred_score, dtype=np.float32, copy=True),
    }


class SlotPool:
    """Per-caller resources (infer requests, execution contexts): one per concurrently running thread, reused."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._free: list[Any] = []
        self._lock = threading.Lock()
        self.created = 0

    @contextmanager
    def slot(self) -> Iterator[Any]:
        """Borrow a free slot (creating one when all are busy) for the duration of a call."""
        with self._lock:
            item = self._free.pop() if self._free else None
        if item is None:
            item = self._factory()
            with self._lock:
                self.created += 1
        try:
            yield item
        finally:
            with self._lock:
                self._free.append(item)

    def drain(self) -> list[Any]:
        """Take every idle slot out of the pool (for closing)."""
        with self._lock:
            items, self._free = self._free, []
        return items
