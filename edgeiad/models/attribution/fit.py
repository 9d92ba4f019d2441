"""Train the evidence head: good images (label 0) against synthetic defects on the same images (label 1)."""

from __future__ import annotations

import numpy as np

from ...errors import ConfigError, require_torch
from .._fitting import Stopwatch
from .._training import channel_statistics, fit_head
from .synthetic import damage, from_uint8, to_uint8
from .torch_model import AttributionConfig, AttributionModel

torch = require_torch()


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
    images = to_uint8(np.concatenate(arrays), mean, std)
    with torch.no_grad(), watch.time("embedding_s"):
        features = torch.cat([model.raw_features(torch.from_numpy(a).to(device)) for a in arrays]).cpu()
    feature_mean, feature_std = channel_statistics(features)
    model.feature_mean.copy_(feature_mean.to(device))
    model.feature_std.copy_(feature_std.to(device))

    def embed(uint8_images: np.ndarray):
        with torch.no_grad():
            return model.embed(torch.from_numpy(from_uint8(uint8_images, mean, std)).to(device))

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
