"""Fit the flow on the good images' cached backbone features (maximum likelihood)."""

from __future__ import annotations

from .._heads import fit_feature_head
from .torch_model import FastFlowConfig, FastFlowModel


def fit_fastflow(config: FastFlowConfig, batches, device: str = "cpu", progress=None):
    """Return (trained FastFlowModel on the CPU, info with epochs, losses and timings)."""
    return fit_feature_head(FastFlowModel(config), config, batches, device, progress)
