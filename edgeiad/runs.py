"""Run folders: what `edgeiad train` writes and every later step reads (safetensors + JSON, no pickle)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from edgeiad_runtime.files import WRITE_ERRNOS, atomic_write, normal_mode, write_failed

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
    elif out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: pass a folder for the run")
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty: choose a new folder or delete it")
    return out


class StagingDir:
    """Write into a hidden folder beside the target; on success swap it into place, on failure remove it.

    Staging folders are named `.NAME.staging-PID-xxxx`, so one left by a killed process (whose PID is gone)
    is removed by the next run. An existing target (export --force) is replaced atomically: renameat2's
    exchange where the kernel has it, else renamed aside to `.NAME.old-PID` first and restored if that
    process died before finishing.
    """

    def __init__(self, target: Path) -> None:
        self.target = Path(target)

    def __enter__(self) -> Path:
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            _clean_stale(self.target)
            self.path = Path(
                tempfile.mkdtemp(prefix=f".{self.target.name}.staging-{os.getpid()}-", dir=self.target.parent)
            )
            os.chmod(self.path, normal_mode(directory=True))  # mkdtemp's 0700 would survive the rename
        except OSError as exc:
            raise _output_error(self.target, exc) from None
        return self.path

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
                raise _output_error(self.target, exc) from None
            return
        try:
            _swap_into_place(self.path, self.target)
        except OSError as exc:
            shutil.rmtree(self.path, ignore_errors=True)
            raise _output_error(self.target, exc) from None


def _output_error(target: Path, exc: OSError):
    return write_failed(exc.filename or target, exc)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _owner_pid(rest: str, marker: str) -> int | None:
    """The PID in '.staging-PID-xxxx' / '.old-PID' (what follows '.NAME'), or None for other names."""
    digits = rest[len(marker) :].split("-", 1)[0] if rest.startswith(marker) else ""
    return int(digits) if digits.isdigit() else None


def _clean_stale(target: Path) -> None:
    """Remove staging folders of dead processes; restore a target a dead --force left renamed aside."""
    prefix = f".{target.name}."
    for path in sorted(target.parent.glob(f"{prefix}*")):
        for marker in (".staging-", ".old-"):
            pid = _owner_pid(path.name[len(prefix) - 1 :], marker)
            if not path.is_dir() or pid is None or _pid_alive(pid):
                continue
            if marker == ".old-" and not target.exists():
                os.replace(path, target)  # killed between the two renames of a fallback swap
            else:
                shutil.rmtree(path, ignore_errors=True)


def _swap_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    if not any(target.iterdir()):
        target.rmdir()
        os.replace(staging, target)
        return
    if not _exchange(staging, target):
        aside = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, aside)
        os.replace(staging, target)
        staging = aside
    shutil.rmtree(staging, ignore_errors=True)  # now holds the previous target


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unavailable."""
    libc_name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    renameat2 = getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None) if libc_name else None
    if renameat2 is None:
        return False
    at_cwd, rename_exchange = -100, 2
    if renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # filesystem or kernel without the flag
        return False
    raise OSError(code, os.strerror(code), str(second))


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temporary file + rename): a crash never leaves a half-written file."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_write(Path(path), [text.encode("utf-8")])


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def read_json(path: Path) -> dict:
    """Read a run folder's JSON file, or fail with one line naming it and the fix."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing: the run folder is incomplete, re-run edgeiad train") from None
    except PermissionError:
        raise ArtifactError(f"{path} is not readable by this user: fix its permissions") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({str(exc)[:200]}): re-create it with edgeiad train") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} holds a {type(data).__name__}, not an object: re-create it with edgeiad train")
    return data


def run_model_name(config: dict, run: Path) -> str:
    """The model name a run's config.json records."""
    name = config.get("model", {}).get("model") if isinstance(config.get("model"), dict) else None
    if not isinstance(name, str) or not name:
        raise ArtifactError(f"{run / 'config.json'} has no model section: the run folder is incomplete, re-train it")
    return name


def run_thresholds(run: Path) -> dict:
    """A run's thresholds.json, checked for the keys export copies into the manifest."""
    data = read_json(Path(run) / "thresholds.json")
    try:
        for level in ("image", "pixel"):
            data[level]["value"], data[level]["method"]  # noqa: B018 - presence check
        data["normalization"]["method"]  # noqa: B018
    except (KeyError, TypeError):
        raise ArtifactError(
            f"{Path(run) / 'thresholds.json'} lacks image/pixel thresholds or normalization: "
            f"re-fit them with edgeiad threshold {run}"
        ) from None
    return data


def run_data_spec(record: dict) -> str:
    """The dataset a run was fitted on (its folder, or a built-in name), as `load_dataset` takes it."""
    data = record.get("data", {})
    return data.get("root") or data.get("name")


