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
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from .decode import MAX_SIDE
from .errors import ArtifactError, DataError, DataNotFoundError
from .files import atomic_write, unreadable
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
INTEGRITY = "integrity"  # the digest (and optional signature) over everything else in the manifest
MAX_MANIFEST_BYTES = 16 << 20  # real manifests are a few KB: a larger one is corrupt, not worth parsing
MAX_BATCH = 4096
MAX_DEPTH = 32  # real manifests nest 4 deep; copying or hashing a 100k-deep one would exhaust the stack
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
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float range (10**400) is no threshold either
        return False


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
    return (value[0] == DYNAMIC_BATCH or (_is_int(value[0]) and 0 < value[0] <= MAX_BATCH)) and all(
        _is_int(v) and 0 < v <= MAX_SIDE for v in value[1:]
    )


def validate_manifest(manifest: dict) -> None:
    """Raise ArtifactError naming the first missing or malformed key of a schema-1 manifest."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{MANIFEST_NAME} is a {type(manifest).__name__}, not an object; {REEXPORT}")
    if _depth(manifest) > MAX_DEPTH:
        raise ArtifactError(f"{MANIFEST_NAME} nests deeper than {MAX_DEPTH} levels: it is corrupt; {REEXPORT}")
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
    if manifest.get(INTEGRITY) is not None and not _is_integrity(manifest[INTEGRITY]):
        raise _fail(INTEGRITY, "is malformed: expected an object with a 64-char hex 'digest'")


def _depth(value: object) -> int:
    """Nesting depth of JSON data, without recursion (a hostile file may nest beyond the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if deepest > MAX_DEPTH:
                break
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _is_integrity(value: object) -> bool:
    if not isinstance(value, dict) or not _is_hex(value.get("digest")):
        return False
    signature = value.get("signature")
    return signature is None or (isinstance(signature, dict) and all(map(_is_str, signature.values())))


def _is_hex(text: object) -> bool:
    return _is_str(text) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _is_str_map(value: object) -> bool:
    return isinstance(value, dict) and all(_is_str(k) and _is_str(v) for k, v in value.items())


def _is_hex_map(value: object) -> bool:
    return isinstance(value, dict) and all(_is_file_name(k) and _is_hex(v) for k, v in value.items())


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
    except (DataError, TypeError, ValueError, OverflowError) as exc:
        raise _fail("preprocessing", f"is invalid ({exc})") from None
    if len(spec.mean) != 3 or len(spec.std) != 3:
        raise _fail("preprocessing", "needs 3 mean and 3 std values")
    if not all(_is_int(side) and 0 < side <= MAX_SIDE for side in (spec.height, spec.width)):
        raise _fail("preprocessing", f"needs integer height and width in 1..{MAX_SIDE}")
    if spec.channel_order not in ("RGB", "BGR") or spec.layout != "NCHW" or spec.dtype != "float32":
        raise _fail("preprocessing", "needs channel_order RGB|BGR, layout NCHW and dtype float32")
    # float32 is what preprocess() computes in: a mean or std beyond its range turns every pixel into inf or 0.
    if not all(abs(m) < 1e30 for m in spec.mean) or not all(1e-30 < abs(s) < 1e30 for s in spec.std):
        raise _fail("preprocessing", "needs mean and non-zero std within float32 range (|value| < 1e30)")
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


def load_manifest(folder: str | Path, verify: bool = True, trusted_keys: Sequence | None = None) -> dict:
    """Read and validate a manifest; `verify`: digest, file hashes, no strays; `trusted_keys`: a valid signature."""
    folder = Path(folder)
    if trusted_keys and not verify:
        raise ArtifactError("trusted keys need verify=True: a signature vouches only for files whose hash is checked")
    manifest = _read_manifest(folder)
    validate_manifest(manifest)
    check_files(folder, manifest, verify=verify)
    if verify:
        check_integrity(folder, manifest, trusted_keys)
    return manifest


def _read_manifest(folder: Path) -> dict:
    if not folder.is_dir():
        raise DataNotFoundError(
            f"artifact folder not found: {folder} (check the path, or export one with `edgeiad export`)"
        )
    if not os.access(folder, os.R_OK | os.X_OK):
        raise unreadable(folder, folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{folder} has no {MANIFEST_NAME}: it is not an edgeiad artifact; {REEXPORT}")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
    except PermissionError:
        raise unreadable(path, folder) from None
    except OSError as exc:
        raise ArtifactError(f"cannot read {path} ({exc.strerror or exc}); check the disk or {REEXPORT}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes: it is corrupt; {REEXPORT}")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or a 5000-digit number
        problem = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ArtifactError(f"{path} is not valid JSON ({problem}); {REEXPORT}") from None


def canonical_bytes(manifest: dict) -> bytes:
    """The manifest without its integrity block, as sorted compact JSON: what the digest and signature cover."""
    body = {key: value for key, value in manifest.items() if key != INTEGRITY}
    try:
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    except ValueError:  # NaN or infinity in an unchecked section: never written by edgeiad
        raise ArtifactError(f"{MANIFEST_NAME} holds NaN or infinite numbers; {REEXPORT}") from None


def check_integrity(
    folder: Path, manifest: dict, trusted_keys: Sequence | None = None, where: str | None = None
) -> None:
    """Refuse a manifest whose content changed since it was written, or (with keys) one not signed by them.

    where: how to name the manifest in messages when it did not come from `folder` (a server's copy).
    """
    integrity = manifest.get(INTEGRITY)
    path = where or folder / MANIFEST_NAME
    if integrity is None:
        raise ArtifactError(
            f"{path} has no integrity digest (exported by an older edgeiad?): {REEXPORT}, or re-hash a trusted "
            "folder with edgeiad_runtime.manifest.write_manifest"
        )
    body = canonical_bytes(manifest)
    if hashlib.sha256(body).hexdigest() != integrity["digest"]:
        raise ArtifactError(
            f"{path} does not match its integrity digest (edited, corrupted or tampered with); {REEXPORT}"
        )
    if trusted_keys:
        from .signing import verify_signature

        verify_signature(body, integrity.get("signature"), trusted_keys, path)


def check_files(folder: Path, manifest: dict, verify: bool = True) -> None:
    """Refuse missing, unreadable or unhashed listed files; with `verify`, also bad hashes and unlisted model files."""
    hashes = manifest["sha256"]
    for name in listed_files(manifest):
        if not (folder / name).is_file():
            raise ArtifactError(f"{folder / name} is listed in {MANIFEST_NAME} but missing; {REEXPORT}")
        if not os.access(folder / name, os.R_OK):
            raise unreadable(folder / name, folder)
        if name not in hashes:
            raise ArtifactError(f"{name} is named in {MANIFEST_NAME} 'files' but has no sha256 entry; {REEXPORT}")
    if not verify:
        return
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in MODEL_SUFFIXES and path.name not in hashes:
            raise ArtifactError(f"{path} is a model file not listed in {MANIFEST_NAME}: remove it or {REEXPORT}")
    for name, expected in sorted(hashes.items()):
        if not os.access(folder / name, os.R_OK):
            raise unreadable(folder / name, folder)
        if file_sha256(folder / name) != expected:
            raise ArtifactError(
                f"{folder / name} does not match its sha256 in {MANIFEST_NAME} (tampered, truncated or "
                f"replaced); {REEXPORT}"
            )


def _artifact_files(folder: Path) -> list[Path]:
    # Hidden files are skipped: they include this writer's own temporary manifest.
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith("."))


def write_manifest(folder: str | Path, manifest: dict, signing_key: str | Path | None = None) -> dict:
    """Hash every file into manifest['sha256'], validate, add the digest (+ a signature), write it atomically.

    signing_key: an Ed25519 PEM private key file; without it a signature the manifest carried is dropped,
    as it cannot vouch for the new content.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataNotFoundError(f"artifact folder not found: {folder} (create it and write the model first)")
    data = copy.deepcopy(manifest)
    data.pop(INTEGRITY, None)
    data.setdefault("schema_version", SCHEMA_VERSION)
    data.setdefault("format", FORMAT)
    data.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    data["sha256"] = {path.name: file_sha256(path) for path in _artifact_files(folder)}
    validate_manifest(data)
    check_files(folder, data, verify=False)
    body = canonical_bytes(data)
    data[INTEGRITY] = {"digest": hashlib.sha256(body).hexdigest()}
    if signing_key is not None:
        from .signing import sign

        data[INTEGRITY]["signature"] = sign(body, signing_key)
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    atomic_write(folder / MANIFEST_NAME, [text.encode("utf-8")])
    return data
