"""The model registry every command, exporter, test and benchmark iterates over."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: where its config, module and fit function live (imported lazily, torch inside)."""

    name: str
    summary: str
    paper: str
    module: str  # package under edgeiad.models holding torch_model.py and fit.py
    config_class: str
    model_class: str
    fit_function: str
    min_train_images: int
    pixel_maps: bool = True
    stats_modes: tuple[str, ...] = ("baked", "sidecar")  # learned models have no statistics to keep aside
    fit_label: str = "fitting"  # the progress bar's label while `fit` runs
    # Also trains on labelled defective images (`fit(..., anomalous=batches)`): the dataset's train_anomalous.
    supervised: bool = False
    # `edgeiad update` adds good images to a fitted run: update(config, model, running, batches, device,
    # progress) -> (model, info); "" = the model learns weights and is retrained on old and new images instead.
    update_function: str = ""
    # The config field `--noise-robust` sets: the share of training data that may be defective ("" = none).
    noise_robust: str = ""

    def _attr(self, submodule: str, name: str):
        return getattr(importlib.import_module(f"edgeiad.models.{self.module}.{submodule}"), name)

    def config_cls(self):
        return self._attr("torch_model", self.config_class)

    def model_cls(self):
        return self._attr("torch_model", self.model_class)

    def fit(self) -> Callable:
        return self._attr("fit", self.fit_function)

    def update(self) -> Callable | None:
        return self._attr("fit", self.update_function) if self.update_function else None

    def running_shapes(self, model) -> dict:
        """Names and shapes of the running sums a fitted model of this kind keeps for `update`."""
        return self._attr("fit", "running_shapes")(model)

    def make_config(self, **overrides):
        """Default config with the given non-None overrides applied."""
        cls = self.config_cls()
        config = cls(**{k: v for k, v in overrides.items() if v is not None})
        config.validate()
        return config


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model; duplicate names are a programming error."""
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec


def markdown_table() -> str:
    """The README's models table, generated from the registry (a test keeps the README in sync)."""
    lines = ["| model | idea | paper | sidecar stats |", "|---|---|---|---|"]
    for spec in MODELS.values():
        sidecar = "yes" if "sidecar" in spec.stats_modes else "no (learned weights)"
        lines.append(f"| `{spec.name}` | {spec.summary} | {spec.paper} | {sidecar} |")
    return "\n".join(lines)


def get_model(name: str) -> ModelSpec:
    """Look a model up by name, or fail naming the registered ones."""
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}") from None


register_model(
    ModelSpec(
        name="patchcore",
        summary="kNN distance of multi-scale patch features to a greedy-coreset memory bank",
        paper="Roth et al., Towards Total Recall in Industrial Anomaly Detection, CVPR 2022",
        module="patchcore",
        config_class="PatchCoreConfig",
        model_class="PatchCoreModel",
        fit_function="fit_patchcore",
        update_function="update_patchcore",
        noise_robust="denoise",
        min_train_images=1,
        fit_label="selecting memory bank",
    )
)
register_model(
    ModelSpec(
        name="padim",
        summary="Mahalanobis distance to a Gaussian fitted per feature-map position",
        paper="Defard et al., PaDiM: a Patch Distribution Modeling Framework, ICPR 2021",
        module="padim",
        config_class="PadimConfig",
        model_class="PadimModel",
        fit_function="fit_padim",
        update_function="update_padim",
        noise_robust="trim",
        min_train_images=1,
        fit_label="estimating Gaussians",
    )
)
register_model(
    ModelSpec(
        name="ensemble",
        summary="PatchCore and PaDiM on one backbone pass; each patch score scaled by held-out good images, averaged",
        paper="Roth et al. (PatchCore) and Defard et al. (PaDiM), combined as in score-level ensembles of detectors",
        module="ensemble",
        config_class="EnsembleConfig",
        model_class="EnsembleModel",
        fit_function="fit_ensemble",
        min_train_images=2,
        fit_label="selecting memory bank",
    )
)
register_model(
    ModelSpec(
        name="npad",
        summary="min Mahalanobis to similarity-weighted neighbour Gaussians x aggregated-feature Gaussian; "
        "k-means centroids for the image score; image shifting in the graph",
        paper="Jang et al., N-Pad: Neighboring Pixel-based Industrial Anomaly Detection, CVPR workshops 2023",
        module="npad",
        config_class="NpadConfig",
        model_class="NpadModel",
        fit_function="fit_npad",
        update_function="update_npad",
        min_train_images=1,
        fit_label="estimating distributions",
    )
)
register_model(
    ModelSpec(
        name="reconstruction",
        summary="feature-pyramid autoencoder trained with a perceptual (feature-level) loss; map = its error",
        paper="reconstruction-based anomaly maps with a pyramidal encoder and a perceptual loss (no single paper)",
        module="reconstruction",
        config_class="ReconstructionConfig",
        model_class="ReconstructionModel",
        fit_function="fit_reconstruction",
        min_train_images=4,
        stats_modes=("baked",),
        fit_label="training autoencoder (epochs)",
    )
)
register_model(
    ModelSpec(
        name="attribution",
        summary="good-vs-synthetic-defect classifier (cut-paste, noise blobs, scratches); map = its evidence "
        "(class-activation) logits",
        paper="attribution maps (Grad-CAM) of a classifier; synthetic defects as in Li et al., CutPaste, CVPR 2021",
        module="attribution",
        config_class="AttributionConfig",
        model_class="AttributionModel",
        fit_function="fit_attribution",
        min_train_images=4,
        stats_modes=("baked",),
        fit_label="training classifier (epochs)",
    )
)
register_model(
    ModelSpec(
        name="fastflow",
        summary="normalizing flow (affine couplings, 3x3/1x1 subnets) on multi-scale features; map = -log p",
        paper="Yu et al., FastFlow: Unsupervised Anomaly Detection and Localization via 2D Normalizing Flows, 2021",
        module="fastflow",
        config_class="FastFlowConfig",
        model_class="FastFlowModel",
        fit_function="fit_fastflow",
        min_train_images=4,
        stats_modes=("baked",),
        fit_label="training flow (epochs)",
    )
)
register_model(
    ModelSpec(
        name="efficientad",
        summary="EfficientAD-style student-teacher: pretrained-backbone teacher, student + autoencoder on "
        "early features, hard-feature loss, quantile-normalised local and global maps",
        paper="Batzner et al., EfficientAD: Accurate Visual Anomaly Detection at Millisecond-Level Latencies, "
        "WACV 2024",
        module="studentteacher",
        config_class="StudentTeacherConfig",
        model_class="StudentTeacherModel",
        fit_function="fit_student_teacher",
        min_train_images=4,
        stats_modes=("baked",),
        fit_label="training student and autoencoder (epochs)",
    )
)
register_model(
    ModelSpec(
        name="segad",
        summary="per-segment statistics (99.5 % quantile, skew, kurtosis, mean) of base detectors' maps scored by "
        "a boosted random forest trained on good and a few labelled (or synthetic) defective images",
        paper="Baitieva et al., Supervised Anomaly Detection for Complex Industrial Images (SegAD), CVPR 2024",
        module="segad",
        config_class="SegadConfig",
        model_class="SegadModel",
        fit_function="fit_segad",
        min_train_images=4,
        stats_modes=("baked",),
        fit_label="fitting base detectors and trees",
        supervised=True,
    )
)
