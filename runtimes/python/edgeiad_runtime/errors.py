"""One exception hierarchy for the runtime and the toolkit: every message names the thing and the fix."""

from __future__ import annotations


class EdgeiadError(Exception):
    """Base of every error edgeiad raises on purpose (the CLI prints it as one line, exit 2)."""


class DataError(EdgeiadError, ValueError):
    """An input image, folder, mask or array is missing, corrupt or of the wrong shape/dtype."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class ArtifactError(EdgeiadError, ValueError):
    """An artifact or run folder is incomplete, tampered with, or does not match its manifest."""


class ConfigError(EdgeiadError, ValueError):
    """An option, model, target or precision is unknown or the combination is unsupported."""


class NonFiniteScoreError(ArtifactError):
    """The model returned a NaN or infinite score or map: never a pass, the artifact or its statistics are faulty."""


class OutputError(EdgeiadError, OSError):
    """A file or folder cannot be written (disk full, read-only, permissions); the message names it."""


class ServerError(EdgeiadError):
    """An inference server answered with an error, or serves a model that does not match its edgeiad manifest."""


class ServerUnavailableError(ServerError, ConnectionError):
    """An inference server cannot be reached (down, wrong address, timed out) after the retries."""


class MissingExtraError(EdgeiadError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, extra: str, package: str = "edgeiad"):
    """Import `module` lazily, or raise MissingExtraError naming `pip install '<package>[<extra>]'`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{module} is not installed: run pip install '{package}[{extra}]' to use this feature ({exc})"
        ) from None
