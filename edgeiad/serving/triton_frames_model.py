"""Triton Python-backend model written by `edgeiad triton --frames`: raw uint8 RGB frames in, raw maps and scores out.

It runs inside Triton (copied as VERSION/model.py beside VERSION/artifact/), needs edgeiad-runtime and numpy in
the server's Python, and preprocesses with the runtime's own code, so a client only converts its frames to RGB
and applies the manifest's thresholds to the returned maps (edgeiad_runtime.RemoteDetector does both).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend
from edgeiad_runtime import Detector
from edgeiad_runtime.manifest import preprocessing_of
from edgeiad_runtime.preprocess import preprocess


class TritonPythonModel:
    """One loaded artifact; same-size frames of the requests Triton hands over together run as one batch."""

    def initialize(self, args: dict) -> None:
        folder = Path(args["model_repository"]) / args["model_version"] / "artifact"
        parameters = json.loads(args["model_config"]).get("parameters", {})
        threads = int(parameters.get("edgeiad_threads", {}).get("string_value") or 0) or None
        self.detector = Detector.load(folder, threads=threads)  # verified: digest and every file's sha256
        self.spec = preprocessing_of(self.detector.manifest)

    def execute(self, requests: list) -> list:
        frames = [pb_utils.get_input_tensor_by_name(request, "frame").as_numpy() for request in requests]
        responses: list = [None] * len(requests)
        by_shape: dict[tuple, list[int]] = {}
        for index, batch in enumerate(frames):
            by_shape.setdefault(batch.shape[1:], []).append(index)
        for indices in by_shape.values():
            self._run([frames[i] for i in indices], indices, responses)
        return responses

    def _run(self, batches: list[np.ndarray], indices: list[int], responses: list) -> None:
        try:
            tensors = np.stack([preprocess(frame, self.spec) for batch in batches for frame in batch])
            maps, scores = self.detector.infer(tensors, check_finite=False)  # the client refuses NaN itself
        except Exception as exc:  # one bad group of frames answers errors, the server keeps serving
            for index in indices:
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
            return
        start = 0
        for index, batch in zip(indices, batches):
            stop = start + len(batch)
            outputs = [
                pb_utils.Tensor("anomaly_map", maps[start:stop, None].astype(np.float32)),
                pb_utils.Tensor("pred_score", scores[start:stop, None].astype(np.float32)),
            ]
            responses[index] = pb_utils.InferenceResponse(output_tensors=outputs)
            start = stop

    def finalize(self) -> None:
        self.detector.close()
