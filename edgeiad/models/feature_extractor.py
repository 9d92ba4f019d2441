"""The frozen EfficientNet-Lite feature extractor every model builds on (needs torch)."""

from __future__ import annotations

from functools import cache

from ..errors import ConfigError, require, require_torch
from .backbones import get_backbone

torch = require_torch()
nn = torch.nn


@cache
def _state_dict(name: str) -> dict:
    # weights_only=True: the packaged .pth is a zip of tensors; refuse anything that would unpickle code.
    return torch.load(get_backbone(name).weights_path(), map_location="cpu", weights_only=True)


class FeatureExtractor(nn.Module):
    """Frozen EfficientNet-Lite truncated after the deepest requested block; returns those blocks' maps."""

    def __init__(self, name: str, layers: tuple[int, ...], image_size: tuple[int, int]) -> None:
        super().__init__()
        spec = get_backbone(name)
        effnet = require("efficientnet_lite_pytorch", "train")
        # Static "same" padding is computed from the real input size, which also keeps the graph export-friendly.
        net = effnet.EfficientNet.from_name(spec.package_model, image_size=tuple(image_size))
        net.load_state_dict(_state_dict(name), strict=True)
        count = len(net._blocks)
        if max(layers) >= count or min(layers) < -count:
            raise ConfigError(
                f"backbone {name} has blocks 0..{count - 1} (or -{count}..-1 from the last): layers {list(layers)} "
                "are invalid"
            )
        # Sorted, duplicates dropped; a negative index counts from the last block (-1 is the last).
        self.layers = tuple(sorted({index % count for index in layers}))
        self.total_blocks = count
        last = self.layers[-1]
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: last + 1])
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        # The backbone stays in eval mode: BatchNorm statistics are ImageNet's, never updated.
        return super().train(False)

    def forward(self, x):
        x = self.stem(x)
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.layers:
                features.append(x)
        return features

    def channels(self) -> list[int]:
        """Channel count of each returned feature map."""
        return [int(self.blocks[index]._block_args.output_filters) for index in self.layers]
