"""The toolkit shares the runtime's exception hierarchy so the CLI handles both the same way."""

from edgeiad_runtime.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    DataNotFoundError,
    EdgeiadError,
    MissingExtraError,
    NonFiniteScoreError,
    OutputError,
    require,
)

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "EdgeiadError",
    "MissingExtraError",
    "NonFiniteScoreError",
    "OutputError",
    "require",
]


def require_torch():
    """Import torch or fail with one line naming the `train` extra."""
    return require("torch", "train")
