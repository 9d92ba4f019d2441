"""Train the evidence head: good images (label 0) against synthetic defects on the same images (label 1)."""

from __future__ import annotations

import numpy as np

from ...errors import ConfigError, require_torch
from .._fitting import Stopwatch
from .._training import channel_statistics, fit_head
from .synthetic import damage
from .torch_model import AttributionConfig, AttributionModel

torch = require_torch()


def _to_uint8(batch: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Undo the (x - mean) / std normalisation: N×3×H×W float → N×H×W×3 uint8 (exact for the model input)."""
    pixels = batch.transpose(0, 2, 3, 1) * std + mean
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def fit_attribution(config: AttributionConfig, batches, device: str = "cpu", progress=None):
    """Return (trained AttributionModel on the CPU, info with epochs, losses and timings)."""
    watch = Stopwatch()
    model = AttributionModel(config).to(device)
    spec = config.preprocessing()
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    with watch.time("loading_s"):
        arrays = [array for array, _samples in batches]
    if not arrays:
        raise ConfigError("no training batches were produced: the training set is empty")
    images = _to_uint8(np.concatenate(arrays), mean, std)
    with torch.no_grad(), watch.time("embedding_s"):
        features = torch.cat([model.raw_features(torch.from_numpy(a).to(device)) for a in arrays]).cpu()
    feature_mean, feature_std = channel_statistics(features)
    model.feature_mean.copy_(feature_mean.to(device))
    model.feature_std.copy_(feature_std.to(device))

    def embed(uint8_images: np.ndarray):
        normalised = ((uint8_images.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2)
        with torch.no_grad():
            return model.embed(torch.from_numpy(np.ascontiguousarray(normalised)).to(device))

    def loss(head, indices, rng):
        chosen = images[indices.numpy()]
        damaged = np.stack([damage(image, rng)[0] for image in chosen])
        both = torch.cat([embed(chosen), embed(damaged)])
        labels = torch.cat([torch.zeros(len(chosen)), torch.ones(len(chosen))]).to(device)
        return head.loss(both, labels)

    train_rng = np.random.default_rng(config.seed)
    index = torch.arange(len(images))

    def training_loss(head, batch):
        return loss(head, batch, train_rng)

    def validation_loss(head, batch):  # the same synthetic defects every epoch: comparable losses
        return loss(head, batch, np.random.default_rng(config.seed + 1))

    with watch.time("training_s"):
        info = fit_head(model.head, training_loss, index, config.train_settings(), progress, validation_loss)
    return model.cpu().eval(), {"n_samples": len(images), **info, **watch.timings}
