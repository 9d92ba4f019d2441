"""Fit the feature autoencoder on the good images' cached backbone features."""

from __future__ import annotations

from .._heads import fit_feature_head
from .torch_model import ReconstructionConfig, ReconstructionModel


def fit_reconstruction(config: ReconstructionConfig, batches, device: str = "cpu", progress=None):
    """Return (trained ReconstructionModel on the CPU, info with epochs, losses and timings)."""
    return fit_feature_head(ReconstructionModel(config), config, batches, device, progress)
