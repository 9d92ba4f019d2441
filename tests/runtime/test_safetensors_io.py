"""The dependency-free safetensors reader/writer round-trips with the reference package and refuses corrupt files."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from edgeiad_runtime.errors import ArtifactError, DataError, DataNotFoundError
from edgeiad_runtime.safetensors_io import load_file, load_metadata, save_file
from safetensors.numpy import load_file as reference_load
from safetensors.numpy import save_file as reference_save


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f16": rng.standard_normal((5,)).astype(np.float16),
        "f64": rng.standard_normal((2, 2, 2)),
        "i64": rng.integers(-(2**40), 2**40, (7,), dtype=np.int64),
        "i32": rng.integers(-100, 100, (1, 3), dtype=np.int32),
        "u8": rng.integers(0, 256, (4, 4), dtype=np.uint8),
        "bool": rng.random((3,)) > 0.5,
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def _assert_same(left: dict, right: dict) -> None:
    assert sorted(left) == sorted(right)
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        np.testing.assert_array_equal(left[name], right[name])


def test_ours_to_reference_and_back(tmp_path):
    tensors = _tensors()
    save_file(tensors, tmp_path / "ours.safetensors", metadata={"format": "np", "model": "tiny"})
    _assert_same(reference_load(str(tmp_path / "ours.safetensors")), tensors)
    assert load_metadata(tmp_path / "ours.safetensors") == {"format": "np", "model": "tiny"}
    reference_save(tensors, str(tmp_path / "ref.safetensors"), metadata={"k": "v"})
    _assert_same(load_file(tmp_path / "ref.safetensors"), tensors)
    assert load_metadata(tmp_path / "ref.safetensors") == {"k": "v"}


def test_big_endian_input_is_written_little_endian(tmp_path):
    value = np.arange(6, dtype=">f4").reshape(2, 3)
    save_file({"x": value}, tmp_path / "be.safetensors")
    loaded = load_file(tmp_path / "be.safetensors")["x"]
    assert loaded.dtype == np.float32 and loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, value)
    np.testing.assert_array_equal(reference_load(str(tmp_path / "be.safetensors"))["x"], value)


def test_loaded_arrays_are_writable_copies(tmp_path):
    save_file({"x": np.ones(3, np.float32)}, tmp_path / "a.safetensors")
    array = load_file(tmp_path / "a.safetensors")["x"]
    array[0] = 5.0  # must not fail: the runtime may cast or edit what it loads
    assert array.flags.owndata or array.base is not None


def _write_raw(path, header: dict, data: bytes, declared_length: int | None = None) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if declared_length is None else declared_length) + text + data)


@pytest.mark.parametrize(
    ("header", "data", "declared", "needle"),
    [
        ({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, None, "truncated"),
        ({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\0" * 12, None, "needs 16"),
        ({"x": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, None, "unsupported dtype"),
        ({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, None, "bad shape"),
        ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, None, "bad data_offsets"),
        ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, None, "hole"),
        ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, None, "trailing"),
        ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, 10**6, "exceeds the file size"),
        ({"__metadata__": {"a": 1}}, b"", None, "__metadata__"),
        ({"x": [1, 2]}, b"", None, "not an object"),
    ],
)
def test_corrupt_files_raise_artifact_error(tmp_path, header, data, declared, needle):
    path = tmp_path / "bad.safetensors"
    _write_raw(path, header, data, declared)
    with pytest.raises(ArtifactError, match=needle) as info:
        load_file(path)
    assert "bad.safetensors" in str(info.value)


def test_truncated_and_garbage_files(tmp_path):
    save_file(_tensors(), tmp_path / "ok.safetensors")
    blob = (tmp_path / "ok.safetensors").read_bytes()
    for cut in (0, 5, 8, 20, len(blob) - 1):
        (tmp_path / "cut.safetensors").write_bytes(blob[:cut])
        with pytest.raises(ArtifactError, match="cut.safetensors"):
            load_file(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{x")
    with pytest.raises(ArtifactError, match="not JSON"):
        load_file(tmp_path / "junk.safetensors")


def test_missing_file_and_bad_inputs(tmp_path):
    with pytest.raises(DataNotFoundError):
        load_file(tmp_path / "absent.safetensors")
    with pytest.raises(DataError, match="complex64"):
        save_file({"x": np.zeros(2, np.complex64)}, tmp_path / "x.safetensors")
    with pytest.raises(DataError, match="numpy"):
        save_file({"x": [1.0, 2.0]}, tmp_path / "x.safetensors")
    with pytest.raises(DataError, match="__metadata__"):
        save_file({"__metadata__": np.zeros(1, np.float32)}, tmp_path / "x.safetensors")
    with pytest.raises(DataError, match="metadata"):
        save_file({"x": np.zeros(1, np.float32)}, tmp_path / "x.safetensors", metadata={"a": 1})
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "x.safetensors").exists()