def run_dataset(record: dict, data: str | None = None):
    """The dataset a run was fitted on (or `data`), with its labelled training defects out of the test set again,
    so export, evaluate and threshold never score an image a supervised model trained on."""
    from .data import load_dataset, without_labelled

    dataset = load_dataset(data or run_data_spec(record))
    return without_labelled(dataset, record.get("data", {}).get("train_anomalous_paths"))


def check_run(run: Path) -> Path:
    """Fail with one line unless `run` is a complete run folder."""
    run = Path(run)
    if not run.is_dir():
        raise DataNotFoundError(f"run folder not found: {run} (train one with: edgeiad train MODEL --data ...)")
    missing = [name for name in RUN_FILES if not (run / name).is_file()]
    if missing:
        raise ArtifactError(f"run folder {run} is missing {', '.join(missing)}: re-run edgeiad train")
    return run


def is_backbone_weight(name: str) -> bool:
    """State-dict keys of a packaged backbone (the model's own, or a wrapped base detector's): never saved."""
    return name.startswith("feature_extractor.") or ".feature_extractor." in name


def save_model(model, folder: Path) -> None:
    """Save everything but the packaged backbone: the statistics / learned weights the fit produced."""
    from safetensors.torch import save_file

    state = {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in model.state_dict().items()
        if not is_backbone_weight(name)
    }
    save_file(state, str(folder / "weights.safetensors"), metadata={"model": model.config.model})
    os.chmod(folder / "weights.safetensors", normal_mode())  # safetensors writes 0600: export may run as another user


RUNNING_FILE = "running.safetensors"


def save_running(model, folder: Path) -> None:
    """The running sums `edgeiad update` extends (float64), when the model keeps them (PatchCore, PaDiM, N-pad)."""
    from safetensors.torch import save_file

    running = getattr(model, "running", None)
    if running:
        tensors = {name: value.detach().cpu().contiguous() for name, value in running.items()}
        save_file(tensors, str(folder / RUNNING_FILE), metadata={"model": model.config.model})
        os.chmod(folder / RUNNING_FILE, normal_mode())


def load_running(run: Path, expected: dict[str, tuple]) -> dict:
    """A run's running sums, checked against the names and shapes its model's update needs, and finite."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(run) / RUNNING_FILE
    if not path.is_file():
        raise ArtifactError(
            f"{path} is missing: this run cannot be updated (trained by an older edgeiad, or copied without it); "
            "retrain on the old and new good images with edgeiad train"
        )
    try:
        running = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(
            f"{path} is corrupt ({exc}): retrain on the old and new images with edgeiad train"
        ) from None
    missing = sorted(set(expected) - set(running))
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}: the run folder is mismatched, retrain it")
    for name, shape in expected.items():
        found = tuple(running[name].shape)
        if found != tuple(shape):
            raise ArtifactError(
                f"{path}: {name} has shape {list(found)} but the run's weights need {list(shape)}: the run folder "
                "is mismatched, retrain it"
            )
        if not running[name].isfinite().all():
            raise ArtifactError(f"{path}: {name} holds NaN or infinite values: the file is damaged, retrain the run")
    return running


def load_model(run: Path):
    """Rebuild (config, model) from a run folder; the backbone comes from its PyPI weight package."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run = check_run(run)
    config_data = read_json(run / "config.json")
    spec = get_model(run_model_name(config_data, run))
    try:
        config = spec.config_cls().from_dict(config_data["model"])
        config.validate()
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{run / 'config.json'} is invalid ({exc}): re-run edgeiad train") from None
    model = spec.model_cls()(config)
    try:
        state = load_file(str(run / "weights.safetensors"))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{run / 'weights.safetensors'} is corrupt ({exc}): re-run edgeiad train") from None
    expected = {k for k in model.state_dict() if not is_backbone_weight(k)}
    if set(state) != expected:
        raise ArtifactError(
            f"{run / 'weights.safetensors'} holds {sorted(state)} but {spec.name} expects {sorted(expected)}: "
            "the run folder is mismatched, re-run edgeiad train"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit the config (image size, feature count edited)
        first = str(exc).strip().splitlines()[-1][:200]
        raise ArtifactError(
            f"{run / 'weights.safetensors'} does not fit {run / 'config.json'} ({first}): the run folder is "
            "mismatched, re-run edgeiad train"
        ) from None
    return config_data, model.eval()


def newest_run(model: str, root: Path = Path("runs")) -> Path:
    """The most recently written complete run of `model` under `root` (what `export MODEL` uses without --run)."""
    found = []
    for config in Path(root).glob("**/config.json") if Path(root).is_dir() else ():
        run = config.parent
        hidden = any(part.startswith(".") for part in run.relative_to(root).parts)  # staging folders
        if hidden or not (run / "weights.safetensors").is_file():
            continue
        try:
            name = run_model_name(read_json(config), run)
        except ArtifactError:
            continue
        if name == model.lower():
            found.append((config.stat().st_mtime, str(run), run))
    if not found:
        raise DataNotFoundError(
            f"no {model} run under {root}/: train one with `edgeiad train {model} --data ...` or pass --run RUN"
        )
    return max(found)[2]
