"""The artifact manifest (manifest.json, schema version 1): constants, validation, hashing, reading and writing.

The toolkit's exporter writes artifacts with `write_manifest`; the runtime reads them with `load_manifest`.
Both sides share this module so the schema cannot drift between writer and reader.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from .errors import ArtifactError, DataError, DataNotFoundError
from .preprocess import Preprocessing

SCHEMA_VERSION = 1
FORMAT = "edgeiad-artifact"
MANIFEST_NAME = "manifest.json"
TARGETS = ("onnx", "openvino", "trt")
PRECISIONS = ("fp32", "fp16", "int8")
PRECISION_HINTS = ("f32", "f16", "bf16")
BATCH_MODES = ("static", "dynamic")
STATS_MODES = ("baked", "sidecar")
STATS_DTYPES = ("fp32", "fp16")
NORMALIZATION_METHODS = ("minmax_threshold", "minmax", "none")
DYNAMIC_BATCH = "batch"
INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "pred_score")
# Files with these suffixes change what the model computes: one present but not hashed is refused.
MODEL_SUFFIXES = (".onnx", ".data", ".xml", ".bin", ".engine", ".plan", ".trt", ".safetensors")
REEXPORT = "re-export the artifact with `edgeiad export`"
_HASH_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks so multi-GB engines never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fail(key: str, problem: str) -> ArtifactError:
    return ArtifactError(f"{MANIFEST_NAME}: key '{key}' {problem}; {REEXPORT}")


def _get(data: dict, key: str, path: str, check: Callable[[object], bool], expected: str) -> object:
    if key not in data:
        raise _fail(path, "is missing")
    value = data[key]
    if not check(value):
        raise _fail(path, f"is {value!r}: expected {expected}")
    return value


def _section(data: dict, key: str, path: str | None = None) -> dict:
    return _get(data, key, path or key, lambda v: isinstance(v, dict), "an object")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _optional(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or check(value)


def _one_of(choices: tuple) -> Callable[[object], bool]:
    return lambda value: value in choices


def _is_file_name(value: object) -> bool:
    # Flat, relative names only: a manifest must never point outside its own folder.
    return isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\\" not in value


def _is_shape(value: object, rank: int) -> bool:
    if not isinstance(value, list) or len(value) != rank:
        return False
    return (value[0] == DYNAMIC_BATCH or (_is_int(value[0]) and value[0] > 0)) and all(
        _is_int(v) and v > 0 for v in value[1:]
    )


def validate_manifest(manifest: dict) -> None:
    """Raise ArtifactError naming the first missing or malformed key of a schema-1 manifest."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{MANIFEST_NAME} is a {type(manifest).__name__}, not an object; {REEXPORT}")
    version = _get(manifest, "schema_version", "schema_version", _is_int, "an integer")
    if version != SCHEMA_VERSION:
        raise ArtifactError(
            f"{MANIFEST_NAME}: unsupported schema_version {version}: this edgeiad-runtime reads version "
            f"{SCHEMA_VERSION}; upgrade edgeiad-runtime or re-export with a matching toolkit"
        )
    _get(manifest, "format", "format", lambda v: v == FORMAT, repr(FORMAT))
    model = _section(manifest, "model")
    _get(model, "name", "model.name", lambda v: _is_str(v) and v != "", "a non-empty string")
    _section(model, "config", "model.config")
    target = _get(manifest, "target", "target", _one_of(TARGETS), f"one of {list(TARGETS)}")
    _get(manifest, "precision", "precision", _one_of(PRECISIONS), f"one of {list(PRECISIONS)}")
    hints = _optional(_one_of(PRECISION_HINTS))
    _get(manifest, "precision_hint", "precision_hint", hints, f"null or one of {list(PRECISION_HINTS)}")
    _get(manifest, "created", "created", _is_str, "an ISO timestamp string")
    for key in ("parity", "data", "engine"):
        _get(manifest, key, key, _optional(lambda v: isinstance(v, dict)), "null or an object")
    _get(manifest, "versions", "versions", _is_str_map, "an object of strings")
    _validate_files(manifest, target)
    _validate_io(manifest)
    _validate_stats(manifest)
    _validate_scores(manifest)


def _is_str_map(value: object) -> bool:
    return isinstance(value, dict) and all(_is_str(k) and _is_str(v) for k, v in value.items())


def _is_hex_map(value: object) -> bool:
    def is_hex(text: object) -> bool:
        return _is_str(text) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)

    return isinstance(value, dict) and all(_is_file_name(k) and is_hex(v) for k, v in value.items())


