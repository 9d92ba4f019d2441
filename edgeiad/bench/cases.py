"""What `edgeiad bench` measures: the product of models × targets × precisions × stats × batch × threads."""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import asdict, dataclass

from ..errors import ConfigError
from ..export import INT8_SCOPES, search_scope_refusal
from ..export.targets import PRECISIONS, STATS_MODES, TARGETS
from ..models import MODELS


@dataclass(frozen=True)
class ArtifactKey:
    """One exported artifact: measured at several batch sizes and thread counts."""

    model: str
    target: str
    precision: str
    stats: str
    int8_scope: str = "all"  # `edgeiad export --int8-scope`: what an INT8 artifact quantizes

    @property
    def name(self) -> str:
        return f"{self.model}-{self.target}-{self.variant}-{self.stats}"

    @property
    def variant(self) -> str:
        """The precision as the case names it: "int8-search" is INT8 with only the search quantized."""
        return self.precision if self.int8_scope == "all" else f"{self.precision}-{self.int8_scope}"


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


def parse_scopes(value: str) -> list[str]:
    """'all,search' → the INT8 scopes to bench. Unlike the other lists, "all" here is a scope (the backbone and the
    search, `edgeiad export`'s default), not every item."""
    scopes = list(dict.fromkeys(v.strip().lower() for v in value.split(",") if v.strip()))
    unknown = [scope for scope in scopes if scope not in INT8_SCOPES]
    if unknown or not scopes:
        raise ConfigError(
            f"--int8-scopes {value!r}: unknown {', '.join(unknown) or 'empty list'}; use {', '.join(INT8_SCOPES)}"
        )
    return scopes


def parse_counts(value: str, what: str) -> list[int]:
    """'1,8' → [1, 8]; every item a positive integer."""
    try:
        counts = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ConfigError(f"--{what} {value!r} is invalid: use positive integers separated by commas, e.g. 1,8")
    return list(dict.fromkeys(counts))


def plan(models, targets, precisions, stats, batches, threads, int8_scopes="all") -> list[Case]:
    """Every case, artifact-major so one artifact's cases run back to back. `int8_scopes` multiplies the INT8
    artifacts only: an fp32 or fp16 artifact has nothing to scope."""
    scopes, precision_list = parse_scopes(int8_scopes), parse_names(precisions, PRECISIONS, "precisions")
    if scopes != ["all"] and "int8" not in precision_list:
        raise ConfigError(f"--int8-scopes {int8_scopes}: applies to INT8 cases only; add int8 to --precisions")
    keys = [
        ArtifactKey(model, target, precision, mode, scope)
        for model in parse_names(models, MODELS, "models")
        for target in parse_names(targets, TARGETS, "targets")
        for precision in precision_list
        for scope in (scopes if precision == "int8" else ["all"])
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
    if key.int8_scope == "search":
        searches = hasattr(MODELS[key.model].model_cls(), "lift_search")
        refusal = search_scope_refusal(key.model, searches, key.target, key.stats)
        if refusal:
            return f"--int8-scope search: {refusal}"
    if key.target == "trt":
        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT is not installed here (needs an NVIDIA GPU: pip install 'edgeiad[tensorrt]' there)"
        if shutil.which("nvidia-smi") is None:
            return "no NVIDIA GPU found (nvidia-smi missing): TensorRT engines run on NVIDIA devices only"
        return None
    return target.unavailable()
