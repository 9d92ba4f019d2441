"""A FastFlow-style normalizing flow (Yu et al., 2021) on frozen multi-scale features.

Affine coupling blocks with convolutional subnets (alternating 3x3 and 1x1 kernels, as FastFlow) map the
standardised features of every position to a standard normal. The anomaly map is the per-position
negative log-likelihood term 0.5·mean(z²): positions the flow cannot explain as "good" get large values.
Channel permutations are fixed buffers, so the whole flow is one static, exportable graph.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError, require_torch
from .._heads import FeatureHeadModel, LearnedConfig

torch = require_torch()
nn = torch.nn


@dataclass
class FastFlowConfig(LearnedConfig):
    """Flow depth, subnet width (as a share of the channels) and the soft clamp of the log-scales."""

    model: str = "fastflow"
    n_blocks: int = 8
    hidden_ratio: float = 0.5
    clamp: float = 2.0

    def validate(self) -> None:
        super().validate()
        if self.n_blocks < 1 or self.hidden_ratio <= 0 or self.clamp <= 0:
            raise ConfigError(
                f"n_blocks {self.n_blocks}, hidden_ratio {self.hidden_ratio}, clamp {self.clamp}: use positive values"
            )


class AffineCoupling(nn.Module):
    """y = [x1, x2·exp(s(x1)) + t(x1)], then a fixed channel permutation; returns (y, log-det per position)."""

    def __init__(self, channels: int, hidden: int, kernel: int, clamp: float, permutation) -> None:
        super().__init__()
        self.split = channels // 2
        self.clamp = clamp
        self.subnet = nn.Sequential(
            nn.Conv2d(self.split, hidden, kernel, padding=kernel // 2),
            nn.ReLU(),
            nn.Conv2d(hidden, 2 * (channels - self.split), kernel, padding=kernel // 2),
        )
        nn.init.zeros_(self.subnet[-1].weight)  # every block starts as the identity: stable first epochs
        nn.init.zeros_(self.subnet[-1].bias)
        self.register_buffer("permutation", permutation)

    def forward(self, x):
        x1, x2 = x[:, : self.split], x[:, self.split :]
        log_scale, shift = self.subnet(x1).chunk(2, dim=1)
        log_scale = self.clamp * torch.tanh(log_scale / self.clamp)
        y = torch.cat([x1, x2 * torch.exp(log_scale) + shift], dim=1)
        return y.index_select(1, self.permutation), log_scale.sum(dim=1)


class Flow(nn.Module):
    """A stack of couplings; `score` is 0.5·mean(z²) per position, `loss` the negative log-likelihood."""

    def __init__(self, channels: int, n_blocks: int, hidden: int, clamp: float, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.blocks = nn.ModuleList(
            AffineCoupling(
                channels, hidden, 3 if i % 2 == 0 else 1, clamp, torch.randperm(channels, generator=generator)
            )
            for i in range(n_blocks)
        )

    def transform(self, features):
        z, log_det = features, 0.0
        for block in self.blocks:
            z, block_log_det = block(z)
            log_det = log_det + block_log_det
        return z, log_det

    def score(self, features):
        z, _ = self.transform(features)
        return 0.5 * z.pow(2).mean(dim=1, keepdim=True)

    def loss(self, features):
        z, log_det = self.transform(features)
        return (0.5 * z.pow(2).sum(dim=1) - log_det).mean() / features.shape[1]


class FastFlowModel(FeatureHeadModel):
    """image → anomaly_map, pred_score from the flow's per-position likelihood."""

    def make_head(self, channels: int) -> Flow:
        config = self.config
        hidden = max(1, int(round(channels * config.hidden_ratio)))
        return Flow(channels, config.n_blocks, hidden, config.clamp, config.seed)