def _validate_files(manifest: dict, target: str) -> None:
    files = _section(manifest, "files")
    model_file = _get(files, "model", "files.model", _is_file_name, "a file name in the artifact folder")
    onnx_file = _get(files, "onnx", "files.onnx", _optional(_is_file_name), "null or a file name")
    _get(files, "stats", "files.stats", _optional(_is_file_name), "null or a file name")
    deferred = _get(manifest, "deferred", "deferred", lambda v: isinstance(v, bool), "true or false")
    _get(manifest, "sha256", "sha256", _is_hex_map, "an object of file name -> 64-char lowercase hex")
    suffix = {"onnx": ".onnx", "openvino": ".xml", "trt": ".onnx" if deferred else ".engine"}[target]
    if not model_file.endswith(suffix):
        raise _fail("files.model", f"is {model_file!r}: a {target} artifact's model must end with {suffix}")
    if deferred and target != "trt":
        raise _fail("deferred", f"is true for target {target!r}: only trt artifacts can defer the engine build")
    if deferred and onnx_file != model_file:
        raise _fail("files.onnx", f"is {onnx_file!r}: a deferred trt artifact must list its ONNX as files.model too")


def _validate_io(manifest: dict) -> None:
    image = _section(_section(manifest, "inputs"), INPUT_NAME, "inputs.image")
    shape = _get(image, "shape", "inputs.image.shape", lambda v: _is_shape(v, 4), "[B, 3, H, W]")
    _get(image, "dtype", "inputs.image.dtype", lambda v: v == "float32", "'float32'")
    if shape[1] != 3:
        raise _fail("inputs.image.shape", f"is {shape}: the image input must have 3 channels")
    outputs = _section(manifest, "outputs")
    map_spec = _section(outputs, "anomaly_map", "outputs.anomaly_map")
    _get(
        map_spec,
        "shape",
        "outputs.anomaly_map.shape",
        lambda v: v == [shape[0], 1, *shape[2:]],
        f"{shape[:1]}+[1]+{shape[2:]}",
    )
    score_spec = _section(outputs, "pred_score", "outputs.pred_score")
    _get(score_spec, "shape", "outputs.pred_score.shape", lambda v: v == shape[:1], repr(shape[:1]))
    batch = _section(manifest, "batch")
    mode = _get(batch, "mode", "batch.mode", _one_of(BATCH_MODES), f"one of {list(BATCH_MODES)}")
    positive = _optional(lambda v: _is_int(v) and v > 0)
    size = _get(batch, "size", "batch.size", positive, "null or a positive integer")
    _get(batch, "max", "batch.max", positive, "null or a positive integer")
    if mode == "static" and (size != shape[0]):
        raise _fail("batch.size", f"is {size!r}: a static batch must equal inputs.image.shape[0] ({shape[0]!r})")
    if mode == "dynamic" and shape[0] != DYNAMIC_BATCH:
        raise _fail("inputs.image.shape", f"is {shape}: a dynamic batch needs {DYNAMIC_BATCH!r} as first dimension")
    spec = _preprocessing(manifest)
    if (spec.height, spec.width) != tuple(shape[2:]):
        raise _fail(
            "preprocessing", f"resizes to {spec.height}x{spec.width} but the model input is {shape[2]}x{shape[3]}"
        )


def _preprocessing(manifest: dict) -> Preprocessing:
    data = _section(manifest, "preprocessing")
    try:
        spec = Preprocessing.from_dict(data)
    except (DataError, TypeError, ValueError) as exc:
        raise _fail("preprocessing", f"is invalid ({exc})") from None
    if len(spec.mean) != 3 or len(spec.std) != 3:
        raise _fail("preprocessing", "needs 3 mean and 3 std values")
    if not (_is_int(spec.height) and _is_int(spec.width) and spec.height > 0 and spec.width > 0):
        raise _fail("preprocessing", "needs positive integer height and width")
    if spec.channel_order not in ("RGB", "BGR") or spec.layout != "NCHW" or spec.dtype != "float32":
        raise _fail("preprocessing", "needs channel_order RGB|BGR, layout NCHW and dtype float32")
    if any(not math.isfinite(s) or s == 0 for s in spec.std) or not all(math.isfinite(m) for m in spec.mean):
        raise _fail("preprocessing", "needs finite mean and finite non-zero std")
    return spec


def preprocessing_of(manifest: dict) -> Preprocessing:
    """Return the validated Preprocessing an artifact's model expects."""
    return _preprocessing(manifest)


