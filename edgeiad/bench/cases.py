"""What `edgeiad bench` measures: the product of models × targets × precisions × stats × batch × threads."""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import asdict, dataclass

from ..errors import ConfigError
from ..export.targets import PRECISIONS, STATS_MODES, TARGETS
from ..models import MODELS


@dataclass(frozen=True)
class ArtifactKey:
    """One exported artifact: measured at several batch sizes and thread counts."""

    model: str
    target: str
    precision: str
    stats: str

    @property
    def name(self) -> str:
        return f"{self.model}-{self.target}-{self.precision}-{self.stats}"


@dataclass(frozen=True)
class Case:
    """One measurement: an artifact at a batch size and a thread count."""

    artifact: ArtifactKey
    batch: int
    threads: int

    @property
    def key(self) -> str:
        return f"{self.artifact.name}/b{self.batch}/t{self.threads}"

    def to_dict(self) -> dict:
        return {**asdict(self.artifact), "batch": self.batch, "threads": self.threads, "key": self.key}


def parse_names(value: str, known, what: str) -> list[str]:
    """'a,b' or 'all' → a checked list (order kept, duplicates dropped)."""
    names = (
        list(known) if value.strip().lower() == "all" else [v.strip().lower() for v in value.split(",") if v.strip()]
    )
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ConfigError(
            f"--{what} {value!r}: unknown {', '.join(unknown) or 'empty list'}; use {', '.join(known)} or all"
        )
    return list(dict.fromkeys(names))


def parse_counts(value: str, what: str) -> list[int]:
    """'1,8' → [1, 8]; every item a positive integer."""
    try:
        counts = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ConfigError(f"--{what} {value!r} is invalid: use positive integers separated by commas, e.g. 1,8")
    return list(dict.fromkeys(counts))


def plan(models, targets, precisions, stats, batches, threads) -> list[Case]:
    """Every case, artifact-major so one artifact's cases run back to back."""
    keys = [
        ArtifactKey(model, target, precision, mode)
        for model in parse_names(models, MODELS, "models")
        for target in parse_names(targets, TARGETS, "targets")
        for precision in parse_names(precisions, PRECISIONS, "precisions")
        for mode in parse_names(stats, STATS_MODES, "stats")
    ]
    batch_list, thread_list = parse_counts(batches, "batch"), parse_counts(threads, "threads")
    return [Case(key, batch, thread) for key in keys for batch in batch_list for thread in thread_list]


def skip_reason(key: ArtifactKey) -> str | None:
    """Why an artifact cannot be built or run on this machine (None when it can)."""
    target = TARGETS[key.target]
    if key.precision not in target.precisions or key.stats not in target.stats_modes:
        return f"{key.target} does not support {key.precision}/{key.stats}"
    if key.stats not in MODELS[key.model].stats_modes:
        return f"{key.model} has learned weights, no statistics to keep in a {key.stats} file"
    if key.target == "trt":
        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT is not installed here (needs an NVIDIA GPU: pip install 'edgeiad[tensorrt]' there)"
        if shutil.which("nvidia-smi") is None:
            return "no NVIDIA GPU found (nvidia-smi missing): TensorRT engines run on NVIDIA devices only"
        return None
    return target.unavailable()
