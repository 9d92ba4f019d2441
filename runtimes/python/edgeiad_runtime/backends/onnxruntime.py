"""ONNX Runtime backend: one InferenceSession shared by all threads (Session.run is thread-safe)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ArtifactError, ConfigError
from ..manifest import INPUT_NAME, OUTPUT_NAMES
from .base import Backend, as_outputs, check_outputs, check_shapes, prepare_constants

_ORT_DTYPES = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(bool)": np.dtype(np.bool_),
}


def _providers(ort, device: str | None) -> list[str]:
    kind = (device or "cpu").lower()
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda" or kind.startswith("cuda:"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(
                "device 'cuda' needs onnxruntime-gpu (CUDAExecutionProvider is not available): install "
                "onnxruntime-gpu instead of onnxruntime, or use device='cpu'"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ConfigError(f"unknown onnxruntime device {device!r}: use 'cpu' or 'cuda'")


class OnnxRuntimeBackend(Backend):
    """Runs model.onnx with ONNX Runtime on CPU (or CUDA with onnxruntime-gpu)."""

    name = "onnxruntime"

    def __init__(
        self,
        model_path: Path,
        manifest: dict,
        constants: dict[str, np.ndarray],
        device: str | None,
        threads: int | None,
    ) -> None:
        super().__init__()
        import onnxruntime as ort

        providers = _providers(ort, device)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one graph, no parallel branches worth a second pool
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types; all mean a bad model file
            raise ArtifactError(f"onnxruntime cannot load {model_path} ({exc}); re-export the artifact") from None
        inputs = {node.name: node for node in self._session.get_inputs()}
        declared = {name: _ORT_DTYPES.get(node.type, np.dtype(np.float32)) for name, node in inputs.items()}
        check_outputs([node.name for node in self._session.get_outputs()], model_path)
        self._constants = prepare_constants(constants, declared, model_path)
        nodes = [*self._session.get_inputs(), *self._session.get_outputs()]
        check_shapes(model_path, manifest, {node.name: list(node.shape) for node in nodes}, self._constants)
        self._image_dtype = declared[INPUT_NAME]
        self.info.update(
            {
                "providers": self._session.get_providers(),
                "intra_op_num_threads": threads,
                "model": model_path.name,
                "onnxruntime": ort.__version__,
            }
        )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch through the shared session."""
        image = np.ascontiguousarray(feeds[INPUT_NAME], dtype=self._image_dtype)
        anomaly_map, pred_score = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: image, **self._constants})
        return as_outputs(anomaly_map, pred_score)

    def close(self) -> None:
        """Drop the session so its memory is freed once no call is running."""
        self._session = None
