"""TensorRT 10 backend (pycuda for memory): one execution context, stream and buffer set per concurrent thread."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, ConfigError, require
from ..manifest import INPUT_NAME, OUTPUT_NAMES
from .base import Backend, SlotPool, as_outputs, check_outputs, check_shapes, prepare_constants

PACKAGE = "edgeiad-runtime"


@dataclass
class _Slot:
    """One execution context with its own stream and pinned/device buffers sized for the largest batch."""

    context: Any
    stream: Any
    host: dict[str, np.ndarray]
    device: dict[str, Any]


def _device_index(device: str | None) -> int:
    kind = (device or "cuda").lower()
    if kind == "cuda":
        return 0
    if kind.startswith("cuda:") and kind[5:].isdigit():
        return int(kind[5:])
    raise ConfigError(f"unknown TensorRT device {device!r}: use 'cuda' or 'cuda:N'")


class TensorRTBackend(Backend):
    """Runs a serialized TensorRT engine (model.engine) built for this GPU and TensorRT version."""

    name = "tensorrt"

    def __init__(
        self,
        model_path: Path,
        manifest: dict,
        constants: dict[str, np.ndarray],
        device: str | None,
        threads: int | None,
    ) -> None:
        super().__init__()
        trt = require("tensorrt", "tensorrt", package=PACKAGE)
        cuda = require("pycuda.driver", "tensorrt", package=PACKAGE)
        self._trt, self._cuda = trt, cuda
        cuda.init()
        # The primary context is shared by every thread that pushes it, unlike pycuda.autoinit's thread-bound one.
        self._ctx = cuda.Device(_device_index(device)).retain_primary_context()
        self._ctx.push()
        try:
            self._engine = self._deserialize(model_path, manifest)
            self._load_io(model_path, constants)
            shapes = {name: list(self._engine.get_tensor_shape(name)) for name in (*self._dtypes,)}
            check_shapes(model_path, manifest, shapes, self._constants)
        except BaseException:
            cuda.Context.pop()
            self._ctx.detach()  # a failed load must not keep the GPU's primary context retained
            raise
        cuda.Context.pop()
        self._slots = SlotPool(self._new_slot)
        self.info.update(
            {
                "device": device or "cuda",
                "tensorrt": trt.__version__,
                "model": model_path.name,
                "max_batch": self.max_batch,
            }
        )

    def _deserialize(self, model_path: Path, manifest: dict) -> Any:
        trt = self._trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = self._runtime.deserialize_cuda_engine(model_path.read_bytes())
        if engine is None:
            built = (manifest.get("engine") or {}).get("trt_version", "an unknown version")
            raise ArtifactError(
                f"TensorRT {trt.__version__} cannot deserialize {model_path} (built with TensorRT {built}, engines "
                f"are tied to one TensorRT version and GPU): rebuild it with `edgeiad build-engine {model_path.parent}`"
            )
        return engine

    def _load_io(self, model_path: Path, constants: dict[str, np.ndarray]) -> None:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in inputs]
        check_outputs(self._outputs, model_path)
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._constants = prepare_constants(constants, {n: self._dtypes[n] for n in inputs}, model_path)
        shape = tuple(engine.get_tensor_shape(INPUT_NAME))
        self._dynamic = shape[0] == -1
        # Buffers are sized once for the profile's largest batch; smaller batches use a prefix of them.
        self._max_shape = tuple(engine.get_tensor_profile_shape(INPUT_NAME, 0)[2]) if self._dynamic else shape
        self.max_batch = self._max_shape[0]
        # Statistics never change: upload them once and bind the same device memory in every context.
        self._stats_device = {}
        for name, value in self._constants.items():
            self._stats_device[name] = self._cuda.mem_alloc(max(value.nbytes, 1))
            self._cuda.memcpy_htod(self._stats_device[name], value)

    def _new_slot(self) -> _Slot:
        cuda = self._cuda
        self._ctx.push()
        try:
            context = self._engine.create_execution_context()
            if self._dynamic:
                context.set_input_shape(INPUT_NAME, self._max_shape)
            for name, value in self._constants.items():
                if -1 in tuple(self._engine.get_tensor_shape(name)):
                    context.set_input_shape(name, value.shape)
                context.set_tensor_address(name, int(self._stats_device[name]))
            host, device = {}, {}
            for name in (INPUT_NAME, *self._outputs):
                shape = self._max_shape if name == INPUT_NAME else tuple(context.get_tensor_shape(name))
                host[name] = cuda.pagelocked_empty(int(np.prod(shape)), self._dtypes[name])
                device[name] = cuda.mem_alloc(max(host[name].nbytes, 1))
                context.set_tensor_address(name, int(device[name]))
            return _Slot(context, cuda.Stream(), host, device)
        finally:
            cuda.Context.pop()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy the batch in, enqueue the engine on this slot's stream, copy the outputs back."""
        image = np.ascontiguousarray(feeds[INPUT_NAME], dtype=self._dtypes[INPUT_NAME])
        if image.shape[0] > self.max_batch:
            raise ConfigError(f"batch of {image.shape[0]} exceeds the engine's maximum {self.max_batch}")
        cuda = self._cuda
        self._ctx.push()
        try:
            with self._slots.slot() as slot:
                return self._execute(slot, image)
        finally:
            cuda.Context.pop()

    def _execute(self, slot: _Slot, image: np.ndarray) -> dict[str, np.ndarray]:
        cuda, context = self._cuda, slot.context
        if self._dynamic:
            context.set_input_shape(INPUT_NAME, image.shape)
        staged = slot.host[INPUT_NAME][: image.size]
        staged[:] = image.ravel()
        cuda.memcpy_htod_async(slot.device[INPUT_NAME], staged, slot.stream)
        if not context.execute_async_v3(stream_handle=slot.stream.handle):
            raise ArtifactError("TensorRT failed to enqueue the engine: rebuild it with `edgeiad build-engine`")
        results = {}
        for name in OUTPUT_NAMES:
            shape = tuple(context.get_tensor_shape(name))
            view = slot.host[name][: int(np.prod(shape))]
            cuda.memcpy_dtoh_async(view, slot.device[name], slot.stream)
            results[name] = view.reshape(shape)
        slot.stream.synchronize()
        return as_outputs(results["anomaly_map"], results["pred_score"])

    def close(self) -> None:
        """Free contexts and device memory (idle slots only; a call still running keeps its own)."""
        self._ctx.push()
        try:
            # Contexts before engine before runtime, all while the CUDA context is still current.
            for slot in self._slots.drain():
                for buffer in slot.device.values():
                    buffer.free()
                slot.context = slot.stream = None
            for buffer in self._stats_device.values():
                buffer.free()
            self._stats_device = {}
            self._engine = self._runtime = None
        finally:
            self._cuda.Context.pop()
            self._ctx.detach()
