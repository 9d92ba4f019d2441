"""RemoteDetector: the Detector API over a Triton Inference Server (HTTP or gRPC via the optional tritonclient).

Frames are validated and preprocessed here with the runtime's own code, the server runs only the model, and
the maps come back to the same postprocessing, so a remote result equals the local one for the same model.
The manifest travels with the served model (the config parameter `edgeiad_manifest` of a repository written
by `edgeiad triton`, or the `<model>.manifest` companion of `edgeiad serve`) or is given as a local file.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from time import perf_counter
from urllib.parse import urlsplit

import numpy as np

from .backends.base import Backend, as_outputs
from .detector import Detector, _artifact_folder, _check_finite, _ms
from .errors import ArtifactError, ConfigError, DataError, ServerError, ServerUnavailableError, require
from .manifest import INPUT_NAME, MANIFEST_NAME, OUTPUT_NAMES, SCHEMA_VERSION, check_integrity, validate_manifest

MANIFEST_PARAMETER = "edgeiad_manifest"  # config.pbtxt parameter holding the manifest JSON
MANIFEST_MODEL_SUFFIX = ".manifest"  # companion model answering the manifest JSON (PyTriton has no parameters)
FRAME_INPUT = "frame"  # the raw uint8 RGB input of a frames model (`edgeiad triton --frames`)
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
PACKAGE = "edgeiad-runtime"


def parse_server_url(url: str) -> tuple[str, str]:
    """'grpc://host:8001', 'http://host:8000' or 'host:port' (HTTP) → (protocol, 'host:port')."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"server URL is {url!r}: pass http://HOST:PORT or grpc://HOST:PORT")
    text = url.strip()
    parts = urlsplit(text if "://" in text else f"http://{text}")
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"server URL {url!r} is invalid: use http://HOST:PORT or grpc://HOST:PORT")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ConfigError(f"server URL {url!r} has an invalid port: use a number from 1 to 65535") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return parts.scheme, f"{host}:{port}"


