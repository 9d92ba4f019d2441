"""Third-party chatter (NNCF progress bars, torch/ONNX warnings) kept off the terminal unless --debug."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

_STATE = {"quiet": True}  # library use is quiet too; the CLI's --debug turns it off
LIBRARIES = ("torch", "onnx", "onnxscript", "onnxruntime", "nncf", "openvino", "timm", "efficientnet_lite_pytorch")


@contextlib.contextmanager
def quiet_libraries(enabled: bool = True) -> Iterator[None]:
    """While active: library warnings ignored, library loggers at ERROR, and `silenced()` swallows output."""
    if not enabled:
        previous, _STATE["quiet"] = _STATE["quiet"], False
        try:
            yield
        finally:
            _STATE["quiet"] = previous
        return
    loggers = [logging.getLogger(name) for name in LIBRARIES]
    levels = [logger.level for logger in loggers]
    previous = _STATE["quiet"]
    with warnings.catch_warnings():
        # Deprecation notices and tracer warnings are for the library's own users, not for ours.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in LIBRARIES:
            warnings.filterwarnings("ignore", module=rf"{name}(\.|$)")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        _STATE["quiet"] = True
        try:
            yield
        finally:
            _STATE["quiet"] = previous
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Swallow what a library call prints to stdout/stderr (its own progress bars) unless --debug is on."""
    if not _STATE["quiet"]:
        yield
        return
    # torch configures these child loggers itself, so a level on "torch" alone would not reach them.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch._dynamo", "torch.export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
