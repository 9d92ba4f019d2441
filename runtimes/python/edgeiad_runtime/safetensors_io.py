"""A dependency-free reader and writer of the safetensors format (no pickle, numpy only).

Layout: 8-byte little-endian header length N, N bytes of JSON header mapping each tensor name to
{"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data block) plus an optional
"__metadata__" of str -> str, then the raw little-endian tensor bytes.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import ArtifactError, DataError, DataNotFoundError
from .files import atomic_write, unreadable

DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in DTYPES.items()}
METADATA_KEY = "__metadata__"
MAX_HEADER = 100 * 1024 * 1024  # same cap as the reference implementation: a larger header means corruption


def _corrupt(path: Path, problem: str) -> ArtifactError:
    return ArtifactError(f"{path} is not a valid safetensors file ({problem}): re-export the artifact")


def load_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors file into native-endian numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"safetensors file not found: {path} (check the path)")
    with _open(path) as handle:
        header, data_start, data_size = _read_header(path, handle)
        entries = {}
        for name, info in header.items():
            if name == METADATA_KEY:
                _check_metadata(path, info)
            else:
                entries[name] = _parse_entry(path, name, info)
        for name, (_, _, (_, end)) in entries.items():
            if end > data_size:
                raise _corrupt(path, f"tensor {name!r} ends at byte {end} of {data_size} data bytes: truncated")
        _check_coverage(path, [span for _, _, span in entries.values()], data_size)
        # Read tensor by tensor into its own array: memory banks can be large, never hold the file twice.
        tensors = {}
        for name, (dtype, shape, (begin, end)) in entries.items():
            array = np.empty(shape, dtype=dtype)
            handle.seek(data_start + begin)
            if handle.readinto(memoryview(array.reshape(-1)).cast("B")) != end - begin:
                raise _corrupt(path, f"tensor {name!r} could not be read completely: truncated")
            tensors[name] = array.astype(dtype.newbyteorder("="), copy=False)
    return tensors


def load_metadata(path: str | Path) -> dict[str, str]:
    """Return the file's __metadata__ (empty when absent)."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"safetensors file not found: {path} (check the path)")
    with _open(path) as handle:
        header, _, _ = _read_header(path, handle)
    _check_metadata(path, header.get(METADATA_KEY))
    return dict(header.get(METADATA_KEY) or {})


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except PermissionError:
        raise unreadable(path, path.parent) from None


def _read_header(path: Path, handle: BinaryIO) -> tuple[dict, int, int]:
    """Parse the length-prefixed JSON header; return it, where the data starts and how many data bytes follow."""
    size = os.fstat(handle.fileno()).st_size
    head = handle.read(8)
    if len(head) < 8:
        raise _corrupt(path, f"only {size} bytes: truncated")
    (length,) = struct.unpack("<Q", head)
    if length > MAX_HEADER or 8 + length > size:
        raise _corrupt(path, f"header length {length} exceeds the file size {size}: truncated")
    try:
        header = json.loads(handle.read(length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or a 5000-digit number
        raise _corrupt(path, f"header is not JSON: {str(exc)[:200] or type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    return header, 8 + length, size - 8 - length


def _check_metadata(path: Path, metadata: object) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _corrupt(path, "__metadata__ must map strings to strings")


def _parse_entry(path: Path, name: str, info: object) -> tuple[np.dtype, tuple[int, ...], tuple[int, int]]:
    if not isinstance(info, dict):
        raise _corrupt(path, f"entry {name!r} is not an object")
    code = info.get("dtype")
    if code not in DTYPES:
        raise _corrupt(path, f"tensor {name!r} has unsupported dtype {code!r} (supported: {sorted(DTYPES)})")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_dim(d) for d in shape):
        raise _corrupt(path, f"tensor {name!r} has a bad shape {shape!r}")
    good_offsets = isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
    if not good_offsets or not 0 <= offsets[0] <= offsets[1] or len(shape) > 32:
        raise _corrupt(path, f"tensor {name!r} has bad data_offsets {offsets!r} or shape {shape!r}")
    dtype = DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a hostile shape cannot overflow into a small size
    if offsets[1] - offsets[0] != expected:
        raise _corrupt(
            path, f"tensor {name!r} spans {offsets[1] - offsets[0]} bytes but {code}{shape} needs {expected}"
        )
    return dtype, tuple(shape), (offsets[0], offsets[1])


def _is_dim(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**40


def _check_coverage(path: Path, spans: list[tuple[int, int]], size: int) -> None:
    # The format forbids holes and overlaps: the tensors must tile the data block exactly.
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise _corrupt(path, f"tensor data has a hole or overlap at byte {position}")
        position = end
    if position != size:
        raise _corrupt(path, f"{size - position} trailing bytes after the last tensor")


def save_file(tensors: dict[str, np.ndarray], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write tensors (and optional str->str metadata) as a safetensors file, atomically."""
    entries, chunks, offset = {}, [], 0
    for name in sorted(tensors, key=lambda n: (-_code_of(n, tensors[n])[1].itemsize, n)):
        code, dtype = _code_of(name, tensors[name])
        raw = np.ascontiguousarray(tensors[name], dtype=dtype).tobytes()
        entries[name] = {
            "dtype": code,
            "shape": list(np.shape(tensors[name])),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    if metadata is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise DataError("safetensors metadata must map strings to strings")
        entries = {METADATA_KEY: dict(metadata), **entries}
    header = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % 8)  # pad so the data block starts 8-byte aligned, like the reference writer
    atomic_write(Path(path), [struct.pack("<Q", len(header)), header, *chunks])


def _code_of(name: object, array: object) -> tuple[str, np.dtype]:
    if not isinstance(name, str) or name == METADATA_KEY:
        raise DataError(f"tensor name {name!r} is not allowed: use a string other than {METADATA_KEY!r}")
    if not isinstance(array, np.ndarray):
        raise DataError(f"tensor {name!r} is a {type(array).__name__}: pass numpy arrays")
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise DataError(f"tensor {name!r} has dtype {array.dtype}: supported are {sorted(DTYPES)}")
    return code, DTYPES[code]
