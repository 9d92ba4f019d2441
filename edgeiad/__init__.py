"""edgeiad: train, export, run and benchmark industrial visual anomaly detectors on edge devices.

Python API (the CLI's defaults): `edgeiad.train`, `edgeiad.evaluate`, `edgeiad.export_model`, `edgeiad.benchmark`.
"""

__version__ = "0.1.0"

from .api import benchmark, evaluate, export_model, train  # noqa: E402  (light: each imports its work lazily)

__all__ = ["__version__", "benchmark", "evaluate", "export_model", "train"]
