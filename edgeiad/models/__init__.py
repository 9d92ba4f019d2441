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

    def _attr(self, submodule: str, name: str):
        return getattr(importlib.import_module(f"edgeiad.models.{self.module}.{submodule}"), name)

    def config_cls(self):
        return self._attr("torch_model", self.config_class)

    def model_cls(self):
        return self._attr("torch_model", self.model_class)

    def fit(self) -> Callable:
        return self._attr("fit", self.fit_function)

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


def get_model(name: str) -> ModelSpec:
    """Look a model up by name, or fail naming the registered ones."""
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}") from None


register_model(
    ModelSpec(
        name="patchcore",
        summary="kNN distance of locally aware patch features to a greedy-coreset memory bank",
        paper="Roth et al., Towards Total Recall in Industrial Anomaly Detection, CVPR 2022",
        module="patchcore",
        config_class="PatchCoreConfig",
        model_class="PatchCoreModel",
        fit_function="fit_patchcore",
        min_train_images=1,
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
        min_train_images=2,
    )
)