def _validate_stats(manifest: dict) -> None:
    stats = _section(manifest, "stats")
    mode = _get(stats, "mode", "stats.mode", _one_of(STATS_MODES), f"one of {list(STATS_MODES)}")
    stats_file = _get(stats, "file", "stats.file", _optional(_is_file_name), "null or a file name")
    names = _get(stats, "tensors", "stats.tensors", lambda v: isinstance(v, list) and all(map(_is_str, v)), "a list")
    _get(stats, "dtype", "stats.dtype", _one_of(STATS_DTYPES), f"one of {list(STATS_DTYPES)}")
    if mode == "sidecar":
        if stats_file is None or stats_file != manifest["files"]["stats"]:
            raise _fail("stats.file", f"is {stats_file!r}: sidecar stats need the same file as files.stats")
        if not names or INPUT_NAME in names or len(set(names)) != len(names):
            raise _fail("stats.tensors", f"is {names!r}: list each sidecar tensor once (not 'image')")


def _validate_scores(manifest: dict) -> None:
    thresholds = _section(manifest, "thresholds")
    for key in ("image", "pixel"):
        _get(thresholds, key, f"thresholds.{key}", _optional(_is_number), "null or a finite number")
    _get(thresholds, "method", "thresholds.method", _optional(_is_str), "null or a string")
    norm = _section(manifest, "normalization")
    method = _get(
        norm, "method", "normalization.method", _one_of(NORMALIZATION_METHODS), str(list(NORMALIZATION_METHODS))
    )
    check = _optional(_is_number) if method == "none" else _is_number
    for level in ("image", "pixel"):
        low = _get(norm, f"{level}_min", f"normalization.{level}_min", check, "a finite number")
        high = _get(norm, f"{level}_max", f"normalization.{level}_max", check, "a finite number")
        if low is not None and high is not None and high < low:
            raise _fail(f"normalization.{level}_max", f"is {high} < {level}_min {low}")


def listed_files(manifest: dict) -> list[str]:
    """Every file the manifest names (hashed files plus the model, onnx and stats files)."""
    named = [name for name in manifest["files"].values() if name is not None]
    return sorted(set(manifest["sha256"]) | set(named))


def load_manifest(folder: str | Path, verify: bool = True) -> dict:
    """Read and validate an artifact's manifest; with `verify`, check every file's sha256 and refuse strays."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataNotFoundError(
            f"artifact folder not found: {folder} (check the path, or export one with `edgeiad export`)"
        )
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{folder} has no {MANIFEST_NAME}: it is not an edgeiad artifact; {REEXPORT}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); {REEXPORT}") from None
    validate_manifest(manifest)
    check_files(folder, manifest, verify=verify)
    return manifest


def check_files(folder: Path, manifest: dict, verify: bool = True) -> None:
    """Refuse missing or unhashed listed files; with `verify`, also bad hashes and unlisted model files."""
    hashes = manifest["sha256"]
    for name in listed_files(manifest):
        if not (folder / name).is_file():
            raise ArtifactError(f"{folder / name} is listed in {MANIFEST_NAME} but missing; {REEXPORT}")
        if name not in hashes:
            raise ArtifactError(f"{name} is named in {MANIFEST_NAME} 'files' but has no sha256 entry; {REEXPORT}")
    if not verify:
        return
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in MODEL_SUFFIXES and path.name not in hashes:
            raise ArtifactError(f"{path} is a model file not listed in {MANIFEST_NAME}: remove it or {REEXPORT}")
    for name, expected in sorted(hashes.items()):
        if file_sha256(folder / name) != expected:
            raise ArtifactError(
                f"{folder / name} does not match its sha256 in {MANIFEST_NAME} (tampered, truncated or "
                f"replaced); {REEXPORT}"
            )


def _artifact_files(folder: Path) -> list[Path]:
    # Hidden files are skipped: they include this writer's own temporary manifest.
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith("."))


def write_manifest(folder: str | Path, manifest: dict) -> dict:
    """Hash every file of `folder` into manifest['sha256'], validate, and write manifest.json atomically."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataNotFoundError(f"artifact folder not found: {folder} (create it and write the model first)")
    data = copy.deepcopy(manifest)
    data.setdefault("schema_version", SCHEMA_VERSION)
    data.setdefault("format", FORMAT)
    data.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    data["sha256"] = {path.name: file_sha256(path) for path in _artifact_files(folder)}
    validate_manifest(data)
    check_files(folder, data, verify=False)
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=folder, prefix=".manifest.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, folder / MANIFEST_NAME)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return data
