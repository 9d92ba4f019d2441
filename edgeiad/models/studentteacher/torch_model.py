"""Student–teacher with an autoencoder, EfficientAD-style (Batzner et al., 2024), sized to train on a CPU.

- teacher: the packaged pretrained backbone's multi-scale features (blocks at strides 8 and 16), standardised
  with training statistics. EfficientAD distils such a teacher into a small patch description network (PDN)
  to make it fast; EfficientNet-Lite0 truncated at block 10 already runs in ~9 ms on a 2-core CPU, and a PDN
  distilled from pixels did not converge in a CPU budget (measured on BSData: teacher loss still 0.36 after
  4 min, student 10 min → image AUROC 0.77, pixel AUROC 0.42), so the backbone itself is the teacher here;
- student: a small network on the backbone's early, low-level features (stride 4) that predicts the teacher
  (first half of its channels, trained on good images only with EfficientAD's hard-feature loss: only the
  worst errors are trained, so it does not learn to extrapolate the way the teacher does) and the
  autoencoder (second half);
- autoencoder: the same early features → 1/32-scale bottleneck → teacher features; it sees the whole image,
  so it captures layout constraints (position, count) that the local student cannot.

Maps: local = mean_c (teacher − student)², global = mean_c (autoencoder − student')². Each goes through its
own quantiles on held-out good images (q_a → 0, q_b → 0.1, as in the paper); the anomaly map is their mean,
upsampled and smoothed, and the image score is its maximum. Standardisation and quantiles are graph constants.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError, require_torch
from .._heads import LearnedConfig
from .._ops import GaussianBlur, aggregate_features, to_anomaly_map
from ..backbones import FeatureExtractor

torch = require_torch()
nn = torch.nn
F = torch.nn.functional


@dataclass
class StudentTeacherConfig(LearnedConfig):
    """Student/autoencoder widths, the early block they read, the hard-loss and map-normalisation quantiles."""

    model: str = "efficientad"
    student_layer: int = 2  # backbone block at stride 4 (EfficientNet-Lite0 and -Lite2)
    width: int = 128
    ae_width: int = 64
    hard_quantile: float = 0.99  # the paper's 0.999 assumes ~70k GPU steps; a CPU budget gives a few hundred
    quantile_low: float = 0.9
    quantile_high: float = 0.995

    def validate(self) -> None:
        super().validate()
        if self.width < 8 or self.ae_width < 8:
            raise ConfigError(f"width {self.width} and ae_width {self.ae_width} must be >= 8")
        if not 0 <= self.student_layer < min(self.resolved_layers()):
            raise ConfigError(
                f"student_layer {self.student_layer} must be an earlier block than the teacher's "
                f"{list(self.resolved_layers())} (default 2, at stride 4)"
            )
        if not 0.0 <= self.hard_quantile < 1.0 or not 0.0 < self.quantile_low < self.quantile_high < 1.0:
            raise ConfigError(
                f"quantiles hard {self.hard_quantile}, low {self.quantile_low}, high {self.quantile_high}: "
                "use 0 <= hard < 1 and 0 < low < high < 1 (defaults 0.99, 0.9, 0.995)"
            )


def student_net(in_channels: int, width: int, out_channels: int) -> nn.Sequential:
    """Stride-4 features → the teacher's stride-8 grid: a stride-2 3x3, two 3x3 and a 1x1 (local: ~60 px)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width // 2, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(width // 2, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, out_channels, 1),
    )  # fmt: skip


class Autoencoder(nn.Module):
    """Stride-4 features → stride-32 code → the teacher's stride-8 grid (sizes fixed at construction)."""

    def __init__(self, in_channels: int, width: int, out_channels: int, grid: tuple[int, int]) -> None:
        super().__init__()
        act = nn.LeakyReLU(0.1)
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1), act,
            nn.Conv2d(width, width, 4, stride=2, padding=1), act,
            nn.Conv2d(width, width, 4, stride=2, padding=1), act,
            nn.Conv2d(width, width, 3, padding=1), act,
            nn.Conv2d(width, width, 3, padding=1),
        )  # fmt: skip
        self.mid_size = (-(-grid[0] // 2), -(-grid[1] // 2))
        self.out_size = tuple(grid)
        self.up1 = nn.Sequential(act, nn.Conv2d(width, width, 3, padding=1), act)
        self.up2 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), act, nn.Conv2d(width, out_channels, 1))

    def forward(self, features):
        code = self.encoder(features)
        middle = self.up1(F.interpolate(code, size=self.mid_size, mode="bilinear", align_corners=False))
        return self.up2(F.interpolate(middle, size=self.out_size, mode="bilinear", align_corners=False))


class StudentTeacherModel(nn.Module):
    """image → anomaly_map, pred_score; every statistic (standardisation, quantiles) is a baked buffer."""

    stats_names: tuple[str, ...] = ()  # learned weights, no statistics a sidecar could swap
    resizable_stats: dict[str, int] = {}

    def __init__(self, config: StudentTeacherConfig) -> None:
        super().__init__()
        self.config = config
        self.image_size = tuple(config.image_size)
        layers = (config.student_layer, *config.resolved_layers())
        self.feature_extractor = FeatureExtractor(config.backbone, layers, self.image_size)
        early, *deep = self.feature_extractor.channels()
        channels = sum(deep)
        grid = (-(-self.image_size[0] // 8), -(-self.image_size[1] // 8))
        self.student = student_net(early, config.width, 2 * channels)
        self.autoencoder = Autoencoder(early, config.ae_width, channels, grid)
        self.register_buffer("teacher_mean", torch.zeros(channels))
        self.register_buffer("teacher_std", torch.ones(channels))
        # [q_a, q_b] of the local and the global map on held-out good images
        self.register_buffer("local_quantiles", torch.tensor([0.0, 1.0]))
        self.register_buffer("global_quantiles", torch.tensor([0.0, 1.0]))
        self.blur = GaussianBlur(config.sigma)

    def features(self, image):
        """(early stride-4 features, raw teacher features on the stride-8 grid)."""
        early, *deep = self.feature_extractor(image)
        return early, aggregate_features(deep)

    def embed(self, image):
        """Standardised teacher features (what bench times as the backbone)."""
        return self.standardise(self.features(image)[1])

    def standardise(self, teacher):
        return (teacher - self.teacher_mean.view(1, -1, 1, 1)) / self.teacher_std.view(1, -1, 1, 1)

    def maps_from(self, early, teacher):
        """(local, global) squared-error maps, N×1×h×w, from early features and standardised teacher features."""
        student = self.student(early)
        channels = teacher.shape[1]
        local = (teacher - student[:, :channels]).pow(2).mean(dim=1, keepdim=True)
        global_ = (self.autoencoder(early) - student[:, channels:]).pow(2).mean(dim=1, keepdim=True)
        return local, global_

    @staticmethod
    def _normalise(values, quantiles):
        return 0.1 * (values - quantiles[0]) / (quantiles[1] - quantiles[0])

    def forward(self, image):
        early, teacher = self.features(image)
        local, global_ = self.maps_from(early, self.standardise(teacher))
        local = self._normalise(local, self.local_quantiles)
        combined = 0.5 * (local + self._normalise(global_, self.global_quantiles))
        return to_anomaly_map(combined, self.image_size, self.blur)

    @torch.no_grad()
    def infer(self, image):
        return self.forward(image)
