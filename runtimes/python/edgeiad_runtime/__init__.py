"""edgeiad_runtime: load an exported edgeiad artifact and score frames, without torch."""

from .errors import (
    ArtifactError,
    ConfigError,
    DataError,
    DataNotFoundError,
    EdgeiadError,
    MissingExtraError,
    NonFiniteScoreError,
    OutputError,
    ServerError,
    ServerUnavailableError,
)

# numpy, ONNX Runtime and the image libraries load on first use, so `import edgeiad_runtime.errors` (and the
# toolkit's `edgeiad --help`) stay fast.
_LAZY = {
    "BackendFallbackWarning": "backends",
    "available_backends": "backends",
    "Detector": "detector",
    "Result": "detector",
    "SCHEMA_VERSION": "manifest",
    "load_manifest": "manifest",
    "validate_manifest": "manifest",
    "write_manifest": "manifest",
    "RemoteDetector": "remote",
    "Preprocessing": "preprocess",
    "preprocess": "preprocess",
    "preprocess_batch": "preprocess",
    "read_image": "preprocess",
    "to_rgb_uint8": "preprocess",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "ArtifactError",
    "BackendFallbackWarning",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "Detector",
    "EdgeiadError",
    "MissingExtraError",
    "NonFiniteScoreError",
    "OutputError",
    "Preprocessing",
    "RemoteDetector",
    "Result",
    "ServerError",
    "ServerUnavailableError",
    "__version__",
    "available_backends",
    "load_manifest",
    "preprocess",
    "preprocess_batch",
    "read_image",
    "to_rgb_uint8",
    "validate_manifest",
    "write_manifest",
]
