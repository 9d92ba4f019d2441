"""Image files: size checked from the header before decoding, truncated and damaged files refused by name."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from edgeiad_runtime import decode
from edgeiad_runtime.decode import MAX_PIXELS_ENV, decode_image_file
from edgeiad_runtime.errors import ConfigError, DataError
from edgeiad_runtime.preprocess import read_image

PART = cv2.GaussianBlur(np.random.default_rng(3).integers(0, 256, (60, 80, 3), dtype=np.uint8), (5, 5), 0)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def claimed_png(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height RGB pixels (its data is a few zero rows)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + data


def encoded(suffix: str) -> bytes:
    ok, buffer = cv2.imencode(suffix, PART)
    assert ok
    return buffer.tobytes()


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_every_format_decodes_with_its_header_size(tmp_path, suffix):
    path = tmp_path / f"part{suffix}"
    path.write_bytes(encoded(suffix))
    assert decode_image_file(path).shape == PART.shape
    assert read_image(path).shape == PART.shape


def test_size_is_refused_from_the_header_before_any_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(claimed_png(16384, 16384))  # 782 KB files like this decoded to 805 MB before the check

    def no_decoding(*args):
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(decode, "_decode_pillow", no_decoding)
    with pytest.raises(DataError, match=r"bomb\.png is 16384x16384 pixels \(PNG header\).*EDGEIAD_MAX_PIXELS"):
        read_image(path)
    path.write_bytes(claimed_png(32768, 32768))
    with pytest.raises(DataError, match="32768x32768"):
        read_image(path)


def test_the_pixel_cap_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "part.png"
    path.write_bytes(encoded(".png"))
    with pytest.raises(DataError, match="60x80 pixels"):
        read_image(path, max_pixels=1000)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(DataError, match="1000 pixels"):
        read_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ConfigError, match="EDGEIAD_MAX_PIXELS='lots'"):
        read_image(path)


def _damaged(data: bytes, kind: str) -> bytes:
    if kind == "half":
        return data[: len(data) // 2]
    if kind == "no-end":
        return data[:-2]
    middle = bytearray(data)
    for offset in range(len(data) // 2, len(data) // 2 + 24):  # a burst of flipped bytes in the scan
        middle[offset] ^= 0x5A
    return bytes(middle)


@pytest.mark.parametrize("case", ["half.jpg", "no-end.jpg", "burst.jpg", "half.png"])
def test_truncated_and_damaged_files_are_refused_by_name(tmp_path, detector, case):
    kind, suffix = case.split(".")
    path = tmp_path / f"damaged-{case}"
    path.write_bytes(_damaged(encoded(f".{suffix}"), kind))
    with pytest.raises(DataError, match=rf"cannot read image .*damaged-{case}: .*replace or remove it") as info:
        detector.predict(path)
    assert "\n" not in str(info.value)


def test_unknown_formats_and_broken_headers(tmp_path):
    cases = {
        "text.png": b"this is not a PNG",
        "short.jpg": b"\xff\xd8\xff",
        "zero.png": claimed_png(0, 5),
        "noframe.jpg": b"\xff\xd8\xff\xda\x00\x02\xff\xd9",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=rf"cannot read image .*{name}") as info:
            read_image(Path(tmp_path / name))
        assert "\n" not in str(info.value)
