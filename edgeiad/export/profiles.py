"""Device profiles (TOML in the repository's export/ folder, shipped as edgeiad/profiles): target, precision, batch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import ConfigError, DataNotFoundError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROFILE_KEYS = {
    "name", "description", "device", "target", "precision", "stats", "batch", "threads",
    "preferred_batch", "max_queue_delay_us",  # Triton's dynamic batcher (edgeiad triton / serve)
}  # fmt: skip


def profile_dirs() -> list[Path]:
    """$EDGEIAD_PROFILE_DIR, then the profiles installed with the package (a link to export/ in the source tree)."""
    dirs = []
    if os.environ.get("EDGEIAD_PROFILE_DIR"):
        dirs.append(Path(os.environ["EDGEIAD_PROFILE_DIR"]))
    dirs.append(Path(__file__).resolve().parents[1] / "profiles")
    return dirs


def known_profiles() -> list[str]:
    """Names of the profiles found in profile_dirs()."""
    return sorted({p.stem for d in profile_dirs() if d.is_dir() for p in d.glob("*.toml")})


def load_profile(name_or_path: str) -> dict:
    """Read a profile by name (export/<name>.toml) or path; unknown keys are an error, not ignored."""
    path = Path(name_or_path)
    if not path.is_file():
        candidates = [d / f"{name_or_path}.toml" for d in profile_dirs()]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            known = ", ".join(known_profiles()) or "none"
            raise DataNotFoundError(f"profile {name_or_path!r} not found: use one of {known}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"profile {path} is not valid TOML ({exc}): fix the file") from None
    if "image_size" in data:  # early profiles carried it, but a profile never changed the model's input
        raise ConfigError(
            f"profile {path} sets image_size, which an export cannot change (the model's input size is fixed when it "
            "is trained): remove the key and train with edgeiad train --image-size N"
        )
    unknown = sorted(set(data) - PROFILE_KEYS)
    if unknown:
        raise ConfigError(f"profile {path} has unknown keys {unknown}: allowed are {sorted(PROFILE_KEYS)}")
    data.setdefault("name", path.stem)
    return data


def export_settings(profile: str | None, **given) -> dict:
    """target, precision, stats and batch: what was given, else the profile's, else the exporter's default."""
    settings = load_profile(profile) if profile else {}
    defaults = {"target": "onnx", "precision": "fp32", "stats": "baked", "batch": None}
    return {key: given.get(key) or settings.get(key, default) for key, default in defaults.items()}
