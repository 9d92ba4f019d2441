"""edgeiad_runtime: load an exported edgeiad artifact and score frames, without torch."""

from .backends import BackendFallbackWarning, available_backends
from .detector import Detector, Result
from .errors import (
    ArtifactError,
    ConfigError,
    DataError,
    DataNotFoundError,
    EdgeiadError,
    MissingExtraError,
    NonFiniteScoreError,
    OutputError,
)
from .manifest import SCHEMA_VERSION, load_manifest, validate_manifest, write_manifest
from .preprocess import Preprocessing, preprocess, preprocess_batch, read_image, to_rgb_uint8

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
    "Result",
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
