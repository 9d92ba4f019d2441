"""Gradient training shared by the learned models: cached frozen-backbone features, Adam, early stop.

The backbone is frozen, so its features are computed once and every epoch trains only the small head on
them (minutes on a 2-core CPU instead of hours). A deterministic 10 % of the training images is held out;
training stops when their loss has not improved for `patience` epochs, after `epochs`, or after
`max_minutes`, and the best epoch's weights are kept.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError, require_torch

torch = require_torch()


@dataclass
class TrainSettings:
    """What `fit_head` needs from a model config."""

    epochs: int
    max_minutes: float
    learning_rate: float
    batch_size: int
    patience: int
    seed: int

    def validate(self) -> None:
        if self.epochs < 1 or self.max_minutes <= 0 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ConfigError(
                f"training settings epochs={self.epochs}, max_minutes={self.max_minutes}, batch_size="
                f"{self.batch_size}, learning_rate={self.learning_rate}: all must be positive"
            )


def channel_statistics(features) -> tuple:
    """Per-channel mean and std over every training position (features: N×C×h×w)."""
    mean = features.mean(dim=(0, 2, 3))
    std = features.std(dim=(0, 2, 3)).clamp(min=1e-6)
    return mean, std


def fit_head(head, loss_fn: Callable, features, settings: TrainSettings, progress=None, val_loss_fn=None) -> dict:
    """Train `head` (an nn.Module) on cached `features` minimising `loss_fn(head, batch)`; keep the best epoch.

    `val_loss_fn` (default `loss_fn`) scores the held-out rows; it must be deterministic across epochs.
    """
    val_loss_fn = val_loss_fn or loss_fn
    settings.validate()
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(features.shape[0], generator=generator)
    n_val = max(1, features.shape[0] // 10) if features.shape[0] >= 4 else 0
    val, train = features[order[:n_val]], features[order[n_val:]]
    optimizer = torch.optim.Adam(head.parameters(), lr=settings.learning_rate, weight_decay=1e-5)
    best, best_state, stale, history = float("inf"), copy.deepcopy(head.state_dict()), 0, []
    started = time.perf_counter()
    stopped = "epochs"
    for epoch in range(settings.epochs):
        head.train()
        permutation = torch.randperm(train.shape[0], generator=generator)
        total = 0.0
        for begin in range(0, train.shape[0], settings.batch_size):
            batch = train[permutation[begin : begin + settings.batch_size]]
            loss = loss_fn(head, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * batch.shape[0]
        head.eval()
        with torch.no_grad():
            monitored = float(val_loss_fn(head, val)) if n_val else total / max(train.shape[0], 1)
        history.append(round(monitored, 5))
        if progress is not None:
            progress(epoch + 1, settings.epochs)
        if not math.isfinite(monitored):
            raise ConfigError(
                f"training diverged at epoch {epoch + 1} (loss {monitored}): check the training images "
                "or lower the learning rate"
            )
        if best == float("inf") or monitored < best - 1e-4 * abs(best):
            best, best_state, stale = monitored, copy.deepcopy(head.state_dict()), 0
        else:
            stale += 1
        if stale >= settings.patience:
            stopped = "early stop"
            break
        if time.perf_counter() - started > settings.max_minutes * 60:
            stopped = "max_minutes"
            break
    head.load_state_dict(best_state)
    head.eval()
    return {"epochs_run": len(history), "best_val_loss": best, "stopped_by": stopped, "val_loss": history}
