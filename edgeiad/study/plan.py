"""What a study runs: models × datasets × variants of one factor, with settings checked against each config."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

from ..errors import ConfigError
from ..models import get_model

ALL_MODELS = "*"
SCORINGS = ("exported", "eager")


@dataclass(frozen=True)
class Variant:
    """One value of the studied factor ("default" when no factor varies)."""

    name: str
    overrides: dict = field(default_factory=dict)


@dataclass
class StudyPlan:
    """Models, datasets, fixed settings (per model or for all) and the variants of the one factor studied."""

    models: list[str]
    datasets: list[str]
    settings: dict[str, dict] = field(default_factory=dict)  # model name or "*" → config overrides
    variants: list[Variant] = field(default_factory=lambda: [Variant("default")])
    scoring: str = "exported"
    threads: int = 1
    latency_images: int = 20

    def validate(self) -> None:
        """Fail before any training if a model, setting or scoring mode is unknown."""
        if not self.models or not self.datasets:
            raise ConfigError("a study needs at least one model (--models) and one dataset (--data)")
        if self.scoring not in SCORINGS:
            raise ConfigError(f"--scoring {self.scoring!r} is invalid: use {' or '.join(SCORINGS)}")
        if self.threads < 1 or self.latency_images < 0:
            raise ConfigError("--threads must be ≥ 1 and --latency-images ≥ 0")
        for name in self.models:
            get_model(name)
        for variant in self.variants:
            for model in self.models:
                self.overrides(model, variant)  # raises on a bad value
            keys = set(variant.overrides) | set(self.settings.get(ALL_MODELS, {}))
            unused = [k for k in keys if not any(k in _field_names(m) for m in self.models)]
            if unused:
                raise ConfigError(f"setting {unused[0]!r} applies to none of {', '.join(self.models)}")

    def overrides(self, model: str, variant: Variant) -> dict:
        """Config overrides for one model: shared settings it has, its own settings, then the variant."""
        names = _field_names(model)
        chosen = {k: v for k, v in self.settings.get(ALL_MODELS, {}).items() if k in names}
        own = self.settings.get(model, {})
        unknown = sorted(set(own) - names)
        if unknown:
            raise ConfigError(f"{model} has no setting {unknown[0]!r}: see its config fields {sorted(names)}")
        chosen.update(own)
        chosen.update({k: v for k, v in variant.overrides.items() if k in names})
        get_model(model).make_config(**chosen)  # validates the values now, not an hour into the study
        return chosen


def _field_names(model: str) -> set[str]:
    return {f.name for f in fields(get_model(model).config_cls())} - {"model", "extra"}


def model_settings(model: str, pairs: list[str]) -> dict:
    """`key=value` pairs (`edgeiad train --set`) into config overrides for one model, each key checked against
    its config fields; the values themselves are checked when the config is built."""
    names = _field_names(model)
    chosen: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {pair!r} is invalid: use key=value, e.g. neighbourhood=3 or layers=[4,10,14]")
        if key not in names:
            raise ConfigError(f"{model} has no setting {key!r}: use one of {', '.join(sorted(names))}")
        if key in chosen:
            raise ConfigError(f"--set {key} is given twice: keep one")
        chosen[key] = parse_value(key, text.strip())
    return chosen


def parse_value(key: str, text: str):
    """A setting's value: JSON when it parses (0.1, true, [4, 10]), `N` or `HxW` for image_size, else the text."""
    if key == "image_size":
        height, _, width = text.lower().partition("x")
        if height.isdigit() and (not width or width.isdigit()):
            return (int(height), int(width or height))
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return tuple(value) if isinstance(value, list) else value


def parse_settings(pairs: list[str]) -> dict[str, dict]:
    """`key=value` (every model that has the key) or `model.key=value` into {model or "*": {key: value}}."""
    settings: dict[str, dict] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set {pair!r} is invalid: use key=value or model.key=value, e.g. image_size=320")
        model, _, key = name.strip().rpartition(".")
        settings.setdefault(model.lower() or ALL_MODELS, {})[key] = parse_value(key, text.strip())
    return settings


def parse_vary(text: str | None) -> list[Variant]:
    """`key=v1,v2,...` into one variant per value; none means a single "default" variant."""
    if not text:
        return [Variant("default")]
    key, sep, values = text.partition("=")
    key = key.strip()
    # Values may themselves hold commas inside brackets ([2,4,10]); split only at the top level.
    items, depth, current = [], 0, ""
    for char in values:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    items = [item.strip() for item in items if item.strip()]
    if not sep or not key or not items:
        raise ConfigError(f"--vary {text!r} is invalid: use key=v1,v2, e.g. image_size=256,320,384")
    return [Variant(f"{key}={item}", {key: parse_value(key, item)}) for item in items]