class _Connection:
    """One tritonclient client (HTTP or gRPC) with the calls edgeiad needs, errors mapped to ServerError."""

    def __init__(self, protocol: str, address: str, timeout: float) -> None:
        self.protocol, self.address, self.timeout = protocol, address, timeout
        module = require(f"tritonclient.{protocol}", "triton", PACKAGE)
        self._module = module
        if protocol == "http":
            self._client = module.InferenceServerClient(address, connection_timeout=timeout, network_timeout=timeout)
        else:
            self._client = module.InferenceServerClient(address)

    def ready(self, model: str) -> bool:
        """False for a model the server does not know (gRPC answers that with an error, HTTP with a status)."""
        try:
            return bool(self._call(self._client.is_model_ready, model))
        except ServerUnavailableError:
            raise
        except ServerError:
            return False

    def config(self, model: str) -> dict:
        """The model's configuration as JSON (gRPC's int64 fields turned back into numbers)."""
        if self.protocol == "http":
            return self._call(self._client.get_model_config, model)
        return _numbers(self._call(self._client.get_model_config, model, as_json=True)["config"])

    def infer(self, model: str, feeds: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Run one request; returns the named outputs as numpy arrays."""
        module = self._module
        inputs = []
        for name, array in feeds.items():
            item = module.InferInput(name, list(array.shape), _triton_dtype(array))
            item.set_data_from_numpy(array, **({"binary_data": True} if self.protocol == "http" else {}))
            inputs.append(item)
        if self.protocol == "http":
            wanted = [module.InferRequestedOutput(name, binary_data=True) for name in outputs]
            result = self._call(self._client.infer, model, inputs, outputs=wanted)
        else:
            wanted = [module.InferRequestedOutput(name) for name in outputs]
            result = self._call(self._client.infer, model, inputs, outputs=wanted, client_timeout=self.timeout)
        return {name: result.as_numpy(name) for name in outputs}

    def _call(self, method, *args, **kwargs):
        from tritonclient.utils import InferenceServerException

        try:
            return method(*args, **kwargs)
        except InferenceServerException as exc:
            status, message = str(exc.status() or ""), _first_line(exc.message() or str(exc))
            if any(code in status for code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")) or "connect" in message.lower():
                raise ServerUnavailableError(f"{self._where()}: {message}") from None
            raise ServerError(f"{self._where()} answered an error: {message}") from None
        except (OSError, TimeoutError) as exc:  # HTTP: refused, reset, DNS, socket timeout
            raise ServerUnavailableError(f"{self._where()}: {_first_line(str(exc)) or type(exc).__name__}") from None

    def _where(self) -> str:
        return f"Triton at {self.protocol}://{self.address}"

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # closing a client whose server is gone must not mask the real outcome
            pass


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""


def _numbers(value):
    """gRPC JSON writes int64 as strings: dims and sizes become ints again."""
    if isinstance(value, dict):
        return {key: _numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_numbers(item) for item in value]
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


_DTYPES = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8", "int32": "INT32", "object": "BYTES"}


def _triton_dtype(array: np.ndarray) -> str:
    try:
        return _DTYPES[array.dtype.name]
    except KeyError:
        raise DataError(f"cannot send a {array.dtype} tensor to Triton: use float32") from None


def model_ready(url: str, model: str, timeout: float = 10.0) -> bool:
    """True when the server at `url` has `model` loaded and ready (ServerUnavailableError when it is down)."""
    connection = _Connection(*parse_server_url(url), timeout)
    try:
        return connection.ready(model)
    finally:
        connection.close()


class TritonBackend(Backend):
    """A Backend whose model runs on a Triton server: one client per calling thread, retried when unreachable."""

    name = "triton"

    def __init__(self, url: str, model: str, timeout: float = 10.0, retries: int = 2) -> None:
        super().__init__()
        if not isinstance(model, str) or not model:
            raise ConfigError(f"model is {model!r}: pass the name the server serves the artifact under")
        if not (isinstance(timeout, (int, float)) and 0 < timeout <= 3600):
            raise ConfigError(f"timeout is {timeout!r}: pass seconds from 0 (exclusive) to 3600")
        if not (isinstance(retries, int) and 0 <= retries <= 10):
            raise ConfigError(f"retries is {retries!r}: pass 0 to 10")
        self.protocol, self.address = parse_server_url(url)
        self.url, self.model, self.timeout, self.retries = f"{self.protocol}://{self.address}", model, timeout, retries
        self._local = threading.local()
        self._clients: list[_Connection] = []
        self._lock = threading.Lock()
        self.config = self.call(self._model_config)
        self.max_batch = int(self.config.get("max_batch_size") or 0) or None
        self.info.update(
            {"url": self.url, "model": model, "max_batch_size": self.max_batch or 0, "platform": _platform(self.config)}
        )
        self.info["dynamic_batching"] = "dynamic_batching" in self.config
        self.takes_frames = any(item.get("name") == FRAME_INPUT for item in self.config.get("input", []))

    def _model_config(self, connection: _Connection) -> dict:
        if not connection.ready(self.model):
            raise ServerError(
                f"{self.url} does not serve a ready model {self.model!r}: check the name "
                "(the folder name in the model repository, or `edgeiad serve` output) and the server log"
            )
        return connection.config(self.model)

    def connection(self) -> _Connection:
        """This thread's client (tritonclient clients are not shared between threads)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = _Connection(self.protocol, self.address, self.timeout)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def call(self, action):
        """Run action(connection), retrying with backoff while the server is unreachable."""
        for attempt in range(self.retries + 1):
            try:
                return action(self.connection())
            except ServerUnavailableError as exc:
                if attempt == self.retries:
                    tries = f"{attempt + 1} tr{'y' if attempt == 0 else 'ies'}"
                    raise ServerUnavailableError(
                        f"{exc} ({tries}, {self.timeout:g} s timeout): start the server (`edgeiad serve ARTIFACT`) "
                        "or check the URL and port"
                    ) from None
                time.sleep(0.2 * 2**attempt)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Send one batch (preprocessed images, or raw frames); the outputs come back as float32 copies."""
        arrays = {name: np.ascontiguousarray(value) for name, value in feeds.items()}
        out = self.call(lambda connection: connection.infer(self.model, arrays, OUTPUT_NAMES))
        return as_outputs(out["anomaly_map"], out["pred_score"])

    def fetch_manifest(self) -> dict:
        """The manifest the server keeps with the model: a config parameter, else the companion model."""
        parameter = (self.config.get("parameters") or {}).get(MANIFEST_PARAMETER)
        if parameter and parameter.get("string_value"):
            return _parse_json(parameter["string_value"], f"{self.url} model {self.model!r} parameter")
        companion = self.model + MANIFEST_MODEL_SUFFIX
        if not self.call(lambda connection: connection.ready(companion)):
            raise ConfigError(
                f"{self.url} model {self.model!r} carries no edgeiad manifest (no '{MANIFEST_PARAMETER}' parameter, "
                f"no {companion!r} model): pass manifest=REPO/{self.model}/edgeiad.json or the artifact folder"
            )
        request = {"schema_version": np.array([SCHEMA_VERSION], dtype=np.int32)}
        answer = self.call(lambda connection: connection.infer(companion, request, ("manifest",)))["manifest"]
        text = answer.reshape(-1)[0]
        return _parse_json(text.decode("utf-8") if isinstance(text, bytes) else str(text), f"{companion!r}")

    def close(self) -> None:
        """Close every thread's client."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()


def _platform(config: dict) -> str:
    return config.get("backend") or config.get("platform") or "unknown"


def _parse_json(text: str, source: str) -> dict:
    try:
        return json.loads(text)
    except ValueError:
        raise ArtifactError(f"the edgeiad manifest of {source} is not valid JSON: rewrite the repository") from None


def read_local_manifest(path: str | os.PathLike) -> dict:
    """A manifest from an artifact folder, its manifest.json, or a repository's edgeiad.json."""
    candidate = Path(path)
    if candidate.is_file():
        return _parse_json(candidate.read_text(encoding="utf-8"), str(candidate))
    folder = _artifact_folder(candidate)
    for name in (MANIFEST_NAME, "edgeiad.json"):
        if (folder / name).is_file():
            return _parse_json((folder / name).read_text(encoding="utf-8"), str(folder / name))
    raise ArtifactError(f"{folder} holds neither {MANIFEST_NAME} nor edgeiad.json: pass the artifact or model folder")


def check_served_model(config: dict, manifest: dict, where: str) -> None:
    """Refuse a served model whose input/outputs differ from what the manifest describes."""
    batched = int(config.get("max_batch_size") or 0) > 0
    served = {item["name"]: item for item in [*config.get("input", []), *config.get("output", [])]}
    if FRAME_INPUT in served:  # raw frames of any size: only the outputs depend on the model
        frame = served[FRAME_INPUT]
        if frame.get("data_type") != "TYPE_UINT8" or [int(d) for d in frame.get("dims", [])][-1:] != [3]:
            raise ServerError(f"{where} takes {FRAME_INPUT!r} as {frame.get('data_type')}, not uint8 HxWx3 frames")
        promised = {}
    else:
        promised = {INPUT_NAME: manifest["inputs"][INPUT_NAME]["shape"]}
    promised.update({name: manifest["outputs"][name]["shape"] for name in OUTPUT_NAMES})
    for name, shape in promised.items():
        item = served.get(name)
        if item is None:
            raise ServerError(f"{where} has no tensor {name!r}: it is not an edgeiad model, or not this one")
        dims = [int(d) for d in (item.get("reshape") or {}).get("shape", item.get("dims", []))]
        want = shape[1:] if batched else shape
        if batched and name == "pred_score" and dims == [1]:
            dims = []  # one score per image: PyTriton declares [1], a written repository [1] reshaped to []
        fits = len(dims) == len(want) and all(d == -1 or d == w for d, w in zip(dims, want) if isinstance(w, int))
        if item.get("data_type") != "TYPE_FP32" or not fits:
            raise ServerError(
                f"{where} serves {name} as {item.get('data_type')} {dims}, the manifest says TYPE_FP32 {want}: the "
                "server runs another model or version; pass that model's own manifest or rewrite the repository"
            )


class RemoteDetector(Detector):
    """Detector whose model runs on a Triton server: same predict / predict_batch / infer / Result as Detector."""

    def __init__(
        self,
        url: str,
        model: str,
        manifest: str | os.PathLike | None = None,
        timeout: float = 10.0,
        retries: int = 2,
        trusted_keys=None,
        max_pixels: int | None = None,
    ) -> None:
        """url: http://HOST:PORT or grpc://HOST:PORT; model: its name on the server; manifest: a local copy
        (artifact folder, manifest.json or edgeiad.json) instead of the one the server keeps with the model.
        """
        backend = TritonBackend(url, model, timeout=timeout, retries=retries)
        try:
            data = read_local_manifest(manifest) if manifest is not None else backend.fetch_manifest()
            where = f"{backend.url} model {model!r}"
            validate_manifest(data)
            check_integrity(Path(model), data, trusted_keys, where=where)
            check_served_model(backend.config, data, where)
        except BaseException:
            backend.close()
            raise
        super().__init__(Path(model), data, backend, max_pixels)
        self._label = where
        self.url, self.model = backend.url, model
        if backend.max_batch:  # the server's batching rules replace the artifact's own
            self._static, self._chunk = False, backend.max_batch
        self._frames = backend.takes_frames

    def _prepare(self, rgb: np.ndarray) -> np.ndarray:
        """A frames model preprocesses on the server: send the validated RGB frame itself."""
        return rgb if self._frames else super()._prepare(rgb)

    def _run_prepared(self, backend, tensors: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[float]]:
        if not self._frames:
            return super()._run_prepared(backend, tensors)
        maps, scores, times = [], [], []
        for index, frame in enumerate(tensors):  # one request per frame: sizes differ; Triton batches the cameras
            start = perf_counter()
            out = backend.run({FRAME_INPUT: frame[None]})
            times.append(_ms(start))
            anomaly_map, pred_score = self._check_outputs(out, 1)
            _check_finite(anomaly_map, pred_score, index)
            maps.append(anomaly_map[0, 0])
            scores.append(pred_score[0])
        return np.stack(maps), np.array(scores, dtype=np.float32), times

    def infer(self, batch: np.ndarray, check_finite: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs for a preprocessed batch (a tensor-in model only)."""
        if self._frames:
            raise ConfigError(f"{self._label} takes raw frames, not preprocessed tensors: use predict or predict_batch")
        return super().infer(batch, check_finite)

    def __repr__(self) -> str:
        state = "closed" if self._backend is None or self._closing else "open"
        return f"RemoteDetector({self.url!r}, model={self.model!r}, {state})"
