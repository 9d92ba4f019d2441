"""OpenVINO backend: one compiled model, one InferRequest per concurrent thread (requests are not thread-safe)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, ConfigError, require
from ..manifest import INPUT_NAME
from .base import Backend, SlotPool, as_outputs, check_outputs, check_shapes, prepare_constants

DEFAULT_HINT = "f32"  # never the device default: on CPUs with AMX/AVX512-BF16 that is bf16 and shifts scores


def _declared_shapes(compiled: Any) -> dict[str, list]:
    shapes = {}
    for port in [*compiled.inputs, *compiled.outputs]:
        dims = [dim.get_length() if dim.is_static else None for dim in port.get_partial_shape()]
        shapes.update(dict.fromkeys(port.get_names(), dims))
    return shapes


class OpenVINOBackend(Backend):
    """Runs model.xml (or model.onnx) with OpenVINO, pinning the inference precision from the manifest."""

    name = "openvino"

    def __init__(
        self,
        model_path: Path,
        manifest: dict,
        constants: dict[str, np.ndarray],
        device: str | None,
        threads: int | None,
    ) -> None:
        super().__init__()
        ov = require("openvino", "openvino", package="edgeiad-runtime")
        core = ov.Core()
        device_name = (device or "CPU").upper()
        if device_name.split(".")[0] not in {d.split(".")[0] for d in core.available_devices} | {"AUTO"}:
            raise ConfigError(f"OpenVINO device {device!r} is not available here: use one of {core.available_devices}")
        hint = manifest.get("precision_hint") or DEFAULT_HINT
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self._compiled = core.compile_model(core.read_model(str(model_path)), device_name, config)
        except RuntimeError as exc:
            raise ArtifactError(f"OpenVINO cannot load {model_path} ({exc}); re-export the artifact") from None
        declared = {port.get_any_name(): np.dtype(port.get_element_type().to_dtype()) for port in self._compiled.inputs}
        check_outputs([name for port in self._compiled.outputs for name in port.get_names()], model_path)
        self._constants = prepare_constants(constants, declared, model_path)
        check_shapes(model_path, manifest, _declared_shapes(self._compiled), self._constants)
        self._image_dtype = declared[INPUT_NAME]
        self._ov = ov
        self._requests = SlotPool(self._new_request)
        self.info.update(
            {
                "device": device_name,
                "precision_hint": self.precision_hint(),
                "requested_precision_hint": hint,
                "inference_num_threads": threads,
                "model": model_path.name,
                "openvino": ov.get_version(),
            }
        )

    def _new_request(self) -> Any:
        # Statistics never change: bind them once per request instead of copying them in on every call.
        request = self._compiled.create_infer_request()
        for name, value in self._constants.items():
            request.set_tensor(name, self._ov.Tensor(value))
        return request

    def precision_hint(self) -> str:
        """The INFERENCE_PRECISION_HINT the compiled model actually uses (e.g. 'f32')."""
        try:
            return self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        except RuntimeError:  # some devices (AUTO, NPU) do not expose the property after compilation
            return "unknown"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch on a request owned by this call alone."""
        image = np.ascontiguousarray(feeds[INPUT_NAME], dtype=self._image_dtype)
        with self._requests.slot() as request:
            request.infer({INPUT_NAME: image})
            # The request's output tensors are reused by its next call: copy before releasing it.
            return as_outputs(request.get_tensor("anomaly_map").data, request.get_tensor("pred_score").data)

    def close(self) -> None:
        """Drop idle requests and the compiled model."""
        self._requests.drain()
        self._compiled = None
