"""edgeiad: train, export, run and benchmark industrial visual anomaly detectors on edge devices."""

__version__ = "0.1.0"
