"""`edgeiad serve`: a local Triton Inference Server (PyTriton) for a few cameras on one box.

Each artifact is bound as a tensor-in model (preprocessed float32 images in, raw maps and scores out) run by
the torch-free runtime, with Triton's dynamic batching; `NAME.manifest` answers the artifact's manifest, so
`RemoteDetector(url, NAME)` preprocesses and calibrates exactly like a local Detector. HTTP on --port, gRPC
on port+1, Prometheus metrics on port+2 (/metrics); health: /v2/health/ready on the HTTP port.
"""

from __future__ import annotations

import json
import os
import signal
import sysconfig
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, MissingExtraError, require
from .repository import Settings, model_name

BATCHING = ("on", "off", "both")
NO_BATCHING_SUFFIX = "-nobatch"
MANIFEST_MODEL_SUFFIX = ".manifest"  # kept equal to edgeiad_runtime.remote's


@dataclass(frozen=True)
class Ports:
    """HTTP, gRPC and metrics ports of one server."""

    http: int

    @property
    def grpc(self) -> int:
        return self.http + 1

    @property
    def metrics(self) -> int:
        return self.http + 2


def check_environment() -> None:
    """Refuse a Python environment in which the bundled Triton would return empty tensors, naming the fix."""
    require("pytriton", "serve")
    import numpy as np

    if int(np.__version__.split(".")[0]) >= 2:
        raise MissingExtraError(
            f"edgeiad serve needs numpy<2 (this environment has {np.__version__}): the Python backend of the Triton "
            "2.51 server in nvidia-pytriton 0.7 returns empty tensors with numpy 2; install edgeiad[serve] in its "
            "own virtualenv (pip resolves numpy<2 there)"
        )
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = os.environ.get("LD_LIBRARY_PATH", "").split(":")
    if libdir and libdir not in paths:  # tritonserver's Python backend stub links against libpython
        os.environ["LD_LIBRARY_PATH"] = ":".join(p for p in [libdir, *paths] if p)


def bindings(names: list[str], batching: str) -> list[tuple[str, str, bool]]:
    """(artifact name, served name, dynamic batching) for each model to bind."""
    if batching not in BATCHING:
        raise ConfigError(f"--batching {batching!r}: use on, off or both")
    plan = []
    for name in names:
        if batching in ("on", "both"):
            plan.append((name, name, True))
        if batching in ("off", "both"):
            plan.append((name, name + NO_BATCHING_SUFFIX if batching == "both" else name, False))
    return plan


def _infer_function(detector):
    """Raw outputs for a batch; non-finite values go back to the client, whose runtime refuses them."""
    from pytriton.decorators import batch

    @batch
    def infer(image):
        maps, scores = detector.infer(image, check_finite=False)
        return {"anomaly_map": maps[:, None], "pred_score": scores[:, None]}

    return infer


def _manifest_function(manifest: dict):
    import numpy as np

    text = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode("utf-8")

    def answer(requests):
        return [{"manifest": np.array([text], dtype=object)} for _ in requests]

    return answer


def _bind(triton, served: str, detector, dynamic: bool, settings: Settings) -> None:
    import numpy as np
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    height, width = detector.input_size
    max_batch = detector.manifest["batch"]["max"] or detector.manifest["batch"]["size"] or 16
    preferred = [size for size in settings.preferred_batch if size <= max_batch] or None
    batcher = DynamicBatcher(max_queue_delay_microseconds=settings.max_queue_delay_us, preferred_batch_size=preferred)
    triton.bind(
        model_name=served,
        infer_func=[_infer_function(detector)] * settings.instances,
        inputs=[Tensor(name="image", dtype=np.float32, shape=(3, height, width))],
        outputs=[
            Tensor(name="anomaly_map", dtype=np.float32, shape=(1, height, width)),
            Tensor(name="pred_score", dtype=np.float32, shape=(1,)),
        ],
        config=ModelConfig(max_batch_size=max_batch, batcher=batcher if dynamic else None),
        strict=True,
    )


def _bind_manifest(triton, served: str, manifest: dict) -> None:
    import numpy as np
    from pytriton.model_config import ModelConfig, Tensor

    triton.bind(
        model_name=served + MANIFEST_MODEL_SUFFIX,
        infer_func=_manifest_function(manifest),
        inputs=[Tensor(name="schema_version", dtype=np.int32, shape=(1,))],
        outputs=[Tensor(name="manifest", dtype=bytes, shape=(1,))],
        config=ModelConfig(batching=False),
    )


def serve(
    artifacts: list[Path],
    port: int = 8000,
    host: str = "127.0.0.1",
    batching: str = "on",
    settings: Settings | None = None,
    names: list[str] | None = None,
    echo=print,
) -> None:
    """Serve `artifacts` until SIGINT/SIGTERM (or until the server dies)."""
    from edgeiad_runtime import Detector

    settings = settings or Settings()
    if not 1 <= port <= 65533:
        raise ConfigError(f"--port {port}: pass 1..65533 (gRPC and metrics use the next two ports)")
    names = [model_name(name) for name in (names or [Path(a).resolve().name for a in artifacts])]
    if len(names) != len(artifacts) or len(set(names)) != len(names):
        raise ConfigError(f"model names {names}: give each artifact its own, one --name per artifact")
    check_environment()
    from pytriton.triton import Triton, TritonConfig

    detectors = {name: Detector.load(path, threads=settings.threads) for name, path in zip(names, artifacts)}
    ports = Ports(port)
    config = TritonConfig(
        http_address=host, http_port=ports.http, grpc_address=host, grpc_port=ports.grpc,
        metrics_address=host, metrics_port=ports.metrics, exit_timeout_secs=5,
    )  # fmt: skip
    previous = _stop_on_sigterm()
    try:
        with Triton(config=config) as triton:
            for name, served, dynamic in bindings(names, batching):
                _bind(triton, served, detectors[name], dynamic, settings)
                _bind_manifest(triton, served, detectors[name].manifest)
                echo(f"model {served}: {artifacts[names.index(name)]}, dynamic batching {'on' if dynamic else 'off'}")
            echo(f"serving on http://{host}:{ports.http} and grpc://{host}:{ports.grpc}")
            echo(f"health http://{host}:{ports.http}/v2/health/ready, metrics http://{host}:{ports.metrics}/metrics")
            triton.serve()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for detector in detectors.values():
            detector.close()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # PyTriton's serve() stops the server cleanly on it, as on Ctrl-C


def _stop_on_sigterm():
    """SIGTERM (systemd, docker stop) stops the server like Ctrl-C instead of orphaning tritonserver."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _interrupt)
